//! `$VMOVERLAY_TEST_HOOK`: one JSON line per event that tests and benchmarks wait for (a prompt
//! mapped, a job finished, a status row changed), so they never scrape the screen for them.

use std::io::Write;

use crate::machine::VmKey;

/// Appends one JSON line to `$VMOVERLAY_TEST_HOOK`, if set.
pub fn emit(event: &str, vm: &VmKey, extra: serde_json::Value) {
    let Some(path) = std::env::var_os("VMOVERLAY_TEST_HOOK") else {
        return;
    };
    let line = serde_json::json!({
        "event": event,
        "uri": vm.uri,
        "vm": vm.name,
        "time": humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
        "extra": extra,
    });
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// Tests only (`VMOVERLAY_TEST_KILL_AT=POINT`): the process kills itself (SIGKILL) at POINT,
/// so a test can prove that an interruption at exactly that step loses nothing. With
/// `VMOVERLAY_TEST_STOP_AT=POINT` it stops itself (SIGSTOP) there instead, so a test can act
/// at exactly that step and then let it go on (SIGCONT).
pub fn kill_point(point: &str) {
    use nix::sys::signal::{kill, Signal};
    let this = nix::unistd::Pid::this();
    if std::env::var_os("VMOVERLAY_TEST_KILL_AT").is_some_and(|p| p == point) {
        let _ = kill(this, Signal::SIGKILL);
    }
    if std::env::var_os("VMOVERLAY_TEST_STOP_AT").is_some_and(|p| p == point) {
        let _ = kill(this, Signal::SIGSTOP);
    }
}

/// For events about no VM in particular (the tray registered, …).
pub fn emit_global(event: &str, extra: serde_json::Value) {
    emit(event, &VmKey::new("", ""), extra)
}
