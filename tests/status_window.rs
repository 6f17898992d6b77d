//! The status window on a real X11 display (Xvfb + openbox, from common::desktop): rows are
//! added for new VMs, changed in place on every update (the same row widget, keyboard focus
//! kept), removed when their VM is gone; the buttons follow `can_act` even while the
//! application's actions are enabled, follow the action when it is disabled, and activate
//! `app.commit` / `app.discard` with the VM as target. The test hook sees all of it.
//!
//! The window is driven by a small GTK program: this test binary itself, re-run inside the
//! session with `VMOVERLAY_STATUS_WINDOW_CHILD` set (the binary has its own `main`: cargo's
//! harness would list that program as a test of its own). Nothing here skips: without Xvfb,
//! openbox, dunst or a session bus the test fails and says which part is missing.

mod common;

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::time::{Duration, Instant};

use adw::prelude::*;
use gtk::{gio, glib};
use serde_json::Value;

use common::desktop::{Hook, Kind, Session};
use vmoverlay::machine::VmKey;
use vmoverlay::ui::status::{Row, StatusWindow};

/// Set in the environment of the re-run binary: run the GTK program.
const CHILD: &str = "VMOVERLAY_STATUS_WINDOW_CHILD";
/// What the GTK program prints once its scenario passed.
const CHILD_DONE: &str = "status window program: ok";

fn main() {
    if std::env::var_os(CHILD).is_some() {
        gtk_program();
        println!("{CHILD_DONE}");
        return;
    }
    let name = "status_window_updates_rows_in_place_on_x11";
    match std::panic::catch_unwind(status_window_updates_rows_in_place_on_x11) {
        Ok(()) => println!("test {name} ... ok\n\ntest result: ok. 1 passed; 0 failed"),
        Err(_) => {
            println!("test {name} ... FAILED\n\ntest result: FAILED. 0 passed; 1 failed");
            std::process::exit(101);
        }
    }
}

fn status_window_updates_rows_in_place_on_x11() {
    let s = Session::start(Kind::X11NoTray);
    let hook = Hook(s.home.join("hook.jsonl"));
    let exe = std::env::current_exe().unwrap();
    let out = s
        .command(exe.to_str().unwrap())
        .env(CHILD, "1")
        .env("VMOVERLAY_TEST_HOOK", &hook.0)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the GTK program failed:\n{log}");
    assert!(
        log.contains(CHILD_DONE),
        "the GTK program did not run:\n{log}"
    );
    // GTK found every template child and every property of the .ui files.
    assert!(
        !log.contains("Gtk-CRITICAL") && !log.contains("Gtk-WARNING"),
        "GTK complained:\n{log}"
    );
    assert!(
        !log.contains("Adwaita-CRITICAL") && !log.contains("Adwaita-WARNING"),
        "libadwaita complained:\n{log}"
    );
    // Each VM's row was created once, whatever the number of updates (alpha twice: it went
    // and came back).
    let added = |vm: &str| hook.count(|v| v["event"] == "status-row-added" && v["vm"] == vm);
    assert_eq!(added(ALPHA), 2, "{:#?}", hook.events());
    assert_eq!(added("bravo"), 1);
    assert_eq!(added("charlie"), 1);
}

const URI: &str = "test:///default";
/// Markup characters: the row shows names and reasons as plain text.
const ALPHA: &str = "alpha & <beta>";

fn row(name: &str, subtitle: &str, can_act: bool) -> Row {
    Row {
        key: VmKey::new(URI, name),
        subtitle: subtitle.into(),
        progress: None,
        can_act,
        can_discard: can_act,
        can_adopt: false,
        can_release: false,
        can_undo: false,
        has_history: false,
        last: None,
        blocked: None,
    }
}

