//! The app on a real GNOME Shell 43 (Wayland, headless, software-rendered), as an unprivileged
//! user: once with Debian's AppIndicator extension (the tray lives in the top bar, its menu is
//! the shell's own, built from our dbusmenu), once as GNOME ships it (no tray at all).
//! Every click here is a real pointer click through the shell's input path (a Clutter virtual
//! pointer, see tests/shells/gnome-extension). Screenshots go to target/test-artifacts/.

mod common;

use std::time::{Duration, Instant};

use common::desktop::{demo_dir, is, our_item, start_app, Kind, Session};
use common::guest::{read_image, Behaviour, TestVm};
use common::images::{changed, checksum, reads_pattern};
use common::shells::{
    gnome_click, gnome_click_button, gnome_eval, gnome_expand_banner, gnome_make_room_for_banner,
    gnome_notifications, gnome_tray_icon, gnome_tray_menu, gnome_wait_menu_item,
    gnome_wait_notification, gnome_wait_window, run_in_session,
};
use common::{bin, testbed_shared};
use vmoverlay::demo;

/// Opens our icon's menu in the top bar with a click, unless it is open.
fn open_tray_menu(s: &Session) {
    if gnome_tray_menu(s).is_none() {
        let (icon, _) = gnome_tray_icon(s).expect("our icon in the top bar");
        gnome_click(s, icon.centre());
    }
    common::desktop::wait_for("the tray menu to open", Duration::from_secs(10), || {
        gnome_tray_menu(s).is_some()
    });
}

fn close_tray_menu(s: &Session) {
    if gnome_tray_menu(s).is_some() {
        let (icon, _) = gnome_tray_icon(s).unwrap();
        gnome_click(s, icon.centre());
    }
    common::desktop::wait_for("the tray menu to close", Duration::from_secs(10), || {
        gnome_tray_menu(s).is_none()
    });
}

#[test]
fn gnome_appindicator_menu_discards_and_the_prompt_commits_by_real_clicks() {
    let t0 = Instant::now();
    let s = Session::start(Kind::Gnome);
    assert_eq!(
        s.name_owner_comm("org.kde.StatusNotifierWatcher")
            .as_deref(),
        Some("gnome-shell"),
        "the AppIndicator extension inside gnome-shell is the watcher"
    );
    let (_app, hook) = start_app(&s, &["--demo"]);
    hook.wait("tray-ready", Duration::from_secs(30), |v| {
        v["event"] == "tray-ready"
    });
    our_item(&s);
    common::desktop::wait_for("our icon in the top bar", Duration::from_secs(20), || {
        gnome_tray_icon(&s).is_some()
    });
    let (_, name) = gnome_tray_icon(&s).unwrap();
    assert_eq!(
        name, "VM Overlay",
        "the icon is named after the item's Title"
    );

    // The shell's own menu, built from our dbusmenu, lists the VM.
    open_tray_menu(&s);
    gnome_wait_menu_item(&s, "demo-guest — running");
    for entry in ["Shut down the demo guest", "Show status", "Quit"] {
        gnome_wait_menu_item(&s, entry);
    }
    s.screenshot("gnome-tray-menu.png");
    close_tray_menu(&s);

    // The demo guest shuts itself down: the prompt; a real click on Commit.
    hook.wait("the prompt", Duration::from_secs(40), |v| {
        is(v, "prompt-mapped", demo::DOMAIN)
    });
    let title = "demo-guest has shut down";
    gnome_wait_window(&s, title);
    std::thread::sleep(Duration::from_millis(1000)); // its first frame, software-rendered
    s.screenshot("gnome-prompt.png");
    gnome_click_button(&s, title, "Commit");
    let done = hook.wait("the commit", Duration::from_secs(30), |v| {
        is(v, "job-done", demo::DOMAIN)
    });
    assert_eq!(done["extra"]["op"], "commit", "{done}");
    assert_eq!(done["extra"]["ok"], true, "{done}");
    let base = demo_dir(&s).join("base.qcow2");
    let overlay = demo_dir(&s).join("demo-guest.qcow2");
    assert!(
        reads_pattern(&base, demo::GUEST_PATTERN, "16M", "12M"),
        "the guest's writes are in the base"
    );
    assert_eq!(changed(&overlay), 0);
    let note = gnome_wait_notification(&s, "demo-guest: changes committed");
    assert_eq!(note["source"], "VM Overlay", "{note}");

    // Start it again from the shell's menu; it writes and shuts down; the prompt comes back.
    open_tray_menu(&s);
    gnome_click(
        &s,
        gnome_wait_menu_item(&s, "Start the demo guest")
            .rect
            .centre(),
    );
    hook.wait_count("the second prompt", Duration::from_secs(40), 2, |v| {
        is(v, "prompt-mapped", demo::DOMAIN)
    });
    // "Discard now" in the VM's submenu, with real clicks: open the submenu, then the entry.
    let base_before = checksum(&base);
    open_tray_menu(&s);
    let vm = gnome_wait_menu_item(
        &s,
        "demo-guest — shut off, 8.0 MiB changed, decision pending",
    );
    assert!(vm.submenu, "{vm:?}");
    gnome_click(&s, vm.rect.centre());
    let discard = gnome_wait_menu_item(&s, "Discard now");
    gnome_wait_menu_item(&s, "Commit now");
    s.screenshot("gnome-tray-submenu.png");
    gnome_click(&s, discard.rect.centre());
    let done = hook.wait("the discard", Duration::from_secs(30), |v| {
        is(v, "job-done", demo::DOMAIN) && v["extra"]["op"] == "discard"
    });
    assert_eq!(done["extra"]["ok"], true, "{done}");
    assert_eq!(checksum(&base), base_before, "the base is byte-identical");
    assert_eq!(changed(&overlay), 0);
    hook.wait("the open prompt to go away", Duration::from_secs(10), |v| {
        is(v, "prompt-closed", demo::DOMAIN)
    });
    gnome_wait_notification(&s, "demo-guest: changes discarded");
    eprintln!("gnome with AppIndicator: {:?}", t0.elapsed());
}

