//! History in the desktop app, on X11 (Xvfb) with a real notification server (dunst) and the
//! real test-bed guest: after a commit the notification offers Undo, and dunst's own menu
//! invokes it (the guest's marker leaves the base); the status window then offers Undo again
//! (which redoes) and History…, whose window lists the revisions and pins, labels and rolls
//! back through the application's actions. What the images hold is checked after each step,
//! and the history window is screenshotted to target/test-artifacts/.

mod common;

use std::time::Duration;

use common::desktop::{is, start_app, Hook, Kind, Session};
use common::guest::{read_image, Behaviour, TestVm};
use common::images::changed;
use common::testbed_shared;
use serde_json::Value;

const MARK: &[u8] = b"UNDO-ME-MARK";
const AT: u64 = 5 << 20;

/// The app's own view of the VM's revisions: `vmoverlay history --json` in the session (the
/// same state directory).
fn cli_history(s: &Session, uri: &str, vm: &str) -> Vec<Value> {
    let out =
        common::run_ok(
            s.command(common::bin())
                .args(["history", vm, "--json", "--connect", uri]),
        );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The newest `history-shown` event about `vm` after `n` earlier ones.
fn shown(hook: &Hook, vm: &str, n: usize) -> Value {
    hook.wait_count("the history window", Duration::from_secs(30), n, |v| {
        is(v, "history-shown", vm)
    });
    hook.events()
        .into_iter()
        .filter(|v| is(v, "history-shown", vm))
        .nth(n - 1)
        .unwrap()["extra"]
        .clone()
}

fn history_done(hook: &Hook, vm: &str, n: usize) -> Value {
    hook.wait_count("the undo or rollback", Duration::from_secs(60), n, |v| {
        is(v, "history-done", vm)
    });
    let done = hook
        .events()
        .into_iter()
        .filter(|v| is(v, "history-done", vm))
        .nth(n - 1)
        .unwrap();
    assert_eq!(done["extra"]["ok"], true, "{done}");
    done["extra"].clone()
}

#[test]
fn x11_undo_from_the_notification_and_the_history_window_acts() {
    let bed = testbed_shared();
    let s = Session::start(Kind::X11);
    let bus = s.monitor_notifications();
    let vm = TestVm::define(
        &bed.uri,
        "vmo-app-undo",
        &Behaviour {
            marker: Some(String::from_utf8(MARK.to_vec()).unwrap()),
            offset: AT,
            hold_secs: 0,
        },
    );
    let target = format!("('{}', '{}')", bed.uri, vm.name);
    let (_app, hook) = start_app(&s, &["--connect", &bed.uri]);
    hook.wait("tray-ready", Duration::from_secs(30), |v| {
        v["event"] == "tray-ready"
    });

    // The guest writes its marker and powers off; the prompt's answer is Commit (the action
    // its button activates).
    vm.start();
    hook.wait("the prompt", Duration::from_secs(90), |v| {
        is(v, "prompt-mapped", &vm.name)
    });
    s.activate_action("commit", Some(&target));
    let done = hook.wait("the commit", Duration::from_secs(60), |v| {
        is(v, "job-done", &vm.name)
    });
    assert_eq!(done["extra"]["ok"], true, "{done}");
    assert_eq!(done["extra"]["undo"], true, "{done}");
    assert_eq!(read_image(&vm.base, AT, MARK.len()), MARK);

    // The result's notification carries Undo for this VM; dunst's menu invokes it.
    let n = bus.wait_notify(
        "the commit's notification",
        "vmo-app-undo: changes committed",
    );
    let actions = common::desktop::notify_actions(&n);
    let i = actions
        .iter()
        .position(|a| a.starts_with("app.undo") && a.contains("vmo-app-undo"))
        .unwrap_or_else(|| panic!("no Undo button for the VM: {actions:?}"));
    assert_eq!(actions[i + 1], "Undo", "{actions:?}");
    s.notification_action("Undo", "vmo-app-undo");
    let undone = history_done(&hook, &vm.name, 1);
    assert_eq!(undone["action"], "undo", "{undone}");
    assert_ne!(
        read_image(&vm.base, AT, MARK.len()),
        MARK,
        "the commit is undone: the base is as before it"
    );
    assert_eq!(changed(&vm.overlay), 0);
    bus.wait_notify("the undo's notification", "vmo-app-undo: rolled back");
    let list = cli_history(&s, &bed.uri, &vm.name);
    let kinds: Vec<&str> = list.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["rollback", "commit"], "{list:?}");

    // The status window: the row offers Undo again (it would redo) and History….
    s.activate_action("show-status", None);
    hook.wait("the row with Undo", Duration::from_secs(30), |v| {
        is(v, "status-row", &vm.name)
            && v["extra"]["can_undo"] == true
            && v["extra"]["has_history"] == true
    });

    // History…: the window lists both revisions, newest first, and offers Undo.
    s.activate_action("history", Some(&target));
    let first = shown(&hook, &vm.name, 1);
    let ids: Vec<u64> = first["revisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{first}");
    assert_eq!(first["undo"], true, "{first}");
    let (left, commit_rev) = (ids[0], ids[1]);

    // Pin and label the commit's revision from the window's actions.
    s.activate_action(
        "pin",
        Some(&format!(
            "('{}', '{}', uint64 {commit_rev}, 'vda', true)",
            bed.uri, vm.name
        )),
    );
    let pinned = shown(&hook, &vm.name, 2);
    assert_eq!(pinned["revisions"][1]["pinned"], true, "{pinned}");
    s.activate_action(
        "set-label",
        Some(&format!(
            "('{}', '{}', uint64 {commit_rev}, 'vda', 'before the update')",
            bed.uri, vm.name
        )),
    );
    let labelled = shown(&hook, &vm.name, 3);
    assert_eq!(labelled["revisions"][1]["label"], "before the update");
    let list = cli_history(&s, &bed.uri, &vm.name);
    assert_eq!(list[1]["pinned"], true, "{list:?}");
    assert_eq!(list[1]["label"], "before the update", "{list:?}");
    std::thread::sleep(Duration::from_millis(800));
    s.screenshot("history-window.png");

    // Roll back to the state the undo left (the commit's result): the marker is back.
    s.activate_action(
        "rollback-now",
        Some(&format!(
            "('{}', '{}', uint64 {left}, 'vda')",
            bed.uri, vm.name
        )),
    );
    let rolled = history_done(&hook, &vm.name, 2);
    assert_eq!(rolled["action"], "rollback", "{rolled}");
    assert_eq!(read_image(&vm.base, AT, MARK.len()), MARK);
    assert_eq!(changed(&vm.overlay), 0);
    let after = shown(&hook, &vm.name, 4);
    assert_eq!(
        after["revisions"].as_array().unwrap().len(),
        3,
        "the state the rollback left is a revision too: {after}"
    );
    assert_eq!(after["revisions"][0]["kind"], "rollback", "{after}");

    // Once the guest has run and written again, Undo is no longer offered anywhere.
    vm.start();
    hook.wait_count("the second prompt", Duration::from_secs(90), 2, |v| {
        is(v, "prompt-mapped", &vm.name)
    });
    let row = hook
        .events()
        .into_iter()
        .rev()
        .find(|v| is(v, "status-row", &vm.name))
        .unwrap();
    assert_eq!(row["extra"]["can_undo"], false, "{row}");
    let out = s
        .command(common::bin())
        .args(["undo", &vm.name, "--yes", "--connect", &bed.uri])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing to undo"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