/// Every widget below `w` (itself included) of type `T`.
fn descendants<T: IsA<gtk::Widget>>(w: &impl IsA<gtk::Widget>) -> Vec<T> {
    let mut out = Vec::new();
    let mut stack = vec![w.clone().upcast::<gtk::Widget>()];
    while let Some(w) = stack.pop() {
        if let Ok(t) = w.clone().downcast::<T>() {
            out.push(t);
        }
        let mut child = w.first_child();
        while let Some(c) = child {
            child = c.next_sibling();
            stack.push(c);
        }
    }
    out
}

/// A row's button with this css class.
fn button(row: &gtk::ListBoxRow, class: &str) -> gtk::Button {
    let found: Vec<gtk::Button> = descendants::<gtk::Button>(row)
        .into_iter()
        .filter(|b| b.has_css_class(class))
        .collect();
    assert_eq!(found.len(), 1, "one {class} button in the row");
    found[0].clone()
}

fn rows(list: &gtk::ListBox) -> Vec<gtk::ListBoxRow> {
    (0..)
        .map_while(|i| list.row_at_index(i))
        .collect::<Vec<_>>()
}

/// Runs the main loop until nothing is pending.
fn spin() {
    let ctx = glib::MainContext::default();
    for _ in 0..3 {
        while ctx.iteration(false) {}
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spin_until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        spin();
    }
}

/// The `status-row` events of one VM, in order.
fn row_events(hook: &Hook, vm: &str) -> Vec<Value> {
    hook.events()
        .into_iter()
        .filter(|v| v["event"] == "status-row" && v["vm"] == vm)
        .map(|v| v["extra"].clone())
        .collect()
}

/// The GTK program, run inside the session by the test.
fn gtk_program() {
    let hook = Hook(std::env::var_os("VMOVERLAY_TEST_HOOK").unwrap().into());
    gtk::init().expect("a display (DISPLAY is set by the session)");
    adw::init().unwrap();
    let app = adw::Application::builder()
        .application_id("io.github.vmoverlay.VMOverlay.StatusWindowTest")
        .flags(gio::ApplicationFlags::NON_UNIQUE)
        .build();
    let outcome: Rc<RefCell<Option<std::thread::Result<()>>>> = Rc::default();
    let o = outcome.clone();
    app.connect_activate(move |app| {
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| scenario(app, &hook)));
        *o.borrow_mut() = Some(r);
        app.quit();
    });
    app.run_with_args(&["status-window-test"]);
    let outcome = outcome.borrow_mut().take();
    match outcome {
        Some(Ok(())) => {}
        Some(Err(panic)) => std::panic::resume_unwind(panic),
        None => panic!("the application never activated"),
    }
}