/// GNOME as it ships: no StatusNotifierWatcher. The app says once how to get a tray, prompts
/// when a real guest powers off, and after "Later" asks in GNOME's own notification, whose
/// Commit and Discard buttons (real clicks in the shell's banner) really commit and discard;
/// Discard in the prompt works too, and a second launch — what the user does from the app
/// grid — opens the status window.
#[test]
fn gnome_without_a_tray_prompts_and_a_second_launch_opens_the_status_window() {
    const MARK: &[u8] = b"GNOME-COMMIT-MARK";
    const AT: u64 = 3 << 20;
    let t0 = Instant::now();
    let bed = testbed_shared();
    let vm = TestVm::define(
        &bed.uri,
        "vmo-gnome-plain",
        &Behaviour {
            marker: Some(String::from_utf8(MARK.to_vec()).unwrap()),
            offset: AT,
            hold_secs: 0,
        },
    );
    // The session's user works with its own images (the app runs unprivileged).
    for p in [vm.dir.path(), &vm.base, &vm.overlay] {
        std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    }
    let s = Session::start(Kind::GnomeNoTray);
    assert!(!s.has_name("org.kde.StatusNotifierWatcher"));
    let (_app, hook) = start_app(&s, &["--connect", &bed.uri]);
    hook.wait("tray-unavailable", Duration::from_secs(30), |v| {
        v["event"] == "tray-unavailable"
    });
    // GNOME shows, in its own notification, how to get a tray.
    const TRAY_HINT: &str = "AppIndicator and KStatusNotifierItem Support";
    let note = gnome_wait_notification(&s, TRAY_HINT);
    assert_eq!(note["source"], "VM Overlay", "{note}");
    assert_eq!(
        gnome_eval(
            &s,
            "Object.keys(Main.panel.statusArea).filter(k => k.startsWith('appindicator'))"
        ),
        serde_json::json!([]),
        "no tray icon anywhere"
    );

    let title = "vmo-gnome-plain has shut down";
    let waiting = "vmo-gnome-plain is waiting for a decision";
    let job = |what: &str, op: &str, n: usize| {
        let this = |v: &serde_json::Value| is(v, "job-done", &vm.name) && v["extra"]["op"] == op;
        hook.wait_count(what, Duration::from_secs(60), n, this);
        let done = hook.events().into_iter().filter(this).nth(n - 1).unwrap();
        assert_eq!(done["extra"]["ok"], true, "{done}");
    };
    // A guest-initiated power-off (its marker written into the overlay): the prompt, and a
    // real click on its "Later".
    let power_off_and_later = |n: usize| {
        vm.start();
        hook.wait_count("the prompt", Duration::from_secs(90), n, |v| {
            is(v, "prompt-mapped", &vm.name)
        });
        gnome_wait_window(&s, title);
        std::thread::sleep(Duration::from_millis(1000)); // its first frame, software-rendered
        if n == 1 {
            s.screenshot("gnome-no-tray-prompt.png");
        }
        gnome_make_room_for_banner(&s, &vm.name);
        gnome_click_button(&s, title, "Later");
        hook.wait_count("the prompt to close", Duration::from_secs(10), n, |v| {
            is(v, "prompt-closed", &vm.name)
        });
        // The question moves to GNOME's message tray, with the VM's three buttons...
        let note = gnome_wait_notification(&s, waiting);
        assert_eq!(note["source"], "VM Overlay", "{note}");
        assert_eq!(
            note["actions"],
            serde_json::json!(["Commit", "Discard", "Later"]),
            "{note}"
        );
        // ...which GNOME 43 draws only in the banner: the pointer enters it, it expands.
        let banner = gnome_expand_banner(&s, waiting);
        assert_eq!(
            banner.labels(),
            ["Commit", "Discard", "Later"],
            "{banner:?}"
        );
        banner
    };

    // After "Later", Commit in GNOME's notification: the guest's marker is in the base.
    let banner = power_off_and_later(1);
    s.screenshot("gnome-no-tray-notification.png");
    assert_eq!(
        read_image(&vm.base, AT, MARK.len()),
        b"\0".repeat(MARK.len())
    );
    gnome_click(&s, banner.button("Commit").centre());
    job("the commit", "commit", 1);
    assert_eq!(read_image(&vm.base, AT, MARK.len()), MARK);
    assert_eq!(changed(&vm.overlay), 0);
    gnome_wait_notification(&s, "vmo-gnome-plain: changes committed");
    assert!(
        !gnome_notifications(&s)
            .iter()
            .any(|n| n["title"].as_str().is_some_and(|t| t.contains(waiting))),
        "the question is gone: {:?}",
        gnome_notifications(&s)
    );

    // Once more, and Discard in the notification: the overlay is empty again, the base
    // byte-identical.
    let base = checksum(&vm.base);
    let banner = power_off_and_later(2);
    assert!(changed(&vm.overlay) > 0, "the guest wrote again");
    gnome_click(&s, banner.button("Discard").centre());
    job("the discard from the notification", "discard", 1);
    assert_eq!(changed(&vm.overlay), 0);
    assert_eq!(checksum(&vm.base), base, "the base is untouched");
    gnome_wait_notification(&s, "vmo-gnome-plain: changes discarded");

    // And Discard in the prompt itself.
    vm.start();
    hook.wait_count("the third prompt", Duration::from_secs(90), 3, |v| {
        is(v, "prompt-mapped", &vm.name)
    });
    gnome_wait_window(&s, title);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(changed(&vm.overlay) > 0, "the guest wrote again");
    gnome_click_button(&s, title, "Discard");
    job("the discard from the prompt", "discard", 2);
    assert_eq!(changed(&vm.overlay), 0);
    assert_eq!(checksum(&vm.base), base, "the base is untouched");

    // Launched again (same arguments, as from the app grid or a terminal): the running
    // instance opens its status window, and the second process exits.
    let second = run_in_session(&s, bin(), &["--connect", &bed.uri]);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    gnome_wait_window(&s, "VM Overlay");
    hook.wait("the VM's row", Duration::from_secs(20), |v| {
        is(v, "status-row", &vm.name)
    });
    std::thread::sleep(Duration::from_millis(1500));
    s.screenshot("gnome-no-tray-status.png");
    // How to get a tray was said once, and only once, in all this.
    assert_eq!(
        hook.count(|v| v["event"] == "tray-unavailable"),
        1,
        "said once"
    );
    eprintln!("gnome without a tray: {:?}", t0.elapsed());
}
