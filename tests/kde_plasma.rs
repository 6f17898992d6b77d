//! The app on a real KDE Plasma 5.27 (kwin + plasmashell, software-rendered), as an
//! unprivileged user, on X11 (Xvfb) and on Wayland (a virtual kwin_wayland). kded5 is the
//! StatusNotifierWatcher, Plasma's system tray the host, plasmashell the notification server.
//! What Plasma draws is read through AT-SPI; screenshots come from KWin's ScreenShot2 and go to
//! target/test-artifacts/.

mod common;

use std::time::{Duration, Instant};

use common::desktop::{demo_dir, find_item, is, labels, our_item, start_app, Hook, Kind, Session};
use common::images::{changed, checksum, reads_pattern};
use common::shells::{
    atspi_act, atspi_find, atspi_wait, plasma_wait_notification, xdotool, MenuEvents, Rect,
};
use vmoverlay::demo;

/// Our item as Plasma draws it: a push button named after the item's Title.
fn plasma_tray_icon(s: &Session) -> Rect {
    atspi_wait(s, "plasmashell", "push button", "VM Overlay")
}

/// The app registered with kded's watcher, and Plasma's tray shows it.
fn registered_and_drawn(s: &Session, hook: &Hook) -> Rect {
    assert_eq!(
        s.name_owner_comm("org.kde.StatusNotifierWatcher")
            .as_deref(),
        Some("kded5")
    );
    assert_eq!(
        s.name_owner_comm("org.freedesktop.Notifications")
            .as_deref(),
        Some("plasmashell"),
        "Plasma's own notification server"
    );
    hook.wait("tray-ready", Duration::from_secs(30), |v| {
        v["event"] == "tray-ready"
    });
    our_item(s);
    let icon = plasma_tray_icon(s);
    assert!(icon.y > 700.0, "in the bottom panel: {icon:?}");
    icon
}

fn key(s: &Session, k: &str) {
    xdotool(s, &["key", k]);
    std::thread::sleep(Duration::from_millis(300));
}

/// Right-clicks our icon: Plasma opens the item's dbusmenu as its own menu (and says so to
/// the item).
fn open_context_menu(s: &Session, icon: Rect, events: &MenuEvents) {
    let before = events.opened(0);
    let (x, y) = icon.centre();
    xdotool(
        s,
        &["mousemove", &format!("{x}"), &format!("{y}"), "click", "3"],
    );
    events.wait_opened(0, before + 1, "Plasma to open our menu");
    std::thread::sleep(Duration::from_millis(500));
}

/// Moves the pointer off the panel so that no tooltip covers what a screenshot shows.
fn pointer_away(s: &Session) {
    xdotool(s, &["mousemove", "640", "100"]);
}

