//! The app on a real KDE Plasma 5.27 (kwin + plasmashell, software-rendered), as an
//! unprivileged user, on X11 (Xvfb) and on Wayland (a virtual kwin_wayland). kded5 is the
//! StatusNotifierWatcher, Plasma's system tray the host, plasmashell the notification server.
//! What Plasma draws is read through AT-SPI; screenshots come from KWin's ScreenShot2 and go to
//! target/test-artifacts/.

mod common;

use std::time::{Duration, Instant};

use common::desktop::{
    demo_dir, find_item, is, labels, our_item, start_app, wait_for, Hook, Kind, Session,
};
use common::images::{changed, checksum, reads_pattern};
use common::shells::{
    atspi_act, atspi_find, atspi_wait, plasma_input, plasma_wait_notification, MenuEvents, Rect,
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

/// Right-clicks our icon: Plasma opens the item's dbusmenu as its own menu (and says so to
/// the item).
fn open_context_menu(s: &Session, icon: Rect, events: &MenuEvents) {
    let before = events.opened(0);
    let (x, y) = icon.centre();
    let (x, y) = (format!("{x}"), format!("{y}"));
    plasma_input(s, &["move", &x, &y, "sleep", "200", "click", "right"]);
    events.wait_opened(0, before + 1, "Plasma to open our menu");
    std::thread::sleep(Duration::from_millis(500));
}

fn key(s: &Session, k: &str) {
    plasma_input(s, &["key", k, "sleep", "300"]);
}

/// Moves the pointer off the panel so that no tooltip covers what a screenshot shows.
fn pointer_away(s: &Session) {
    plasma_input(s, &["move", "640", "100"]);
}

/// In our context menu, by keyboard: the first VM's submenu (the first entry), then its second
/// entry, "Discard now". The screenshot shows the menu open. Checks that Plasma told the item
/// "Discard now" was clicked: keys that miss the menu would reach whatever has the focus.
fn discard_from_the_menu(s: &Session, icon: Rect, events: &MenuEvents, item: &str, shot: &str) {
    let layout = s.menu(item);
    let vm_label = "demo-guest — shut off, 12.0 MiB changed, decision pending";
    let vm = find_item(&layout, "", vm_label)
        .unwrap_or_else(|| panic!("the VM's entry: {:?}", labels(&layout)));
    let discard = find_item(&layout, vm_label, "Discard now")
        .unwrap_or_else(|| panic!("the VM's Discard now: {:?}", labels(&layout)));
    // Plasma fills a dbusmenu submenu when first shown, so it is shown twice. On X11 the
    // first one opens empty: leave it and enter it again. On Wayland it is placed for its
    // empty size and grows off the screen, and leaving it closes the whole menu: open the
    // menu again (Plasma keeps the submenu's items).
    // Keys sent before Plasma has laid the menu out are lost: close it and try again.
    let opened = events.opened(vm);
    let mut tries = 0;
    loop {
        open_context_menu(s, icon, events);
        key(s, "down");
        key(s, "right");
        let deadline = Instant::now() + Duration::from_secs(10);
        while events.opened(vm) <= opened && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        tries += 1;
        if events.opened(vm) > opened || tries == 3 {
            break;
        }
        key(s, "escape");
        key(s, "escape");
        std::thread::sleep(Duration::from_millis(500));
    }
    events.wait_opened(vm, opened + 1, "Plasma to open the VM's submenu");
    std::thread::sleep(Duration::from_millis(500));
    match s.kind {
        Kind::PlasmaWayland => {
            key(s, "escape");
            open_context_menu(s, icon, events);
            key(s, "down");
            key(s, "right");
        }
        _ => {
            key(s, "left");
            key(s, "right");
        }
    }
    events.wait_opened(vm, opened + 2, "Plasma to open the VM's submenu again");
    // Opened by keyboard, the submenu has its first entry selected; the next is "Discard now".
    // (The pointer stays: leaving the menu would clear the selection.)
    key(s, "down");
    std::thread::sleep(Duration::from_millis(500));
    s.screenshot(shot);
    let clicked = events.clicked(discard);
    key(s, "return");
    wait_for(
        "Plasma to click Discard now",
        Duration::from_secs(10),
        || events.clicked(discard) > clicked,
    );
}

/// In our context menu, by keyboard: top-level entry `n` (1 = the first VM; separators are
/// skipped).
fn choose_from_the_menu(s: &Session, icon: Rect, events: &MenuEvents, n: usize) {
    open_context_menu(s, icon, events);
    for _ in 0..n {
        key(s, "down");
    }
    key(s, "return");
}

/// The discard the menu asked for happened, left the base alone, and Plasma said so.
fn discarded(s: &Session, hook: &Hook, base_before: u64) {
    let done = hook.wait("the discard", Duration::from_secs(30), |v| {
        is(v, "job-done", demo::DOMAIN) && v["extra"]["op"] == "discard"
    });
    assert_eq!(done["extra"]["ok"], true, "{done}");
    assert_eq!(
        checksum(&demo_dir(s).join("base.qcow2")),
        base_before,
        "the base is byte-identical"
    );
    assert_eq!(changed(&demo_dir(s).join("demo-guest.qcow2")), 0);
    hook.wait("the prompt to go away", Duration::from_secs(10), |v| {
        is(v, "prompt-closed", demo::DOMAIN)
    });
    plasma_wait_notification(s, "demo-guest: changes discarded");
}

#[test]
fn plasma_x11_context_menu_acts_and_plasma_notifies() {
    let t0 = Instant::now();
    let s = Session::start(Kind::PlasmaX11);
    let events = MenuEvents::watch(&s);
    let (_app, hook) = start_app(&s, &["--demo"]);
    let icon = registered_and_drawn(&s, &hook);
    let item = our_item(&s);

    // The demo guest shuts itself down; in Plasma's menu, "Discard now".
    hook.wait("the prompt", Duration::from_secs(40), |v| {
        is(v, "prompt-mapped", demo::DOMAIN)
    });
    let base_before = checksum(&demo_dir(&s).join("base.qcow2"));
    discard_from_the_menu(&s, icon, &events, &item, "plasma-x11-tray-menu.png");
    discarded(&s, &hook, base_before);
    pointer_away(&s);
    std::thread::sleep(Duration::from_millis(500));
    s.screenshot("plasma-x11-notification.png");

    // "Show status" (the third entry: the VM, then after a separator "Start the demo
    // guest", "Show status") opens the status window.
    choose_from_the_menu(&s, icon, &events, 3);
    hook.wait("the status window", Duration::from_secs(20), |v| {
        is(v, "status-row-added", demo::DOMAIN)
    });
    atspi_wait(&s, "vmoverlay", "frame", "VM Overlay");
    eprintln!("plasma x11: {:?}", t0.elapsed());
}

#[test]
fn plasma_wayland_context_menu_and_prompt_act_and_plasma_notifies() {
    let t0 = Instant::now();
    let s = Session::start(Kind::PlasmaWayland);
    let events = MenuEvents::watch(&s);
    let (_app, hook) = start_app(&s, &["--demo"]);
    let icon = registered_and_drawn(&s, &hook);
    let item = our_item(&s);
    let base = demo_dir(&s).join("base.qcow2");

    // A real left click on the icon (KWin's fake input) activates it: the status window.
    let (x, y) = icon.centre();
    plasma_input(
        &s,
        &[
            "move",
            &format!("{x}"),
            &format!("{y}"),
            "sleep",
            "200",
            "click",
            "left",
        ],
    );
    hook.wait("the status window", Duration::from_secs(20), |v| {
        is(v, "status-row-added", demo::DOMAIN)
    });
    atspi_wait(&s, "vmoverlay", "frame", "VM Overlay");

    // The demo guest shuts itself down: the prompt. A right click and the keyboard in
    // Plasma's menu: "Discard now".
    hook.wait("the prompt", Duration::from_secs(40), |v| {
        is(v, "prompt-mapped", demo::DOMAIN)
    });
    atspi_wait(&s, "vmoverlay", "dialog", "demo-guest has shut down");
    std::thread::sleep(Duration::from_millis(1000));
    s.screenshot("plasma-wayland-prompt.png");
    let base_before = checksum(&base);
    discard_from_the_menu(&s, icon, &events, &item, "plasma-wayland-tray-menu.png");
    discarded(&s, &hook, base_before);

    // "Start the demo guest" (the second entry), then "Shut down the demo guest" there.
    let has_entry = |label: &str| labels(&s.menu(&item)).iter().any(|l| l == label);
    choose_from_the_menu(&s, icon, &events, 2);
    wait_for("the demo guest to run", Duration::from_secs(20), || {
        has_entry("Shut down the demo guest")
    });
    choose_from_the_menu(&s, icon, &events, 2);
    hook.wait_count("the second prompt", Duration::from_secs(40), 2, |v| {
        is(v, "prompt-mapped", demo::DOMAIN)
    });
    atspi_wait(&s, "vmoverlay", "dialog", "demo-guest has shut down");

    // The prompt's Commit button, pressed through GTK's accessibility interface (GTK 4
    // reports window-relative extents, and Wayland tells no client where a window is).
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
        is(v, "job-done", demo::DOMAIN) && v["extra"]["op"] == "commit"
    });
    assert_eq!(done["extra"]["ok"], true, "{done}");
    // The second session's write reached the base; the first one's was discarded.
    let (at, len) = demo::LATER_WRITE;
    assert!(reads_pattern(
        &base,
        demo::GUEST_PATTERN,
        &format!("{at}M"),
        &format!("{len}M")
    ));
    let (at, len) = demo::FIRST_WRITE;
    assert!(!reads_pattern(
        &base,
        demo::GUEST_PATTERN,
        &format!("{at}M"),
        &format!("{len}M")
    ));
    assert_eq!(changed(&demo_dir(&s).join("demo-guest.qcow2")), 0);
    plasma_wait_notification(&s, "demo-guest: changes committed");
    pointer_away(&s);
    std::thread::sleep(Duration::from_millis(500));
    s.screenshot("plasma-wayland-notification.png");
    eprintln!("plasma wayland: {:?}", t0.elapsed());
}
