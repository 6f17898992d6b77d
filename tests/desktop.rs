//! The desktop app in real sessions: X11 (Xvfb + openbox + xfce4-panel) and Wayland (headless
//! sway + waybar), with a real session bus and a real notification daemon (dunst).
//! Screenshots are written to target/test-artifacts/.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::desktop::{
    demo_dir, find_item, is, labels, our_item, start_app, App, Hook, Kind, Session,
};
use common::guest::{marker_guest, read_image, Behaviour, TestVm};
use common::images::{checksum, reads_pattern};
use common::{bin, testbed_shared, virsh};
use vmoverlay::demo;

fn wait_menu(
    s: &Session,
    item: &str,
    what: &str,
    pred: impl Fn(&[String]) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let layout = s.menu(item);
        if pred(&labels(&layout)) {
            return layout;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tray menu never showed {what}: {:?}; raw: {}",
            labels(&layout),
            layout.to_string().chars().take(1500).collect::<String>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn xdotool(s: &Session, args: &[&str]) -> String {
    let out = s.command("xdotool").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Clicks one of the prompt's three responses (Discard | Later | Commit, left to right) with
/// the mouse, as a person would.
fn click_response(s: &Session, title: &str, response: &str) {
    let column = match response {
        "discard" => 0,
        "later" => 1,
        "commit" => 2,
        other => panic!("no response {other}"),
    };
    click_dialog_button(s, title, column, 3);
}

/// A property of our StatusNotifierItem, as a tray host reads it.
fn tray_property(s: &Session, item: &str, name: &str) -> serde_json::Value {
    let out = s.busctl(&[
        "--json=short",
        "get-property",
        item,
        "/StatusNotifierItem",
        "org.kde.StatusNotifierItem",
        name,
    ]);
    serde_json::from_str(&out).unwrap_or(serde_json::Value::Null)
}

#[test]
fn x11_demo_tray_prompt_commit_then_dbusmenu_discard() {
    let s = Session::start(Kind::X11);
    let (_app, hook) = start_app(&s, &["--demo"]);
    hook.wait("tray-ready", Duration::from_secs(20), |v| {
        v["event"] == "tray-ready"
    });
    let item = our_item(&s);
    wait_menu(&s, &item, "the demo guest running", |l| {
        l.iter().any(|t| t.starts_with("demo-guest — running"))
    });
    // The tray menu as xfce4-panel shows it (right click on the item).
    xdotool(&s, &["mousemove", "12", "16", "click", "3"]);
    std::thread::sleep(Duration::from_millis(800));
    s.screenshot("x11-tray-menu.png");
    xdotool(&s, &["key", "Escape"]);

    // The demo guest shuts itself down: the prompt appears at once.
    hook.wait("the prompt", Duration::from_secs(30), |v| {
        is(v, "prompt-mapped", demo::DOMAIN)
    });
    let win = xdotool(&s, &["search", "--name", "demo-guest has shut down"]);
    assert!(!win.is_empty(), "the dialog is a mapped X11 window");
    std::thread::sleep(Duration::from_millis(1000));
    s.screenshot("x11-prompt.png");
    let layout = s.menu(&item);
    assert!(
        labels(&layout)
            .iter()
            .any(|l| l.contains("12.0 MiB changed, decision pending")),
        "{:?}",
        labels(&layout)
    );

    click_response(&s, "demo-guest has shut down", "commit");
    let done = hook.wait("the commit", Duration::from_secs(30), |v| {
        is(v, "job-done", demo::DOMAIN)
    });
    assert_eq!(done["extra"]["op"], "commit");
    assert_eq!(done["extra"]["ok"], true, "{done}");
    let base = demo_dir(&s).join("base.qcow2");
    let overlay = demo_dir(&s).join("demo-guest.qcow2");
    assert!(
        reads_pattern(&base, demo::GUEST_PATTERN, "16M", "12M"),
        "the guest's writes are in the base"
    );
    assert!(reads_pattern(&base, 0xaa, "0", "4M"));
    assert_eq!(common::images::changed(&overlay), 0);
    let notes = s.notifications();
    assert!(notes.contains("demo-guest: changes committed"), "{notes}");

    // Start it again from the tray; it writes and shuts down; then "Discard now" in its submenu.
    s.click_item(&item, "", "Start the demo guest");
    hook.wait_count("the second prompt", Duration::from_secs(30), 2, |v| {
        is(v, "prompt-mapped", demo::DOMAIN)
    });
    // Starting the VM again closes the open prompt; the decision stays pending.
    s.click_item(&item, "", "Start the demo guest");
    hook.wait("the prompt to go away", Duration::from_secs(10), |v| {
        is(v, "prompt-closed", demo::DOMAIN)
    });
    // Closed from code, the prompt answered nothing: the only response so far is the first
    // prompt's Commit (closing it used to send its close response, "Later").
    assert_eq!(
        hook.count(|v| is(v, "prompt-response", demo::DOMAIN)),
        1,
        "{:?}",
        hook.events()
    );
    common_wait(
        || xdotool(&s, &["search", "--onlyvisible", "--name", "has shut down"]).is_empty(),
        "the dialog to be unmapped",
    );
    hook.wait_count("the third prompt", Duration::from_secs(30), 3, |v| {
        is(v, "prompt-mapped", demo::DOMAIN)
    });
    wait_menu(&s, &item, "pending", |l| {
        l.iter()
            .any(|t| t.contains("8.0 MiB changed, decision pending"))
    });
    let base_before = checksum(&base);
    s.click_item(&item, "demo-guest —", "Discard now");
    let n = |v: &serde_json::Value| is(v, "job-done", demo::DOMAIN);
    hook.wait("the discard", Duration::from_secs(30), |v| {
        n(v) && v["extra"]["op"] == "discard"
    });
    assert_eq!(
        checksum(&base),
        base_before,
        "discard leaves the base byte-identical"
    );
    assert_eq!(common::images::changed(&overlay), 0);
    assert!(
        hook.count(|v| is(v, "prompt-closed", demo::DOMAIN)) >= 1,
        "the open prompt went away"
    );

    // "Show status" opens the status window with the VM and its last result.
    s.click_item(&item, "", "Show status");
    common_wait(
        || !xdotool(&s, &["search", "--onlyvisible", "--name", "^VM Overlay$"]).is_empty(),
        "the status window",
    );
    // A new window's first frame under Xvfb's software rendering takes a moment.
    std::thread::sleep(Duration::from_millis(2500));
    s.screenshot("x11-status.png");
}

#[test]
fn wayland_demo_tray_registers_and_dbusmenu_drives_the_flow() {
    let s = Session::start(Kind::Wayland);
    let (app, hook) = start_app(&s, &["--demo"]);
    hook.wait("tray-ready", Duration::from_secs(20), |v| {
        v["event"] == "tray-ready"
    });
    let item = our_item(&s);
    let layout = wait_menu(&s, &item, "the demo guest", |l| {
        l.iter().any(|t| t.starts_with("demo-guest — running"))
    });
    for expected in [
        "Show status",
        "Start at login",
        "Quit",
        "Shut down the demo guest",
    ] {
        assert!(
            labels(&layout).iter().any(|l| l == expected),
            "{expected}: {:?}",
            labels(&layout)
        );
    }
    // Shut it down from the tray rather than waiting for the timer.
    s.click_item(&item, "", "Shut down the demo guest");
    hook.wait("the prompt", Duration::from_secs(20), |v| {
        is(v, "prompt-mapped", demo::DOMAIN)
    });
    // The first frame under sway's software renderer takes a moment after the map.
    std::thread::sleep(Duration::from_millis(2000));
    s.screenshot("wayland-prompt.png");
    wait_menu(&s, &item, "decision pending", |l| {
        l.iter().any(|t| t.contains("decision pending"))
    });
    s.click_item(&item, "demo-guest —", "Discard now");
    let done = hook.wait("the discard", Duration::from_secs(30), |v| {
        is(v, "job-done", demo::DOMAIN)
    });
    assert_eq!(done["extra"]["ok"], true, "{done}");
    let overlay = demo_dir(&s).join("demo-guest.qcow2");
    assert_eq!(common::images::changed(&overlay), 0);
    // The closed prompt's shared-memory buffers are freed (GTK 4.8 kept those of a window
    // destroyed while it showed: 0.7 MiB a prompt; see `ui::destroy_after_hiding`).
    hook.wait("the prompt to close", Duration::from_secs(10), |v| {
        is(v, "prompt-closed", demo::DOMAIN)
    });
    let maps = format!("/proc/{}/maps", app.0.id());
    common_wait(
        || {
            !std::fs::read_to_string(&maps)
                .unwrap()
                .contains("memfd:gdk-wayland")
        },
        "the closed prompt's buffers to be freed",
    );
    // A second launch hands its arguments to the running instance, which opens its status
    // window (the compositor maps it), and exits.
    let windows = s.sway_window_events();
    let second = s
        .command(bin())
        .args(["--connect", "test:///default"])
        .output()
        .unwrap();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    wait_menu(&s, &item, "the second launch's VM", |l| {
        l.iter().any(|t| t.starts_with("test — running"))
    });
    loop {
        let (_, w) = windows
            .recv_timeout(Duration::from_secs(10))
            .expect("the second launch opened the status window");
        if w["change"] == "new" && w["container"]["app_id"] == vmoverlay::config::APP_ID {
            break;
        }
    }
    // Launching it again with nothing new opens it too (it is already open: no new window).
    let third = s.command(bin()).output().unwrap();
    assert!(third.status.success());
    assert_eq!(s.tray_items().len(), 1, "still one instance");
    // "Start at login" writes the XDG autostart entry, and removes it again.
    let autostart = s
        .home
        .join(".config/autostart/io.github.vmoverlay.VMOverlay.desktop");
    let toggle = find_item(&s.menu(&item), "", "Start at login").unwrap();
    s.click(&item, toggle);
    common_wait(|| autostart.exists(), "autostart entry");
    s.click(&item, toggle);
    common_wait(|| !autostart.exists(), "autostart entry removed");
}

/// Inside a Flatpak sandbox, *Start at login* asks the real Background portal
/// (xdg-desktop-portal 1.16 with the GNOME backend), which writes the autostart entry for the
/// sandboxed app. The sandbox is made as Flatpak makes it: bubblewrap with a tmpfs root, the
/// host's /usr, and a `/.flatpak-info` naming the app, which is how the portal identifies it.
#[test]
fn x11_start_at_login_inside_flatpak_goes_through_the_background_portal() {
    let s = Session::start(Kind::X11);
    // The portal frontend picks the backend by desktop; activated services get this env.
    s.activation_environment(&[
        "DISPLAY",
        "HOME",
        "XDG_CONFIG_HOME",
        "XDG_CURRENT_DESKTOP=GNOME",
    ]);
    // The user already allowed background activity (otherwise the portal asks in a dialog).
    s.allow_background(vmoverlay::config::APP_ID);
    let info = s.home.join("flatpak-info");
    std::fs::write(
        &info,
        format!(
            "[Application]\nname={}\nruntime=runtime/org.gnome.Platform/x86_64/49\n",
            vmoverlay::config::APP_ID
        ),
    )
    .unwrap();
    let hook = Hook(s.home.join("hook.jsonl"));
    let log = std::fs::File::create(s.home.join("app.log")).unwrap();
    let mut sandbox = s.command("bwrap");
    sandbox.args(["--tmpfs", "/"]);
    for dir in ["/usr", "/etc", "/tmp", "/run", "/var", "/root", "/work"] {
        if std::path::Path::new(dir).exists() {
            sandbox.args(["--bind", dir, dir]);
        }
    }
    for (link, to) in [
        ("/lib", "usr/lib"),
        ("/lib64", "usr/lib64"),
        ("/bin", "usr/bin"),
        ("/sbin", "usr/sbin"),
    ] {
        sandbox.args(["--symlink", to, link]);
    }
    // The test's own files (home, binary) may live elsewhere too.
    for dir in [
        s.home.clone(),
        std::path::PathBuf::from(bin())
            .parent()
            .unwrap()
            .to_path_buf(),
    ] {
        let d = dir.to_str().unwrap().to_string();
        sandbox.args(["--bind", &d, &d]);
    }
    sandbox
        .args(["--dev", "/dev", "--proc", "/proc", "--ro-bind"])
        .arg(&info)
        .arg("/.flatpak-info")
        .args([bin(), "--connect", "test:///default"])
        .env("VMOVERLAY_TEST_HOOK", &hook.0)
        .env("RUST_LOG", "vmoverlay=info")
        .stdout(Stdio::null())
        .stderr(log);
    let _app = App(sandbox.spawn().expect("bwrap (bubblewrap) is installed"));
    hook.wait("tray-ready", Duration::from_secs(20), |v| {
        v["event"] == "tray-ready"
    });
    let item = our_item(&s);
    wait_menu(&s, &item, "the test driver's VM", |l| {
        l.iter().any(|t| t.starts_with("test — running"))
    });
    // The portal writes the entry, for `flatpak run` of the app, with our arguments.
    let autostart = s
        .home
        .join(".config/autostart")
        .join(format!("{}.desktop", vmoverlay::config::APP_ID));
    let toggle = find_item(&s.menu(&item), "", "Start at login").unwrap();
    s.click(&item, toggle);
    common_wait(|| autostart.exists(), "the portal's autostart entry");
    let entry = std::fs::read_to_string(&autostart).unwrap();
    assert!(
        entry.contains(&format!(
            "Exec=flatpak run --command=vmoverlay {} --connect test:///default",
            vmoverlay::config::APP_ID
        )),
        "{entry}"
    );
    // The app remembers the answer (the portal cannot be asked later) and shows it.
    wait_menu(&s, &item, "Start at login checked", |_| {
        let layout = s.menu(&item);
        layout.to_string().contains("\"toggle-state\"")
            && find_toggle_state(&layout, "Start at login") == Some(1)
    });
    s.click(&item, toggle);
    common_wait(|| !autostart.exists(), "the portal removing the entry");
    wait_menu(&s, &item, "Start at login unchecked", |_| {
        find_toggle_state(&s.menu(&item), "Start at login") == Some(0)
    });
}

/// The `toggle-state` of the dbusmenu item labelled `label`.
fn find_toggle_state(layout: &serde_json::Value, label: &str) -> Option<i64> {
    fn walk(node: &serde_json::Value, label: &str) -> Option<i64> {
        let arr = node.as_array()?;
        let props = arr.get(1)?;
        if props["label"]["data"].as_str() == Some(label) {
            return props["toggle-state"]["data"].as_i64();
        }
        arr.get(2)?
            .as_array()?
            .iter()
            .find_map(|c| walk(c.get("data").unwrap_or(c), label))
    }
    walk(layout["data"].get(1)?, label)
}

fn common_wait(f: impl Fn() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn x11_real_guest_prompt_commit_forced_warning_and_no_prompt_for_save() {
    let bed = testbed_shared();
    let s = Session::start(Kind::X11);
    let clean = TestVm::define(
        &bed.uri,
        "vmo-ui-clean",
        &Behaviour {
            marker: Some("UI-COMMIT-MARK".into()),
            offset: 3 << 20,
            hold_secs: 0,
        },
    );
    let hold = Behaviour {
        marker: Some("FORCED-MARK".into()),
        offset: 3 << 20,
        hold_secs: 600,
    };
    let forced = TestVm::define(&bed.uri, "vmo-ui-forced", &hold);
    let saved = TestVm::define(&bed.uri, "vmo-ui-saved", &hold);
    // Already off with 768 MiB of changes when the app starts: pending, no dialog.
    let pending = TestVm::define(&bed.uri, "vmo-ui-pending", &Behaviour::default());
    for img in [&pending.base, &pending.overlay] {
        common::images::qemu_img(&["resize", "-q", img.to_str().unwrap(), "1G"]);
    }
    common::images::qemu_io(&pending.overlay, &["write -P 0x71 0 768M"]);
    let (_app, hook) = start_app(&s, &["--connect", &bed.uri]);
    hook.wait("tray-ready", Duration::from_secs(20), |v| {
        v["event"] == "tray-ready"
    });
    let item = our_item(&s);
    wait_menu(&s, &item, "the test VMs", |l| {
        l.iter().any(|t| t.starts_with("vmo-ui-clean"))
    });
    wait_menu(&s, &item, "the VM found pending", |l| {
        l.iter().any(|t| {
            // 768 MiB written, plus the zeroed clusters the resize put over the grown base.
            t.starts_with("vmo-ui-pending — shut off, 1.0 GiB changed, decision pending")
        })
    });
    // "Commit now" from the tray; the commit's progress shows in the tray (and status window).
    s.click_item(&item, "vmo-ui-pending —", "Commit now");
    wait_menu(&s, &item, "commit progress", |l| {
        l.iter()
            .any(|t| t.starts_with("vmo-ui-pending — committing"))
    });
    // The tooltip (what hovering the icon shows) carries the progress too, and the icon is
    // the busy one.
    let mut percents = std::collections::BTreeSet::new();
    let mut busy_seen = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while hook.count(|v| is(v, "job-done", &pending.name)) == 0 {
        let tip = tray_property(&s, &item, "ToolTip");
        let icon = tray_property(&s, &item, "IconName");
        let text = tip["data"][3].as_str().unwrap_or("").to_string();
        if let Some(line) = text
            .lines()
            .find(|l| l.starts_with("vmo-ui-pending — committing"))
        {
            percents.insert(line.to_string());
            busy_seen |= icon["data"]
                .as_str()
                .unwrap_or("")
                .ends_with("-busy-symbolic");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the commit never ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(busy_seen, "the busy icon while committing");
    assert!(
        !percents.is_empty(),
        "the tooltip never showed the commit's progress"
    );
    assert!(percents.iter().all(|l| l.contains('%')), "{percents:?}");
    let done = hook.wait("the tray's commit", Duration::from_secs(60), |v| {
        is(v, "job-done", &pending.name)
    });
    assert_eq!(done["extra"]["ok"], true, "{done}");
    assert!(reads_pattern(&pending.base, 0x71, "0", "768M"));
    assert_eq!(
        hook.count(|v| is(v, "prompt-mapped", &pending.name)),
        0,
        "no dialog at startup"
    );

    // A clean guest power-off: the prompt; Commit through the dialog puts the marker in the base.
    clean.start();
    hook.wait("the prompt", Duration::from_secs(90), |v| {
        is(v, "prompt-mapped", &clean.name)
    });
    let p = hook
        .events()
        .into_iter()
        .find(|v| is(v, "prompt-mapped", &clean.name))
        .unwrap();
    assert_eq!(p["extra"]["forced"], serde_json::Value::Null);
    click_response(&s, "vmo-ui-clean has shut down", "commit");
    let done = hook.wait("the commit", Duration::from_secs(60), |v| {
        is(v, "job-done", &clean.name)
    });
    assert_eq!(done["extra"]["ok"], true, "{done}");
    assert_eq!(read_image(&clean.base, 3 << 20, 14), b"UI-COMMIT-MARK");

    // A forced destroy: the warning variant, Discard suggested.
    forced.start();
    common_wait(
        || read_image(&forced.overlay, 3 << 20, 11) == b"FORCED-MARK",
        "the guest's write",
    );
    forced.destroy();
    hook.wait("the forced prompt", Duration::from_secs(30), |v| {
        is(v, "prompt-mapped", &forced.name)
    });
    let p = hook
        .events()
        .into_iter()
        .find(|v| is(v, "prompt-mapped", &forced.name))
        .unwrap();
    assert_eq!(p["extra"]["forced"], "destroyed");
    assert!(!xdotool(&s, &["search", "--name", "vmo-ui-forced was forced off"]).is_empty());
    std::thread::sleep(Duration::from_millis(1000));
    s.screenshot("x11-forced-prompt.png");

    // A managed save: no prompt, overlay untouched.
    saved.start();
    common_wait(
        || read_image(&saved.overlay, 3 << 20, 11) == b"FORCED-MARK",
        "the guest's write",
    );
    let before = checksum(&saved.overlay);
    virsh(&bed.uri, &["managedsave", &saved.name]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        hook.count(|v| is(v, "prompt-mapped", &saved.name)),
        0,
        "no prompt for a saved VM"
    );
    assert_eq!(checksum(&saved.overlay), before);
    let _ = Command::new("virsh")
        .args(["-q", "-c", &bed.uri, "managedsave-remove", &saved.name])
        .output();
}

/// A VM whose changes cannot be committed or discarded is shown with the very sentence
/// `vmoverlay commit` prints for it, and the status window offers no action for it.
#[test]
fn x11_refused_vms_show_the_clis_reason_in_the_status_window() {
    let bed = testbed_shared();
    let s = Session::start(Kind::X11);
    // An internal snapshot in the overlay (exit 12), and a disk defined as raw (exit 4).
    let snap = common::vm_state::StateVm::shut_off(&bed.uri, "vmo-ui-snapshot");
    common::images::qemu_img(&["snapshot", "-c", "kept", snap.overlay.to_str().unwrap()]);
    let raw = common::vm_state::StateVm::shut_off(&bed.uri, "vmo-ui-raw");
    raw.edit_xml(|xml| xml.replace("type='qcow2'", "type='raw'"));
    let (_app, hook) = start_app(&s, &["--connect", &bed.uri]);
    hook.wait("tray-ready", Duration::from_secs(20), |v| {
        v["event"] == "tray-ready"
    });
    let item = our_item(&s);
    wait_menu(&s, &item, "the refused VMs", |l| {
        l.iter().any(|t| t.starts_with("vmo-ui-snapshot"))
            && l.iter().any(|t| t.starts_with("vmo-ui-raw"))
    });
    s.click_item(&item, "", "Show status");
    let state = s.home.join(".local/state/vmoverlay");
    for (vm, code) in [(&snap, 12), (&raw, 4)] {
        let row = hook.wait("its row with the reason", Duration::from_secs(30), |v| {
            is(v, "status-row", &vm.name) && v["extra"]["blocked"].is_string()
        });
        assert_eq!(row["extra"]["can_act"], false, "{row}");
        let shown = row["extra"]["blocked"].as_str().unwrap().to_string();
        assert!(
            row["extra"]["subtitle"].as_str().unwrap().contains(&shown),
            "{row}"
        );
        let cli = common::vm_state::vmoverlay(
            &state,
            &["commit", &vm.name, "--yes", "--connect", &bed.uri],
        );
        assert_eq!(cli.code, code, "{cli:?}");
        assert_eq!(
            cli.stderr.trim().strip_prefix("vmoverlay: "),
            Some(shown.as_str()),
            "the status window and the CLI say the same"
        );
    }
    std::thread::sleep(Duration::from_millis(2500));
    s.screenshot("x11-status-refused.png");
}

/// Clicks button `index` of `count` laid out evenly at the bottom of a dialog window.
fn click_dialog_button(s: &Session, title: &str, index: i64, count: i64) {
    let win = xdotool(s, &["search", "--name", title]);
    let win = win
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no window named {title:?}"))
        .to_string();
    let geo = xdotool(s, &["getwindowgeometry", "--shell", &win]);
    let val = |k: &str| -> i64 {
        geo.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {geo}"))
    };
    let x = val("X") + val("WIDTH") * (2 * index + 1) / (2 * count);
    let y = val("Y") + val("HEIGHT") - 27;
    xdotool(
        s,
        &["mousemove", &x.to_string(), &y.to_string(), "click", "1"],
    );
}

/// "Make disposable…" from the tray menu, confirmed with the mouse in its dialog, makes an
/// ordinary VM disposable for real; "Stop being disposable…" makes it ordinary again.
#[test]
fn x11_make_disposable_and_back_through_the_tray_and_its_dialog() {
    let bed = testbed_shared();
    let s = Session::start(Kind::X11);
    let o = common::vm_state::ordinary(&bed.uri, "vmo-ui-adopt");
    let name = o.vm.name.clone();
    let before = virsh(&bed.uri, &["dumpxml", "--inactive", &name]);
    let (_app, hook) = start_app(&s, &["--connect", &bed.uri]);
    hook.wait("tray-ready", Duration::from_secs(20), |v| {
        v["event"] == "tray-ready"
    });
    let item = our_item(&s);
    let parent = format!("{name} —");
    s.click_item(&item, &parent, "Make disposable…");
    hook.wait("the question", Duration::from_secs(20), |v| {
        is(v, "confirm-mapped", &name)
    });
    std::thread::sleep(Duration::from_millis(1500));
    s.screenshot("x11-make-disposable.png");
    click_dialog_button(&s, "disposable?", 1, 2);
    let done = hook.wait("the adopt", Duration::from_secs(60), |v| {
        is(v, "change-done", &name)
    });
    assert_eq!(done["extra"]["ok"], true, "{done}");
    let overlay = common::vm_state::overlay_of(&o.vda);
    assert!(overlay.is_file());
    let xml = virsh(&bed.uri, &["dumpxml", "--inactive", &name]);
    assert!(xml.contains(&format!("'{}'", overlay.display())), "{xml}");
    // Made ordinary again from the same menu (its overlays are empty: nothing to decide).
    s.click_item(&item, &parent, "Stop being disposable…");
    hook.wait_count("the second question", Duration::from_secs(20), 2, |v| {
        is(v, "confirm-mapped", &name)
    });
    std::thread::sleep(Duration::from_millis(1000));
    click_dialog_button(&s, "Stop making", 1, 2);
    hook.wait_count("the release", Duration::from_secs(60), 2, |v| {
        is(v, "change-done", &name) && v["extra"]["ok"] == true
    });
    assert!(!overlay.exists());
    assert_eq!(virsh(&bed.uri, &["dumpxml", "--inactive", &name]), before);
}

/// The notification is the only UI after "Later" on a desktop without a tray: its buttons
/// are the application's actions for that VM, invoked here through the real notification
/// server's (dunst's) own menu, and it is withdrawn when the prompt answers instead.
#[test]
fn x11_notification_buttons_commit_and_discard_and_the_prompt_withdraws_them() {
    let bed = testbed_shared();
    let s = Session::start(Kind::X11);
    let bus = s.monitor_notifications();
    // Wrote to its overlay and powered off before the app started: found pending.
    let found = marker_guest(&bed.uri, "vmo-nt-found", "FOUND-MARK", 2 << 20);
    let found_base = checksum(&found.base);
    let asked = TestVm::define(
        &bed.uri,
        "vmo-nt-asked",
        &Behaviour {
            marker: Some("ASKED-MARK".into()),
            offset: 2 << 20,
            hold_secs: 0,
        },
    );
    let (_app, hook) = start_app(&s, &["--connect", &bed.uri]);
    hook.wait("tray-ready", Duration::from_secs(20), |v| {
        v["event"] == "tray-ready"
    });

    // The VM found pending: one notification, with the three answers for that VM.
    let n = bus.wait_notify(
        "the found VM's notification",
        "vmo-nt-found is waiting for a decision",
    );
    let actions = common::desktop::notify_actions(&n);
    for (key, label) in [
        ("app.commit", "Commit"),
        ("app.discard", "Discard"),
        ("app.later", "Later"),
    ] {
        let i = actions
            .iter()
            .position(|a| a.starts_with(key) && a.contains("vmo-nt-found"))
            .unwrap_or_else(|| panic!("no {key} button for the VM: {actions:?}"));
        assert_eq!(actions[i + 1], label, "{actions:?}");
    }
    assert!(
        actions.iter().any(|a| a == "default"),
        "a default action: {actions:?}"
    );
    assert_eq!(
        hook.count(|v| is(v, "prompt-mapped", &found.name)),
        0,
        "no dialog at start"
    );
    s.notification_action("Discard", "vmo-nt-found");
    let done = hook.wait("the notification's discard", Duration::from_secs(30), |v| {
        is(v, "job-done", &found.name)
    });
    assert_eq!(done["extra"]["op"], "discard", "{done}");
    assert_eq!(done["extra"]["ok"], true, "{done}");
    assert_eq!(checksum(&found.base), found_base, "the base is untouched");
    assert_eq!(common::images::changed(&found.overlay), 0);

    // "Later" in the prompt moves the question to a notification; its Commit commits.
    asked.start();
    hook.wait("the prompt", Duration::from_secs(90), |v| {
        is(v, "prompt-mapped", &asked.name)
    });
    click_response(&s, "vmo-nt-asked has shut down", "later");
    bus.wait_notify(
        "the notification after Later",
        "vmo-nt-asked is waiting for a decision",
    );
    s.notification_action("Commit", "vmo-nt-asked");
    let done = hook.wait("the notification's commit", Duration::from_secs(30), |v| {
        is(v, "job-done", &asked.name)
    });
    assert_eq!(done["extra"]["op"], "commit", "{done}");
    assert_eq!(done["extra"]["ok"], true, "{done}");
    assert_eq!(read_image(&asked.base, 2 << 20, 10), b"ASKED-MARK");
    assert_eq!(common::images::changed(&asked.overlay), 0);

    // Put off again, then started: the notification is taken back while it runs; at the next
    // stop the prompt asks (and the notification with it); the prompt answers: withdrawn.
    asked.start();
    hook.wait_count("the second prompt", Duration::from_secs(90), 2, |v| {
        is(v, "prompt-mapped", &asked.name)
    });
    click_response(&s, "vmo-nt-asked has shut down", "later");
    let asks = |bus: &common::desktop::BusMonitor| {
        bus.calls("Notify")
            .iter()
            .filter(|n| {
                n[3].as_str()
                    .is_some_and(|t| t.contains("vmo-nt-asked is waiting"))
            })
            .count()
    };
    common_wait(|| asks(&bus) == 2, "the second notification");
    asked.start();
    // (The first withdraw was its own Commit button's answer.)
    hook.wait_count("the withdraw at start", Duration::from_secs(30), 2, |v| {
        is(v, "notification-withdrawn", &asked.name)
    });
    hook.wait_count("the third prompt", Duration::from_secs(90), 3, |v| {
        is(v, "prompt-mapped", &asked.name)
    });
    common_wait(|| asks(&bus) == 3, "the notification back with the prompt");
    let closes = bus.calls("CloseNotification").len();
    click_response(&s, "vmo-nt-asked has shut down", "discard");
    hook.wait_count("the prompt's discard", Duration::from_secs(30), 2, |v| {
        is(v, "job-done", &asked.name)
    });
    let done = hook
        .events()
        .into_iter()
        .filter(|v| is(v, "job-done", &asked.name))
        .nth(1)
        .unwrap();
    assert_eq!(done["extra"]["ok"], true, "{done}");
    hook.wait_count("the withdraw", Duration::from_secs(10), 3, |v| {
        is(v, "notification-withdrawn", &asked.name)
    });
    common_wait(
        || bus.calls("CloseNotification").len() > closes,
        "the notification server told to close it",
    );
    assert_eq!(common::images::changed(&asked.overlay), 0);
    assert_eq!(
        read_image(&asked.base, 2 << 20, 10),
        b"ASKED-MARK",
        "discarding kept the committed base"
    );

    // A click on a notification's body opens the status window.
    common_wait(
        || xdotool(&s, &["search", "--onlyvisible", "--name", "^VM Overlay$"]).is_empty(),
        "no status window yet",
    );
    s.notification_default_action();
    common_wait(
        || !xdotool(&s, &["search", "--onlyvisible", "--name", "^VM Overlay$"]).is_empty(),
        "the status window from the notification's default action",
    );
}