#[test]
fn plasma_x11_context_menu_acts_and_plasma_notifies() {
    let t0 = Instant::now();
    let s = Session::start(Kind::PlasmaX11);
    let events = MenuEvents::watch(&s);
    let (_app, hook) = start_app(&s, &["--demo"]);
    let icon = registered_and_drawn(&s, &hook);
    let item = our_item(&s);

    // The demo guest shuts itself down; in Plasma's menu, by keyboard: the VM's submenu
    // (the first entry), then its second entry, "Discard now".
    hook.wait("the prompt", Duration::from_secs(40), |v| {
        is(v, "prompt-mapped", demo::DOMAIN)
    });
    let layout = s.menu(&item);
    let vm = find_item(
        &layout,
        "",
        "demo-guest — shut off, 12.0 MiB changed, decision pending",
    )
    .unwrap_or_else(|| panic!("the VM's entry: {:?}", labels(&layout)));
    let base = demo_dir(&s).join("base.qcow2");
    let overlay = demo_dir(&s).join("demo-guest.qcow2");
    let base_before = checksum(&base);
    // Plasma fills a dbusmenu submenu when first shown: show it, leave it, show it again.
    // Keys sent before Plasma has laid the menu out are lost: close it and try again.
    let mut tries = 0;
    loop {
        open_context_menu(&s, icon, &events);
        key(&s, "Down");
        key(&s, "Right");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while events.opened(vm) < 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        tries += 1;
        if events.opened(vm) >= 1 || tries == 3 {
            break;
        }
        key(&s, "Escape");
        key(&s, "Escape");
        std::thread::sleep(Duration::from_millis(500));
    }
    events.wait_opened(vm, 1, "Plasma to open the VM's submenu");
    std::thread::sleep(Duration::from_millis(500));
    key(&s, "Left");
    key(&s, "Right");
    events.wait_opened(vm, 2, "Plasma to open the VM's submenu again");
    // Opened by keyboard, the submenu has its first entry selected; the next is "Discard now".
    // (The pointer stays: leaving the menu would clear the selection.)
    key(&s, "Down");
    std::thread::sleep(Duration::from_millis(500));
    s.screenshot("plasma-x11-tray-menu.png");
    key(&s, "Return");
    let done = hook.wait("the discard", Duration::from_secs(30), |v| {
        is(v, "job-done", demo::DOMAIN)
    });
    assert_eq!(done["extra"]["op"], "discard", "{done}");
    assert_eq!(done["extra"]["ok"], true, "{done}");
    assert_eq!(checksum(&base), base_before, "the base is byte-identical");
    assert_eq!(changed(&overlay), 0);
    hook.wait("the prompt to go away", Duration::from_secs(10), |v| {
        is(v, "prompt-closed", demo::DOMAIN)
    });
    plasma_wait_notification(&s, "demo-guest: changes discarded");
    pointer_away(&s);
    std::thread::sleep(Duration::from_millis(500));
    s.screenshot("plasma-x11-notification.png");

    // "Show status" (the fourth entry: the VM, then after a separator "Start the demo
    // guest", "Show status") opens the status window.
    open_context_menu(&s, icon, &events);
    for _ in 0..3 {
        key(&s, "Down");
    }
    key(&s, "Return");
    hook.wait("the status window", Duration::from_secs(20), |v| {
        is(v, "status-row-added", demo::DOMAIN)
    });
    atspi_wait(&s, "vmoverlay", "frame", "VM Overlay");
    eprintln!("plasma x11: {:?}", t0.elapsed());
}

#[test]
fn plasma_wayland_tray_activates_the_status_window_and_the_prompt_commits() {
    let t0 = Instant::now();
    let s = Session::start(Kind::PlasmaWayland);
    let (_app, hook) = start_app(&s, &["--demo"]);
    registered_and_drawn(&s, &hook);

    // No synthetic pointer reaches Plasma on Wayland; AT-SPI's Press is the icon's
    // left click (Activate): the status window opens.
    atspi_act(&s, "plasmashell", "push button", "VM Overlay", "Press");
    hook.wait("the status window", Duration::from_secs(20), |v| {
        is(v, "status-row-added", demo::DOMAIN)
    });
    atspi_wait(&s, "vmoverlay", "frame", "VM Overlay");

    // The guest shuts itself down: the prompt; its Commit button, pressed through GTK's
    // accessibility interface, commits.
    hook.wait("the prompt", Duration::from_secs(40), |v| {
        is(v, "prompt-mapped", demo::DOMAIN)
    });
    atspi_wait(&s, "vmoverlay", "dialog", "demo-guest has shut down");
    std::thread::sleep(Duration::from_millis(1000));
    s.screenshot("plasma-wayland-prompt.png");
    // GTK 4's buttons offer one action, "click".
    let prompt = "vmoverlay/demo-guest has shut down";
    let commit = atspi_find(&s, prompt, "push button", "Commit");
    assert!(
        !commit.is_empty()
            && commit
                .iter()
                .all(|b| b["actions"] == serde_json::json!(["click"])),
        "{commit:?}"
    );
    atspi_act(&s, prompt, "push button", "Commit", "click");
    let done = hook.wait("the commit", Duration::from_secs(30), |v| {
        is(v, "job-done", demo::DOMAIN)
    });
    assert_eq!(done["extra"]["op"], "commit", "{done}");
    assert_eq!(done["extra"]["ok"], true, "{done}");
    let base = demo_dir(&s).join("base.qcow2");
    assert!(reads_pattern(&base, demo::GUEST_PATTERN, "16M", "12M"));
    assert_eq!(changed(&demo_dir(&s).join("demo-guest.qcow2")), 0);
    plasma_wait_notification(&s, "demo-guest: changes committed");
    std::thread::sleep(Duration::from_millis(500));
    s.screenshot("plasma-wayland-notification.png");
    eprintln!("plasma wayland: {:?}", t0.elapsed());
}