fn scenario(app: &adw::Application, hook: &Hook) {
    // The application's per-VM actions, as the app installs them: always enabled here.
    let activated: Rc<RefCell<Vec<(String, VmKey)>>> = Rc::default();
    for name in ["commit", "discard"] {
        let action = gio::SimpleAction::new(name, Some(glib::VariantTy::new("(ss)").unwrap()));
        let a = activated.clone();
        action.connect_activate(move |action, target| {
            let key = target.and_then(VmKey::from_target).expect("a (ss) target");
            a.borrow_mut().push((action.name().to_string(), key));
        });
        app.add_action(&action);
    }
    vmoverlay::ui::register_resources();
    vmoverlay::ui::register_resources(); // idempotent
    let win = StatusWindow::new(app);
    assert_eq!(win.title().as_deref(), Some("VM Overlay"));
    assert!(win.hides_on_close());
    assert_eq!(win.default_size(), (760, 420));
    win.present();
    spin_until("the window to be mapped", || win.is_mapped());
    let list = descendants::<gtk::ListBox>(&win)
        .pop()
        .expect("the window has a list");
    assert!(list.has_css_class("boxed-list"));
    assert_eq!(list.selection_mode(), gtk::SelectionMode::None);

    // Empty: the placeholder says so.
    win.update(&[]);
    spin();
    assert!(rows(&list).is_empty());
    let placeholder_shown = || {
        descendants::<gtk::Label>(&list)
            .iter()
            .any(|l| l.label() == "No virtual machines" && l.is_mapped())
    };
    assert!(placeholder_shown(), "the placeholder is shown");

    // Three VMs: alpha can act, bravo is blocked, charlie can act. Given out of order: the
    // list keeps the VMs' order.
    let alpha = row(ALPHA, "shut off, 4 KiB changed", true);
    let mut bravo = row("bravo", "shut off, 8 KiB changed", false);
    bravo.blocked = Some("its <disk> is shared & in use".into());
    let charlie = row("charlie", "shut off, 1 MiB changed", true);
    win.update(&[charlie.clone(), alpha.clone(), bravo.clone()]);
    spin();
    assert!(!placeholder_shown());
    let shown = rows(&list);
    assert_eq!(shown.len(), 3);
    let titles: Vec<String> = shown
        .iter()
        .map(|r| {
            r.clone()
                .downcast::<adw::ActionRow>()
                .unwrap()
                .title()
                .into()
        })
        .collect();
    assert_eq!(titles, [ALPHA, "bravo", "charlie"]);
    let (ra, rb, rc) = (shown[0].clone(), shown[1].clone(), shown[2].clone());
    for r in [&ra, &rc] {
        assert!(
            button(r, "suggested-action").is_sensitive(),
            "Commit offered"
        );
        assert!(
            button(r, "destructive-action").is_sensitive(),
            "Discard offered"
        );
        assert_eq!(
            button(r, "suggested-action").label().as_deref(),
            Some("Commit")
        );
        assert_eq!(
            button(r, "destructive-action").label().as_deref(),
            Some("Discard")
        );
    }
    // Blocked: even with the application's actions enabled, nothing is offered, and the row
    // says why, as plain text (the reason has markup characters).
    assert!(!button(&rb, "suggested-action").is_sensitive());
    assert!(!button(&rb, "destructive-action").is_sensitive());
    let reason = "Not offered: its <disk> is shared & in use";
    assert!(
        descendants::<gtk::Label>(&rb)
            .iter()
            .any(|l| l.text().contains(reason)),
        "the blocked row shows its reason"
    );
    assert!(
        descendants::<gtk::Label>(&ra)
            .iter()
            .any(|l| l.text() == ALPHA),
        "the name is plain text"
    );
    let b = row_events(hook, "bravo");
    assert_eq!(b.len(), 1);
    assert_eq!(b[0]["can_act"], false);
    assert_eq!(b[0]["blocked"], "its <disk> is shared & in use");
    assert!(b[0]["subtitle"].as_str().unwrap().contains(reason));

    // An unchanged update changes nothing and says nothing.
    let before = hook.events().len();
    win.update(&[alpha.clone(), bravo.clone(), charlie.clone()]);
    spin();
    assert_eq!(
        hook.events().len(),
        before,
        "no event for an unchanged update"
    );

    // A commit of alpha ticks while the keyboard is on charlie's Commit button: the rows
    // stay the same widgets and the focus stays where it is.
    let focus = button(&rc, "suggested-action");
    focus.grab_focus();
    spin();
    assert_eq!(
        gtk::prelude::GtkWindowExt::focus(&win).as_ref(),
        Some(focus.upcast_ref::<gtk::Widget>())
    );
    let bar = || {
        descendants::<gtk::ProgressBar>(&ra)
            .pop()
            .expect("the row has a progress bar")
    };
    assert!(!bar().is_visible(), "no progress bar without a job");
    for pct in [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100] {
        let mut a = alpha.clone();
        a.subtitle = format!("committing {pct}%, 4 KiB changed");
        a.progress = Some(f64::from(pct) / 100.0);
        a.can_act = false;
        win.update(&[a, bravo.clone(), charlie.clone()]);
        spin();
        assert_eq!(
            rows(&list),
            [ra.clone(), rb.clone(), rc.clone()],
            "rows kept"
        );
        assert_eq!(
            gtk::prelude::GtkWindowExt::focus(&win).as_ref(),
            Some(focus.upcast_ref::<gtk::Widget>()),
            "focus kept at {pct}%"
        );
        assert!(bar().is_visible());
        assert!((bar().fraction() - f64::from(pct) / 100.0).abs() < 1e-9);
        assert!(!button(&ra, "suggested-action").is_sensitive());
    }
    let ticks = row_events(hook, ALPHA);
    assert_eq!(ticks.len(), 1 + 11, "one event per change: {ticks:#?}");
    assert_eq!(ticks.last().unwrap()["progress"], 1.0);
    assert_eq!(ticks.last().unwrap()["can_act"], false);

    // Done: the progress bar goes, the last result shows, the buttons come back (the action
    // name is restored and the action helper makes them sensitive again).
    let mut done = row(ALPHA, "shut off, 4 KiB changed", true);
    done.last = Some("commit 4 KiB".into());
    win.update(&[done.clone(), bravo.clone(), charlie.clone()]);
    spin();
    assert!(!bar().is_visible());
    assert!(button(&ra, "suggested-action").is_sensitive());
    assert!(button(&ra, "destructive-action").is_sensitive());
    assert!(row_events(hook, ALPHA).last().unwrap()["subtitle"]
        .as_str()
        .unwrap()
        .contains("Last: commit 4 KiB"));

    // A disabled application action still wins over can_act.
    let commit = app
        .lookup_action("commit")
        .and_downcast::<gio::SimpleAction>()
        .unwrap();
    commit.set_enabled(false);
    spin();
    assert!(!button(&ra, "suggested-action").is_sensitive());
    assert!(button(&ra, "destructive-action").is_sensitive());
    commit.set_enabled(true);
    spin();
    assert!(button(&ra, "suggested-action").is_sensitive());

    // The buttons activate the application's actions with the VM as target.
    button(&ra, "suggested-action").emit_clicked();
    button(&rc, "destructive-action").emit_clicked();
    // An insensitive button does nothing.
    button(&rb, "suggested-action").emit_clicked();
    spin();
    assert_eq!(
        *activated.borrow(),
        [
            ("commit".to_string(), VmKey::new(URI, ALPHA)),
            ("discard".to_string(), VmKey::new(URI, "charlie")),
        ]
    );

    // Unblocked: bravo's buttons come back.
    let mut free = bravo.clone();
    free.blocked = None;
    free.can_act = true;
    win.update(&[done.clone(), free, charlie.clone()]);
    spin();
    assert!(button(&rb, "suggested-action").is_sensitive());

    // alpha is gone: its row goes, the others stay the same widgets.
    win.update(&[bravo.clone(), charlie.clone()]);
    spin();
    assert_eq!(rows(&list), [rb.clone(), rc.clone()]);
    assert!(
        !button(&rb, "suggested-action").is_sensitive(),
        "blocked again"
    );
    assert_eq!(
        hook.count(|v| v["event"] == "status-row-removed" && v["vm"] == ALPHA),
        1
    );
    // It comes back: a new row, in its place.
    win.update(&[bravo.clone(), alpha.clone(), charlie.clone()]);
    spin();
    let again = rows(&list);
    assert_eq!(again.len(), 3);
    assert_ne!(again[0], ra);
    assert_eq!(&again[1..], [rb.clone(), rc.clone()]);

    // Everything gone: the placeholder again.
    win.update(&[]);
    spin();
    assert!(rows(&list).is_empty());
    assert!(placeholder_shown());
    // Closing hides the window, which can be presented again.
    win.close();
    spin();
    assert!(!win.is_visible());
    win.present();
    spin_until("the window to come back", || win.is_mapped());
    win.close();
}
