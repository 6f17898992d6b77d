//! The monitor against a real libvirtd (the project's test bed) and the tiny real guest,
//! observed through the real `vmoverlay watch --json` binary.

mod common;

use std::time::Duration;

use common::guest::{read_image, Behaviour, TestVm};
use common::{is_event, testbed_exclusive, testbed_shared, WatchProcess};

const BOOT: Duration = Duration::from_secs(60);

/// A guest that stays up, defined under `name`, with a `watch` already connected.
fn held_guest_under_watch(uri: &str, name: &str) -> (TestVm, WatchProcess) {
    let vm = TestVm::define(
        uri,
        name,
        &Behaviour {
            hold_secs: 600,
            ..Default::default()
        },
    );
    let mut watch = WatchProcess::start(&[uri]);
    watch.expect("connected", Duration::from_secs(10), |v| {
        v["event"] == "connected"
    });
    (vm, watch)
}

#[test]
fn guest_power_off_is_shutdown_guest_then_stopped_shutdown() {
    let bed = testbed_shared();
    let vm = TestVm::define(
        &bed.uri,
        "vmo-poweroff",
        &Behaviour {
            marker: Some("POWEROFF-MARK".into()),
            ..Default::default()
        },
    );
    let mut watch = WatchProcess::start(&[&bed.uri]);
    watch.expect("connected", Duration::from_secs(10), |v| {
        v["event"] == "connected"
    });
    vm.start();
    watch.expect("started/booted", Duration::from_secs(10), |v| {
        is_event(v, &vm.name, "started", "booted")
    });
    // libvirt starts QEMU paused and resumes it: `resumed/unpaused` comes before anything else.
    let shutdown = watch.expect("shutdown/guest", BOOT, |v| {
        v["domain"] == vm.name.as_str()
            && !["started", "resumed"].contains(&v["event"].as_str().unwrap())
    });
    assert!(
        is_event(&shutdown, &vm.name, "shutdown", "guest"),
        "first event after start must be shutdown/guest, got {shutdown}; console:\n{}",
        vm.console()
    );
    let stopped = watch.expect("stopped", Duration::from_secs(10), |v| {
        v["domain"] == vm.name.as_str()
    });
    assert!(
        is_event(&stopped, &vm.name, "stopped", "shutdown"),
        "{stopped}"
    );
    assert_eq!(stopped["uri"], bed.uri.as_str());
    assert_eq!(stopped["observed_after_reconnect"], false);
    assert_eq!(stopped["uuid"].as_str().unwrap().len(), 36);
    // RFC 3339 with milliseconds, UTC.
    let time = stopped["time"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
    assert_eq!(time.len(), "2026-01-01T00:00:00.000Z".len(), "{time}");
    assert_eq!(vm.domstate(), "shut off (shutdown)");
    // The guest really wrote to its overlay (the disk the engine will commit).
    assert_eq!(read_image(&vm.overlay, 1 << 20, 13), b"POWEROFF-MARK");
}

#[test]
fn destroy_is_stopped_destroyed() {
    let bed = testbed_shared();
    let (vm, mut watch) = held_guest_under_watch(&bed.uri, "vmo-destroy");
    vm.start();
    watch.expect("started", Duration::from_secs(10), |v| {
        is_event(v, &vm.name, "started", "booted")
    });
    vm.destroy();
    let ev = watch.expect("stopped", Duration::from_secs(10), |v| {
        v["domain"] == vm.name.as_str() && v["event"] == "stopped"
    });
    assert!(is_event(&ev, &vm.name, "stopped", "destroyed"), "{ev}");
}

#[test]
fn a_guest_living_about_a_second_is_reported() {
    let bed = testbed_shared();
    let (vm, mut watch) = held_guest_under_watch(&bed.uri, "vmo-brief");
    vm.start();
    std::thread::sleep(Duration::from_millis(1000));
    vm.destroy();
    let started = watch.expect("started", Duration::from_secs(10), |v| {
        v["domain"] == vm.name.as_str() && v["event"] == "started"
    });
    assert!(
        is_event(&started, &vm.name, "started", "booted"),
        "{started}"
    );
    let stopped = watch.expect("stopped", Duration::from_secs(10), |v| {
        v["domain"] == vm.name.as_str() && v["event"] == "stopped"
    });
    assert!(
        is_event(&stopped, &vm.name, "stopped", "destroyed"),
        "{stopped}"
    );
    let t = |v: &serde_json::Value| humantime::parse_rfc3339(v["time"].as_str().unwrap()).unwrap();
    let lived = t(&stopped).duration_since(t(&started)).unwrap();
    assert!(
        lived < Duration::from_secs(5),
        "lived {lived:?}: not a short-lived guest"
    );
}

#[test]
fn libvirtd_restart_is_no_stop_and_missed_stops_are_reported_once() {
    let bed = testbed_exclusive();
    let hold = Behaviour {
        hold_secs: 600,
        ..Default::default()
    };
    let kept = TestVm::define(&bed.uri, "vmo-kept", &hold);
    let killed = TestVm::define(&bed.uri, "vmo-killed", &hold);
    let mut watch = WatchProcess::start(&[&bed.uri]);
    watch.expect("connected", Duration::from_secs(10), |v| {
        v["event"] == "connected"
    });
    kept.start();
    killed.start();
    for vm in [&kept, &killed] {
        watch.expect("started", Duration::from_secs(10), |v| {
            is_event(v, &vm.name, "started", "booted")
        });
    }
    let qemu = killed.qemu_pid();

    bed.kill_daemon();
    let ev = watch.expect("disconnected", Duration::from_secs(10), |v| {
        v["event"] != "x"
    });
    assert_eq!(ev["event"], "disconnected", "{ev}");
    assert_eq!(ev["uri"], bed.uri.as_str());
    // While libvirtd is down, the guest's QEMU dies.
    let st = std::process::Command::new("kill")
        .args(["-9", &qemu.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    std::thread::sleep(Duration::from_millis(500));
    // The watcher keeps retrying and says so.
    assert!(
        watch.stderr().contains("retrying"),
        "stderr: {}",
        watch.stderr()
    );
    bed.start_daemon();
    watch.expect("connected again", Duration::from_secs(30), |v| {
        v["event"] == "connected"
    });
    // The restarted libvirtd finds the dead QEMU while it reconnects, without an event, and
    // may still be at it when the watcher lists the domains: the watcher lists them again
    // 1, 3, 10 and 35 s after reconnecting. Then nothing more may come for it.
    watch.expect("the killed guest's stop", Duration::from_secs(45), |v| {
        v["domain"] == killed.name.as_str() && v["event"] == "stopped"
    });
    let later = watch.collect_for(Duration::from_secs(3));
    let all: Vec<_> = watch.seen.clone();
    let stops = |name: &str| {
        all.iter()
            .filter(|v| v["domain"] == name && v["event"] == "stopped")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(
        stops(&kept.name).is_empty(),
        "kept VM reported stopped: {all:?}"
    );
    let killed_stops = stops(&killed.name);
    assert_eq!(
        killed_stops.len(),
        1,
        "killed VM reported {killed_stops:?}; after reconnect: {later:?}"
    );
    // Its reason is the one libvirt gives for its state.
    let state = killed.domstate();
    let reason = state
        .trim_start_matches("shut off (")
        .trim_end_matches(')')
        .to_string();
    assert!(state.starts_with("shut off"), "{state}");
    let stop = &killed_stops[0];
    assert_eq!(stop["observed_after_reconnect"], true, "{stop}");
    assert_eq!(stop["detail"], reason.as_str(), "{stop}");
    eprintln!("killed VM reported as {stop}; libvirt says {state}");
    assert!(kept.domstate().starts_with("running"));
}

#[test]
fn a_hung_libvirtd_is_detected_by_keepalive_and_never_read_as_a_stop() {
    let bed = testbed_exclusive();
    let (vm, mut watch) = held_guest_under_watch(&bed.uri, "vmo-keepalive");
    vm.start();
    watch.expect("started", Duration::from_secs(10), |v| {
        is_event(v, &vm.name, "started", "booted")
    });
    // A frozen daemon keeps its socket open: only keepalive (5 s x 3) can tell.
    struct Thaw<'a>(&'a common::TestbedGuard);
    impl Drop for Thaw<'_> {
        fn drop(&mut self) {
            self.0.thaw_daemon();
        }
    }
    bed.freeze_daemon();
    let thaw = Thaw(&bed);
    let ev = watch.expect("disconnected", Duration::from_secs(60), |v| {
        v["event"] != "resumed"
    });
    assert_eq!(ev["event"], "disconnected", "{ev}");
    assert_eq!(ev["reason"], "keepalive", "{ev}");
    drop(thaw);
    watch.expect("connected again", Duration::from_secs(60), |v| {
        v["event"] == "connected"
    });
    let later = watch.collect_for(Duration::from_secs(3));
    assert!(
        !watch.seen.iter().any(|v| v["event"] == "stopped"),
        "a hung daemon was read as a stop: {:?} {later:?}",
        watch.seen
    );
    assert!(vm.domstate().starts_with("running"));
}
