//! Per-user settings survive a restart: per-VM policies ("Remember for this VM"), the
//! autostart entry written by the tray toggle, and pins.

use vmoverlay::machine::{Policy, VmKey};
use vmoverlay::settings;

#[test]
fn policies_autostart_and_pins_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    // This test binary is its own process: setting the environment affects nobody else.
    std::env::set_var("VMOVERLAY_CONFIG_DIR", dir.path().join("vmoverlay"));
    std::env::set_var("XDG_CONFIG_HOME", dir.path());

    assert!(settings::load_policies().is_empty());
    let a = VmKey::new("qemu:///system", "a");
    let b = VmKey::new("qemu+ssh://host/system", "a");
    settings::save_policy(&a, Policy::AlwaysCommit).unwrap();
    settings::save_policy(&b, Policy::Ignore).unwrap();
    settings::save_policy(&a, Policy::AlwaysDiscard).unwrap();
    let loaded = settings::load_policies();
    assert_eq!(
        loaded.get(&a),
        Some(&Policy::AlwaysDiscard),
        "the last choice wins"
    );
    assert_eq!(
        loaded.get(&b),
        Some(&Policy::Ignore),
        "same name, other connection"
    );
    let text = std::fs::read_to_string(dir.path().join("vmoverlay/policies.json")).unwrap();
    assert!(text.contains("\"always-discard\""), "{text}");

    assert!(!settings::autostart_enabled());
    settings::set_autostart(true, &["qemu:///system".into()]).unwrap();
    let entry = std::fs::read_to_string(settings::autostart_path()).unwrap();
    assert!(settings::autostart_path().starts_with(dir.path().join("autostart")));
    assert!(
        entry.contains("Exec=vmoverlay --connect \"qemu:///system\""),
        "{entry}"
    );
    let st = std::process::Command::new("desktop-file-validate")
        .arg(settings::autostart_path())
        .output()
        .expect("desktop-file-validate (desktop-file-utils) is installed");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stdout)
    );
    settings::set_autostart(false, &[]).unwrap();
    assert!(!settings::autostart_enabled());
    // Inside Flatpak the Background portal gets the same command line, and its answer is
    // remembered (the portal cannot be asked later).
    assert_eq!(
        settings::autostart_command(&["qemu:///system".into(), "test:///default".into()]),
        [
            "vmoverlay",
            "--connect",
            "qemu:///system",
            "--connect",
            "test:///default"
        ]
    );
    assert!(!settings::portal_autostart_remembered());
    settings::remember_portal_autostart(true).unwrap();
    assert!(settings::portal_autostart_remembered());
    settings::remember_portal_autostart(false).unwrap();
    settings::remember_portal_autostart(false).unwrap();
    assert!(!settings::portal_autostart_remembered());

    std::fs::write(
        dir.path().join("vmoverlay/pins.json"),
        r#"{"a": [{"overlay": "/img/a.qcow2", "base": "/img/base.qcow2"}]}"#,
    )
    .unwrap();
    let pins = settings::pins_for("a").unwrap();
    assert_eq!(pins.len(), 1);
    assert_eq!(pins[0].base, std::path::PathBuf::from("/img/base.qcow2"));
    assert!(settings::pins_for("other").unwrap().is_empty());
    std::fs::write(dir.path().join("vmoverlay/pins.json"), "{not json").unwrap();
    assert!(settings::pins_for("a")
        .unwrap_err()
        .to_string()
        .contains("pins.json"));
}
