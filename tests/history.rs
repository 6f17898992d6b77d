//! History with real images and the real test-bed libvirtd: every commit and discard can be
//! undone (`history`, `rollback`, `pin`, `unpin`, `keep`). Data is written and checked with
//! qemu-io patterns (and the real guest's marker); the base's internal snapshots, `qemu-img
//! check` and the file's allocation are read back; interruptions are real SIGKILLs.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::guest::{qemu_img, read_image, Behaviour};
use common::images::{
    changed, checksum, create_base, create_overlay, info, qemu_io, reads_pattern,
};
use common::vm_state::*;
use common::{testbed_shared, virsh};
use serde_json::Value;

fn state_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn ok(state: &Path, uri: &str, args: &[&str]) -> Ran {
    let mut full = args.to_vec();
    full.extend(["--connect", uri]);
    let ran = vmoverlay(state, &full);
    assert_eq!(ran.code, 0, "vmoverlay {args:?}: {ran:?}");
    ran
}

fn history(state: &Path, uri: &str, vm: &str) -> Vec<Value> {
    let ran = ok(state, uri, &["history", vm, "--json"]);
    let v: Value = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("history --json printed {:?}: {e}", ran.stdout));
    let list = v
        .as_array()
        .expect("history --json prints one array")
        .clone();
    for r in &list {
        for key in ["id", "time", "kind", "label", "pinned", "bytes"] {
            assert!(r.get(key).is_some(), "no {key:?} in {r}");
        }
        humantime::parse_rfc3339(r["time"].as_str().unwrap()).expect("time is RFC 3339");
        assert!(
            ["commit", "discard", "rollback", "adopt"].contains(&r["kind"].as_str().unwrap()),
            "{r}"
        );
    }
    list
}

fn ids(list: &[Value]) -> Vec<u64> {
    list.iter().map(|r| r["id"].as_u64().unwrap()).collect()
}

fn kinds(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .collect()
}

fn base_snapshots(base: &Path) -> Vec<String> {
    info(base)["snapshots"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| s["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// `qemu-img check` of the base passes (snapshots and all).
fn check_base(base: &Path) {
    let out = std::process::Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(base)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "qemu-img check {}: {}{}",
        base.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The history holds one revision, a commit's, whose snapshot is the base's only one, and the
/// base passes `qemu-img check`.
fn assert_one_commit_revision(state: &Path, uri: &str, vm: &StateVm) {
    let list = history(state, uri, &vm.name);
    assert_eq!(kinds(&list), ["commit"], "{list:?}");
    assert_eq!(
        base_snapshots(&vm.base),
        [format!("vmoverlay-{}", ids(&list)[0])]
    );
    check_base(&vm.base);
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

fn journal_empty(state: &Path) -> bool {
    std::fs::read_dir(state.join("journal"))
        .map(|d| d.count() == 0)
        .unwrap_or(true)
}

/// Commit twice, roll back to the state the first commit made, roll forward again (to the
/// revision the rollback left): each time the base reads exactly that state's data, the
/// overlay is empty and `qemu-img check` passes with the revisions' snapshots in the base.
#[test]
fn commit_twice_roll_back_and_forward() {
    let bed = testbed_shared();
    let state = state_dir();
    let s = state.path();
    let vm = StateVm::shut_off(&bed.uri, "vmo-hist-commits");
    ok(s, &bed.uri, &["keep", &vm.name, "10"]);
    // The overlay holds 0x5a in its first MiB (StateVm).
    ok(s, &bed.uri, &["commit", &vm.name, "--yes"]);
    check_base(&vm.base);
    qemu_io(&vm.overlay, &["write -P 0x6b 0 1M", "write -P 0x6c 4M 1M"]);
    ok(s, &bed.uri, &["commit", &vm.name, "--yes"]);
    check_base(&vm.base);
    assert!(reads_pattern(&vm.base, 0x6b, "0", "1M"));

    let list = history(s, &bed.uri, &vm.name);
    assert_eq!(kinds(&list), ["commit", "commit"], "{list:?}");
    let (second, first) = (ids(&list)[0], ids(&list)[1]);
    assert!(second > first, "newest first: {list:?}");
    assert_eq!(base_snapshots(&vm.base).len(), 2);
    assert!(
        list[0]["bytes"].as_u64().is_some_and(|b| b >= 2 << 20),
        "{list:?}"
    );

    // Back to the state after the first commit (the revision the second commit took).
    let ran = ok(
        s,
        &bed.uri,
        &["rollback", &vm.name, &second.to_string(), "--yes"],
    );
    assert!(ran.stdout.contains("rolled back"), "{ran:?}");
    assert!(
        reads_pattern(&vm.base, 0x5a, "0", "1M"),
        "the first commit's data"
    );
    assert!(
        reads_pattern(&vm.base, 0x00, "4M", "1M"),
        "not the second's"
    );
    assert_eq!(changed(&vm.overlay), 0);
    check_base(&vm.base);
    let list = history(s, &bed.uri, &vm.name);
    assert_eq!(kinds(&list)[0], "rollback", "{list:?}");
    let left = ids(&list)[0];

    // And forward again: the rollback is undone by rolling back to what it left.
    ok(
        s,
        &bed.uri,
        &["rollback", &vm.name, &left.to_string(), "--yes"],
    );
    assert!(reads_pattern(&vm.base, 0x6b, "0", "1M"));
    assert!(reads_pattern(&vm.base, 0x6c, "4M", "1M"));
    assert_eq!(changed(&vm.overlay), 0);
    check_base(&vm.base);

    // Back before everything: the base is empty again (kept: 2 commits + 2 rollbacks > 3).
    ok(
        s,
        &bed.uri,
        &["rollback", &vm.name, &first.to_string(), "--yes"],
    );
    assert!(reads_pattern(&vm.base, 0x00, "0", "16M"));
    assert!(reads_pattern(&vm.overlay, 0x00, "0", "16M"));
    assert!(journal_empty(s));
    // The guest still boots on the rolled-back disk.
    vm.boot_to_power_off();
}

/// The real guest writes its marker; each session is committed; rolling back to the revision
/// the second commit took brings back the first session's marker, and the guest boots on it.
#[test]
fn the_guests_marker_follows_a_rollback() {
    let bed = testbed_shared();
    let state = state_dir();
    let s = state.path();
    let behaviour = |m: &str| Behaviour {
        marker: Some(m.into()),
        offset: 2 << 20,
        hold_secs: 0,
    };
    let vm = StateVm::define(&bed.uri, "vmo-hist-marker", &behaviour("FIRST-SESSION"));
    vm.boot_to_power_off();
    ok(s, &bed.uri, &["commit", &vm.name, "--yes"]);
    vm.edit_xml(|xml| xml.replace("vmo.marker=FIRST-SESSION", "vmo.marker=SECOND-SESSION"));
    vm.boot_to_power_off();
    assert_eq!(read_image(&vm.overlay, 2 << 20, 14), b"SECOND-SESSION");
    ok(s, &bed.uri, &["commit", &vm.name, "--yes"]);
    assert_eq!(read_image(&vm.base, 2 << 20, 14), b"SECOND-SESSION");
    let list = history(s, &bed.uri, &vm.name);
    ok(
        s,
        &bed.uri,
        &["rollback", &vm.name, &ids(&list)[0].to_string(), "--yes"],
    );
    assert_eq!(read_image(&vm.overlay, 2 << 20, 13), b"FIRST-SESSION");
    check_base(&vm.base);
}

/// A discard is undone: the discarded overlay comes back whole; the state left (the empty
/// overlay, or what was written since) becomes a revision. Once the base has changed, the
/// discarded overlay is refused (exit 18) until the base is rolled back to where it was.
#[test]
fn a_discard_is_undone() {
    let bed = testbed_shared();
    let state = state_dir();
    let s = state.path();
    let vm = StateVm::shut_off(&bed.uri, "vmo-hist-discard");
    ok(s, &bed.uri, &["commit", &vm.name, "--yes"]);
    qemu_io(&vm.overlay, &["write -P 0x77 2M 3M"]);
    let overlay_before = checksum(&vm.overlay);
    ok(s, &bed.uri, &["discard", &vm.name, "--yes"]);
    assert_eq!(changed(&vm.overlay), 0);
    let list = history(s, &bed.uri, &vm.name);
    assert_eq!(kinds(&list), ["discard", "commit"], "{list:?}");
    assert!(list[0]["bytes"].as_u64().unwrap() >= 3 << 20, "{list:?}");
    let discarded = ids(&list)[0];

    // Written since, then undone: the discarded changes are back, byte for byte.
    qemu_io(&vm.overlay, &["write -P 0x88 8M 1M"]);
    ok(
        s,
        &bed.uri,
        &["rollback", &vm.name, &discarded.to_string(), "--yes"],
    );
    assert_eq!(checksum(&vm.overlay), overlay_before);
    assert!(reads_pattern(&vm.overlay, 0x77, "2M", "3M"));
    assert!(reads_pattern(&vm.overlay, 0x5a, "0", "1M"));
    // What was written since is a revision too.
    let list = history(s, &bed.uri, &vm.name);
    assert_eq!(kinds(&list)[0], "rollback");
    let since = ids(&list)[0];
    ok(
        s,
        &bed.uri,
        &["rollback", &vm.name, &since.to_string(), "--yes"],
    );
    assert!(reads_pattern(&vm.overlay, 0x88, "8M", "1M"));
    assert!(reads_pattern(&vm.overlay, 0x00, "2M", "3M"));

    // A commit changes the base: the discarded overlay no longer goes with it.
    let commit_rev = {
        ok(s, &bed.uri, &["keep", &vm.name, "10"]);
        ok(s, &bed.uri, &["commit", &vm.name, "--yes"]);
        ids(&history(s, &bed.uri, &vm.name))[0]
    };
    let recapture = || capture(&bed.uri, &[&vm.name], &[vm.dir.path()]);
    let before = recapture();
    let ran = vmoverlay(
        s,
        &[
            "rollback",
            &vm.name,
            &discarded.to_string(),
            "--yes",
            "--connect",
            &bed.uri,
        ],
    );
    assert_eq!(ran.code, 18, "{ran:?}");
    assert!(ran.stderr.contains("Nothing was changed"), "{ran:?}");
    assert_unchanged("refused rollback", &before, &recapture());
    let list = history(s, &bed.uri, &vm.name);
    let stale = list.iter().find(|r| r["id"] == discarded).unwrap();
    assert_eq!(stale["restorable"], false, "{stale}");
    // Rolled back to before that commit, it goes with the base again.
    ok(
        s,
        &bed.uri,
        &["rollback", &vm.name, &commit_rev.to_string(), "--yes"],
    );
    ok(
        s,
        &bed.uri,
        &["rollback", &vm.name, &discarded.to_string(), "--yes"],
    );
    assert_eq!(checksum(&vm.overlay), overlay_before);
}

/// A UEFI VM's firmware variables follow its history: an undo and a rollback put back the
/// variables of the state they return to and record those of its base, so a later discard
/// puts back the right ones; expired revisions take their copies with them. (The variables
/// are written here as a session's firmware would write them.)
#[test]
fn firmware_variables_follow_an_undo_and_a_rollback() {
    let bed = testbed_shared();
    let state = state_dir();
    let s = state.path();
    let uri = bed.uri.as_str();
    let vm = StateVm::shut_off(uri, "vmo-hist-uefi");
    let name = vm.name.as_str();
    let nvram = vm.make_uefi();
    let session = |vars: &str| std::fs::write(&nvram, vars).unwrap();
    let vars = || std::fs::read_to_string(&nvram).unwrap();
    ok(s, uri, &["keep", name, "10"]);
    // Session 1 (the overlay holds 0x5a): committed, its variables recorded as the base's.
    session("vars 1");
    ok(s, uri, &["commit", name, "--yes"]);
    // Session 2, committed: its revision is the base before, with session 1's variables.
    qemu_io(&vm.overlay, &["write -P 0x6b 0 1M"]);
    session("vars 2");
    ok(s, uri, &["commit", name, "--yes"]);
    let before_second = ids(&history(s, uri, name))[0];
    // Session 3, discarded: the variables go back to the base's.
    qemu_io(&vm.overlay, &["write -P 0x6c 0 1M"]);
    session("vars 3");
    ok(s, uri, &["discard", name, "--yes"]);
    assert_eq!(vars(), "vars 2");

    // Undone: session 3's changes and its variables are back.
    ok(s, uri, &["undo", name, "--yes"]);
    assert!(reads_pattern(&vm.overlay, 0x6c, "0", "1M"));
    assert_eq!(vars(), "vars 3");
    // Back to before the second commit: that base's variables.
    ok(
        s,
        uri,
        &["rollback", name, &before_second.to_string(), "--yes"],
    );
    assert!(reads_pattern(&vm.base, 0x5a, "0", "1M"));
    assert_eq!(vars(), "vars 1");
    let left = history(s, uri, name);
    assert_eq!(kinds(&left)[0], "rollback", "{left:?}");
    let session_3 = ids(&left)[0];
    // A discard now puts back the variables of this base, not the newer ones.
    qemu_io(&vm.overlay, &["write -P 0x7d 0 1M"]);
    session("vars 4");
    ok(s, uri, &["discard", name, "--yes"]);
    assert_eq!(vars(), "vars 1");
    // Forward again, to the state the rollback left: session 3, undone.
    ok(s, uri, &["rollback", name, &session_3.to_string(), "--yes"]);
    assert!(reads_pattern(&vm.overlay, 0x6c, "0", "1M"));
    assert!(reads_pattern(&vm.base, 0x6b, "0", "1M"));
    assert_eq!(vars(), "vars 3");
    // Killed on its way, an undo (back to after the discard of session 4) is finished at the
    // next start, the variables included.
    killed_at(s, uri, "history-rollback-apply", &["undo", name, "--yes"]);
    assert_eq!(vars(), "vars 3", "not yet applied");
    ok(s, uri, &["status", name]);
    assert!(journal_empty(s));
    assert_eq!(changed(&vm.overlay), 0);
    assert_eq!(vars(), "vars 1");

    // Expiry removes the copies of the expired revisions' variables.
    let copies = || {
        std::fs::read_dir(s.join("history"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with("vars.fd"))
            .count()
    };
    assert!(copies() >= 8, "{} copies", copies());
    for e in std::fs::read_dir(s.join("history")).unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with("vars.fd") {
            let mode = e.metadata().unwrap().mode() & 0o777;
            assert_eq!(mode, 0o600, "{:?}: the firmware's secrets", e.path());
        }
    }
    ok(s, uri, &["keep", name, "1"]);
    let kept = history(s, uri, name);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(copies() <= 2, "{} copies left for one revision", copies());
}

/// `vmoverlay undo`: a discard is undone (its changes are back, byte for byte), undone again
/// (which redoes it), and a commit is undone; once the overlay is written to after the last
/// operation, or with history off, there is nothing to undo (exit 3) and nothing changes.
#[test]
fn undo_takes_back_the_last_operation_while_nothing_happened_since() {
    let bed = testbed_shared();
    let state = state_dir();
    let s = state.path();
    let vm = StateVm::shut_off(&bed.uri, "vmo-hist-undo");
    let overlay_before = checksum(&vm.overlay);
    ok(s, &bed.uri, &["discard", &vm.name, "--yes"]);
    assert_eq!(changed(&vm.overlay), 0);
    let ran = ok(s, &bed.uri, &["undo", &vm.name, "--yes"]);
    assert!(ran.stdout.contains("rolled back"), "{ran:?}");
    assert_eq!(
        checksum(&vm.overlay),
        overlay_before,
        "the discard is undone"
    );
    // Undoing the undo discards again.
    ok(s, &bed.uri, &["undo", &vm.name, "--yes"]);
    assert_eq!(changed(&vm.overlay), 0);
    ok(s, &bed.uri, &["undo", &vm.name, "--yes"]);
    assert!(reads_pattern(&vm.overlay, 0x5a, "0", "1M"));

    // A commit, undone: the base is as before it.
    ok(s, &bed.uri, &["commit", &vm.name, "--yes"]);
    assert!(reads_pattern(&vm.base, 0x5a, "0", "1M"));
    ok(s, &bed.uri, &["undo", &vm.name, "--yes"]);
    assert!(reads_pattern(&vm.base, 0x00, "0", "1M"));
    check_base(&vm.base);

    // Written since: Undo would throw that away, so there is nothing to undo.
    qemu_io(&vm.overlay, &["write -P 0x99 1M 1M"]);
    let refused = |why: &str| {
        let (overlay, base_before) = (checksum(&vm.overlay), checksum(&vm.base));
        let ran = vmoverlay(s, &["undo", &vm.name, "--yes", "--connect", &bed.uri]);
        assert_eq!(ran.code, 3, "{why}: {ran:?}");
        assert!(ran.stderr.contains("nothing to undo"), "{ran:?}");
        assert!(ran.stderr.contains("Nothing was changed"), "{ran:?}");
        assert_eq!(checksum(&vm.overlay), overlay, "{why}");
        assert_eq!(checksum(&vm.base), base_before, "{why}");
    };
    refused("written since");
    // History off: a discard keeps no revision.
    ok(s, &bed.uri, &["keep", &vm.name, "0"]);
    ok(s, &bed.uri, &["discard", &vm.name, "--yes"]);
    refused("history off");
}

/// Stopping being disposable ends the disk's history: refused while a revision is pinned
/// (exit 19, nothing changed); once unpinned, the release deletes every revision, so the image
/// the VM now uses directly keeps none of VM Overlay's snapshots, the kept overlays are gone,
/// and the VM can be made disposable again.
#[test]
fn release_ends_the_history_and_is_refused_while_a_revision_is_pinned() {
    let bed = testbed_shared();
    let state = state_dir();
    let s = state.path();
    let vm = StateVm::shut_off(&bed.uri, "vmo-hist-release");
    ok(s, &bed.uri, &["commit", &vm.name, "--yes"]);
    qemu_io(&vm.overlay, &["write -P 0x66 2M 1M"]);
    ok(s, &bed.uri, &["discard", &vm.name, "--yes"]);
    let list = history(s, &bed.uri, &vm.name);
    assert_eq!(kinds(&list), ["discard", "commit"], "{list:?}");
    let kept_dir = vm.overlay.parent().unwrap().join(".vmoverlay-history");
    assert!(kept_dir.read_dir().unwrap().count() > 0, "a kept overlay");
    let commit_rev = ids(&list)[1].to_string();
    ok(s, &bed.uri, &["pin", &vm.name, &commit_rev]);

    let recapture = || capture(&bed.uri, &[&vm.name], &[vm.dir.path()]);
    let before = recapture();
    let ran = vmoverlay(s, &["release", &vm.name, "--yes", "--connect", &bed.uri]);
    assert_eq!(ran.code, 19, "{ran:?}");
    assert!(ran.stderr.contains("pinned"), "{ran:?}");
    assert!(ran.stderr.contains("Nothing was changed"), "{ran:?}");
    assert_unchanged("refused release", &before, &recapture());

    ok(s, &bed.uri, &["unpin", &vm.name, &commit_rev]);
    ok(s, &bed.uri, &["release", &vm.name, "--yes"]);
    assert!(
        base_snapshots(&vm.base).is_empty(),
        "no revision left in the image"
    );
    check_base(&vm.base);
    assert!(!kept_dir.exists(), "the kept overlays are gone");
    assert!(reads_pattern(&vm.base, 0x5a, "0", "1M"), "the commit stays");
    assert!(journal_empty(s));
    // An image with internal snapshots could not be adopted: this one can.
    ok(s, &bed.uri, &["adopt", &vm.name, "--yes"]);
}

/// A VM's Undo takes back its last operation only: after a commit of both disks, then of one
/// (`--disk vda`), Undo rolls back vda's second commit and leaves vdb's commit alone.
#[test]
fn undo_takes_back_only_the_disks_of_the_last_operation() {
    let bed = testbed_shared();
    let state = state_dir();
    let s = state.path();
    let vm = StateVm::shut_off(&bed.uri, "vmo-hist-undo-disks");
    let (base_b, overlay_b) = (
        vm.dir.path().join("b.qcow2"),
        vm.dir.path().join("b.ov.qcow2"),
    );
    create_base(&base_b, "16M");
    create_overlay(&overlay_b, "b.qcow2");
    qemu_io(&overlay_b, &["write -P 0x21 0 1M"]);
    vm.edit_xml(|xml| {
        xml.replacen(
            "</disk>",
            &format!(
                "</disk>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      \
                 <source file='{}'/>\n      <target dev='vdb' bus='virtio'/>\n    </disk>",
                overlay_b.display()
            ),
            1,
        )
    });
    ok(s, &bed.uri, &["commit", &vm.name, "--yes"]);
    assert!(reads_pattern(&base_b, 0x21, "0", "1M"));
    qemu_io(&vm.overlay, &["write -P 0x22 2M 1M"]);
    ok(s, &bed.uri, &["commit", &vm.name, "--disk", "vda", "--yes"]);
    assert!(reads_pattern(&vm.base, 0x22, "2M", "1M"));

    let ran = ok(s, &bed.uri, &["undo", &vm.name, "--yes"]);
    assert!(ran.stdout.contains("vda"), "{ran:?}");
    assert!(
        !ran.stdout.contains("vdb"),
        "vdb was not part of it: {ran:?}"
    );
    assert!(
        reads_pattern(&vm.base, 0x00, "2M", "1M"),
        "vda's second commit undone"
    );
    assert!(
        reads_pattern(&vm.base, 0x5a, "0", "1M"),
        "vda's first commit stays"
    );
    assert!(
        reads_pattern(&base_b, 0x21, "0", "1M"),
        "vdb's commit stays"
    );
}

fn commit_n(s: &Path, uri: &str, vm: &StateVm, n: usize, pattern_base: u8) {
    for i in 0..n {
        qemu_io(
            &vm.overlay,
            &[&format!("write -P {:#x} 0 4M", pattern_base + i as u8)],
        );
        ok(s, uri, &["commit", &vm.name, "--yes"]);
    }
}

/// Retention: the newest N revisions are kept (default 3), pinned ones besides, whatever N
/// is; expiry deletes the snapshots and kept overlays and gives their space back (the base's
/// allocation shrinks; `qemu-img check` passes).
#[test]
fn retention_keeps_n_and_pins_and_reclaims_space() {
    let bed = testbed_shared();
    let state = state_dir();
    let s = state.path();
    let vm = StateVm::shut_off(&bed.uri, "vmo-hist-retention");
    commit_n(s, &bed.uri, &vm, 5, 0x10);
    let list = history(s, &bed.uri, &vm.name);
    assert_eq!(list.len(), 3, "default: the newest 3 are kept: {list:?}");
    assert_eq!(base_snapshots(&vm.base).len(), 3);
    let oldest = *ids(&list).last().unwrap();

    let ran = ok(
        s,
        &bed.uri,
        &[
            "pin",
            &vm.name,
            &oldest.to_string(),
            "--label",
            "known good",
        ],
    );
    assert!(ran.stdout.contains("pinned"), "{ran:?}");
    commit_n(s, &bed.uri, &vm, 4, 0x20);
    let list = history(s, &bed.uri, &vm.name);
    assert_eq!(list.len(), 4, "3 newest + the pinned one: {list:?}");
    let pinned = list
        .iter()
        .find(|r| r["id"] == oldest)
        .expect("the pin survived");
    assert_eq!(pinned["pinned"], true);
    assert_eq!(pinned["label"], "known good");
    assert_eq!(base_snapshots(&vm.base).len(), 4);
    let table = ok(s, &bed.uri, &["history", &vm.name]).stdout;
    assert!(
        table.contains("known good") && table.contains("revisions hold"),
        "{table}"
    );

    // N is honoured when lowered (expired at once: the VM is off), and the space comes back.
    let before = allocated(&vm.base);
    let ran = ok(s, &bed.uri, &["keep", &vm.name, "1"]);
    assert!(ran.stdout.contains("2 expired"), "{ran:?}");
    let list = history(s, &bed.uri, &vm.name);
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(base_snapshots(&vm.base).len(), 2);
    ok(s, &bed.uri, &["unpin", &vm.name, &oldest.to_string()]);
    ok(s, &bed.uri, &["keep", &vm.name, "0"]);
    assert!(history(s, &bed.uri, &vm.name).is_empty());
    assert!(base_snapshots(&vm.base).is_empty());
    check_base(&vm.base);
    let after = allocated(&vm.base);
    assert!(
        after + (8 << 20) <= before,
        "expiring 4 revisions of 4 MiB each gave back only {} bytes ({before} -> {after})",
        before.saturating_sub(after)
    );
    // keep 0: history off, a commit takes none.
    commit_n(s, &bed.uri, &vm, 1, 0x30);
    assert!(history(s, &bed.uri, &vm.name).is_empty());
    assert!(base_snapshots(&vm.base).is_empty());

    // Kept overlays of discards expire too, and their files go.
    ok(s, &bed.uri, &["keep", &vm.name, "1"]);
    for p in [0x41u8, 0x42] {
        qemu_io(&vm.overlay, &[&format!("write -P {p:#x} 0 2M")]);
        ok(s, &bed.uri, &["discard", &vm.name, "--yes"]);
    }
    let kept: Vec<_> = std::fs::read_dir(vm.dir.path().join(".vmoverlay-history"))
        .unwrap()
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(history(s, &bed.uri, &vm.name).len(), 1);
}

/// A VM whose overlay is over a raw base of 64 MiB holding 0x11 in its first 8 MiB; the
/// overlay holds 0x5a in its first MiB.
fn raw_vm(uri: &str, name: &str) -> StateVm {
    let vm = StateVm::shut_off(uri, name);
    std::fs::remove_file(&vm.base).unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "raw",
        vm.base.to_str().unwrap(),
        "64M",
    ]);
    common::run_ok(
        std::process::Command::new("qemu-io")
            .args(["-f", "raw", "-c", "write -P 0x11 0 8M"])
            .arg(&vm.base),
    );
    std::fs::remove_file(&vm.overlay).unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        vm.base.to_str().unwrap(),
        vm.overlay.to_str().unwrap(),
    ]);
    qemu_io(&vm.overlay, &["write -P 0x5a 0 1M"]);
    vm
}

fn delta_files(state: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(state.join("history"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with(".delta.qcow2"))
                .collect()
        })
        .unwrap_or_default()
}

/// A raw base keeps revisions as undo deltas (the bytes a commit overwrites, copied before it
/// writes): commits are rolled back and forward byte for byte, a commit and a discard are
/// undone, a pinned old revision keeps the newer deltas it is reached through, a base
/// changed behind VM Overlay's back makes the older revisions unrestorable (nothing changed),
/// and a commit killed while its delta is written is finished at the next start.
#[test]
fn a_raw_base_keeps_revisions_as_undo_deltas() {
    let bed = testbed_shared();
    let state = state_dir();
    let s = state.path();
    let uri = bed.uri.as_str();
    let vm = raw_vm(uri, "vmo-hist-raw");
    let name = vm.name.as_str();
    let raw = |offset: &str, len: &str, pattern: u8| {
        common::images::reads_pattern_as("raw", &vm.base, pattern, offset, len)
    };
    ok(s, uri, &["keep", name, "10"]);
    let original = checksum(&vm.base);
    ok(s, uri, &["commit", name, "--yes"]);
    assert!(raw("0", "1M", 0x5a));
    qemu_io(&vm.overlay, &["write -P 0x6b 4M 2M"]);
    ok(s, uri, &["commit", name, "--yes"]);
    let two_commits = checksum(&vm.base);
    let list = history(s, uri, name);
    assert_eq!(kinds(&list), ["commit", "commit"], "{list:?}");
    assert!(list.iter().all(|r| r["restorable"] == true), "{list:?}");
    let (second, first) = (ids(&list)[0], ids(&list)[1]);
    // Each delta holds what its commit overwrote (0x11 there), and passes qemu-img check.
    let deltas = delta_files(s);
    assert_eq!(deltas.len(), 2, "{deltas:?}");
    for d in &deltas {
        qemu_img(&["check", "-q", "-f", "qcow2", d.to_str().unwrap()]);
        let mode = std::fs::metadata(d).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}: a copy of the guest's data", d.display());
        assert!(
            allocated(d) < 4 << 20,
            "{}: only what was overwritten",
            d.display()
        );
    }

    // Back to before the first commit, forward again, byte for byte.
    ok(s, uri, &["rollback", name, &first.to_string(), "--yes"]);
    assert_eq!(checksum(&vm.base), original);
    assert_eq!(changed(&vm.overlay), 0);
    let left = ids(&history(s, uri, name))[0];
    ok(s, uri, &["rollback", name, &left.to_string(), "--yes"]);
    assert_eq!(checksum(&vm.base), two_commits);
    ok(s, uri, &["rollback", name, &second.to_string(), "--yes"]);
    assert!(raw("0", "1M", 0x5a) && raw("4M", "2M", 0x11));

    // Undo a commit, and a discard.
    qemu_io(&vm.overlay, &["write -P 0x7c 10M 1M"]);
    let before = checksum(&vm.base);
    ok(s, uri, &["commit", name, "--yes"]);
    assert!(raw("10M", "1M", 0x7c));
    ok(s, uri, &["undo", name, "--yes"]);
    assert_eq!(checksum(&vm.base), before);
    qemu_io(&vm.overlay, &["write -P 0x7d 20M 1M"]);
    ok(s, uri, &["discard", name, "--yes"]);
    ok(s, uri, &["undo", name, "--yes"]);
    assert!(reads_pattern(&vm.overlay, 0x7d, "20M", "1M"));
    assert_eq!(checksum(&vm.base), before);

    // Retention: with the oldest pinned, the newer deltas it is reached through stay.
    ok(s, uri, &["pin", name, &first.to_string()]);
    ok(s, uri, &["keep", name, "1"]);
    let list = history(s, uri, name);
    assert!(list.len() > 2, "{list:?}");
    assert!(list.iter().all(|r| r["restorable"] == true), "{list:?}");
    ok(s, uri, &["unpin", name, &first.to_string()]);
    ok(s, uri, &["keep", name, "1"]);
    let list = history(s, uri, name);
    assert_eq!(list.len(), 1, "{list:?}");
    assert!(delta_files(s).len() <= 1, "{:?}", delta_files(s));

    // Another program writes the base: what came before can no longer be reached.
    ok(s, uri, &["keep", name, "5"]);
    ok(s, uri, &["commit", name, "--yes"]);
    let rev = ids(&history(s, uri, name))[0];
    common::run_ok(
        std::process::Command::new("qemu-io")
            .args(["-f", "raw", "-c", "write -P 0x99 30M 1M"])
            .arg(&vm.base),
    );
    let changed_base = checksum(&vm.base);
    let ran = vmoverlay(
        s,
        &[
            "rollback",
            name,
            &rev.to_string(),
            "--yes",
            "--connect",
            uri,
        ],
    );
    assert_eq!(ran.code, 18, "{ran:?}");
    assert_eq!(checksum(&vm.base), changed_base, "nothing changed");

    // Killed while the commit's delta is written: the next start finishes the commit.
    qemu_io(&vm.overlay, &["write -P 0x42 40M 1M"]);
    killed_at(s, uri, "history-snapshot", &["commit", name, "--yes"]);
    ok(s, uri, &["status", name]);
    assert!(journal_empty(s));
    assert!(raw("40M", "1M", 0x42));
    assert_eq!(changed(&vm.overlay), 0);
    let newest = history(s, uri, name);
    assert_eq!(kinds(&newest)[0], "commit", "{newest:?}");
    ok(s, uri, &["undo", name, "--yes"]);
    assert_eq!(checksum(&vm.base), changed_base);
}

/// Refusals with their own exit code, nothing changed: history through the libvirt engine
/// (17), an unknown revision (3), a rollback while the guest runs (5) or while another domain
/// uses the base (7).
#[test]
fn history_refusals() {
    let bed = testbed_shared();
    let state = state_dir();
    let s = state.path();

    let vm = StateVm::shut_off(&bed.uri, "vmo-hist-refused");
    let ran = vmoverlay(
        s,
        &[
            "history",
            &vm.name,
            "--engine",
            "libvirt",
            "--connect",
            &bed.uri,
        ],
    );
    assert_eq!(ran.code, 17, "{ran:?}");
    assert!(ran.stderr.contains("libvirt"), "{ran:?}");

    ok(s, &bed.uri, &["commit", &vm.name, "--yes"]);
    let rev = ids(&history(s, &bed.uri, &vm.name))[0];
    let ran = vmoverlay(
        s,
        &["rollback", &vm.name, "99", "--yes", "--connect", &bed.uri],
    );
    assert_eq!(ran.code, 3, "{ran:?}");

    // Another domain on the same base.
    let other = StateVm::shut_off(&bed.uri, "vmo-hist-other");
    std::fs::remove_file(&other.overlay).unwrap();
    create_overlay(&other.overlay, vm.base.to_str().unwrap());
    let recapture = || {
        capture(
            &bed.uri,
            &[&vm.name, &other.name],
            &[vm.dir.path(), other.dir.path()],
        )
    };
    let before = recapture();
    let ran = vmoverlay(
        s,
        &[
            "rollback",
            &vm.name,
            &rev.to_string(),
            "--yes",
            "--connect",
            &bed.uri,
        ],
    );
    assert_eq!(ran.code, 7, "{ran:?}");
    assert!(ran.stderr.contains("vmo-hist-other"), "{ran:?}");
    assert_unchanged("rollback with a shared base", &before, &recapture());
    drop(other);

    // The guest running.
    let held = StateVm::define(
        &bed.uri,
        "vmo-hist-running",
        &Behaviour {
            hold_secs: 600,
            ..Default::default()
        },
    );
    ok(s, &bed.uri, &["commit", &held.name, "--yes"]);
    let rev = ids(&history(s, &bed.uri, &held.name))[0];
    held.start_running();
    let ran = vmoverlay(
        s,
        &[
            "rollback",
            &held.name,
            &rev.to_string(),
            "--yes",
            "--connect",
            &bed.uri,
        ],
    );
    assert_eq!(ran.code, 5, "{ran:?}");
    held.destroy();
}

/// Runs `args` with `VMOVERLAY_TEST_KILL_AT=point`: the process kills itself right there.
fn killed_at(state: &Path, uri: &str, point: &str, args: &[&str]) {
    use std::os::unix::process::ExitStatusExt;
    let status = std::process::Command::new(common::bin())
        .args(args)
        .args(["--connect", uri])
        .env("LC_ALL", "C")
        .env("VMOVERLAY_STATE_DIR", state)
        .env("VMOVERLAY_CONFIG_DIR", state.join("config"))
        .env("VMOVERLAY_TEST_KILL_AT", point)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
        .status;
    assert_eq!(
        status.signal(),
        Some(9),
        "{args:?} was not killed at {point}"
    );
}

/// The journal record of `state`'s one interrupted operation, changed by `edit`.
fn edit_record(state: &Path, edit: impl FnOnce(&mut Value)) {
    let files: Vec<_> = std::fs::read_dir(state.join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(files.len(), 1, "one interrupted operation: {files:?}");
    let mut rec: Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    edit(&mut rec);
    std::fs::write(&files[0], serde_json::to_vec(&rec).unwrap()).unwrap();
}

/// A commit with history on writes the base without QEMU's ordering flushes (the revision
/// taken right before protects it). After a crash of the machine mid-commit (the journal
/// names another boot), any of those writes may be lost or half-made: the next start rolls
/// the base back to the revision and commits again. After a mere kill (same boot) nothing is
/// lost, and the commit is simply finished.
#[test]
fn a_machine_crash_during_an_unordered_commit_is_undone_from_its_revision() {
    let bed = testbed_shared();
    for crashed in [true, false] {
        let state = state_dir();
        let s = state.path();
        let vm = StateVm::shut_off(&bed.uri, &format!("vmo-hist-crash-{crashed}"));
        let before = read_image(&vm.base, 4 << 20, 65536);
        killed_at(
            s,
            &bed.uri,
            "commit-written",
            &["commit", &vm.name, "--yes"],
        );
        // What a crash can leave in the base: bytes the commit never meant to write (here
        // where the overlay holds nothing).
        qemu_io(&vm.base, &["write -P 0x77 4M 64k"]);
        if crashed {
            edit_record(s, |rec| {
                assert!(rec["boot"].is_string(), "the record has the boot ID: {rec}");
                rec["boot"] = "00000000-0000-4000-8000-000000000000".into();
            });
        }
        ok(s, &bed.uri, &["status", &vm.name]);
        assert!(journal_empty(s));
        assert_eq!(changed(&vm.overlay), 0);
        assert!(reads_pattern(&vm.base, 0x5a, "0", "1M"), "committed");
        assert_eq!(
            read_image(&vm.base, 4 << 20, 65536) == before,
            crashed,
            "the base was rolled back to the revision only after a crash"
        );
        assert_one_commit_revision(s, &bed.uri, &vm);
    }
}

/// A guest started while a rollback writes the base (here stopped right before it does:
/// `VMOVERLAY_TEST_STOP_AT`) fails to start on QEMU's lock of the overlay, and the rollback
/// then completes.
#[test]
fn a_guest_started_during_a_rollback_fails_to_start() {
    let bed = testbed_shared();
    let state = state_dir();
    let s = state.path();
    let uri = bed.uri.as_str();
    let vm = raw_vm(uri, "vmo-hist-rb-start");
    let original = checksum(&vm.base);
    ok(s, uri, &["commit", &vm.name, "--yes"]);
    let rev = ids(&history(s, uri, &vm.name))[0].to_string();
    let rollback = std::process::Command::new(common::bin())
        .args(["rollback", &vm.name, &rev, "--yes", "--connect", uri])
        .env("VMOVERLAY_STATE_DIR", s)
        .env("VMOVERLAY_CONFIG_DIR", s.join("config"))
        .env("VMOVERLAY_TEST_STOP_AT", "history-rollback-apply")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = rollback.id().to_string();
    let stopped = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|st| st.rsplit(") ").next().is_some_and(|r| r.starts_with('T')))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !stopped() {
        assert!(
            std::time::Instant::now() < deadline,
            "the rollback never got there"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let start = std::process::Command::new("virsh")
        .args(["-q", "-c", uri, "start", &vm.name])
        .output()
        .unwrap();
    let cont = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status();
    assert!(cont.unwrap().success());
    let out = rollback.wait_with_output().unwrap();
    assert!(
        !start.status.success(),
        "the guest started during the rollback"
    );
    let why = String::from_utf8_lossy(&start.stderr);
    assert!(
        why.contains("lock"),
        "start failed for another reason: {why}"
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(checksum(&vm.base), original);
    assert_eq!(changed(&vm.overlay), 0);
}

/// The same on a raw base: after a machine crash mid-commit the base goes back through the
/// commit's undo delta (torn writes where the commit writes are undone), then the commit is
/// made again; after a kill it is simply finished.
#[test]
fn a_machine_crash_during_a_commit_into_a_raw_base_goes_back_through_its_delta() {
    let bed = testbed_shared();
    for crashed in [true, false] {
        let state = state_dir();
        let s = state.path();
        let vm = raw_vm(&bed.uri, &format!("vmo-hist-rawcrash-{crashed}"));
        killed_at(
            s,
            &bed.uri,
            "commit-written",
            &["commit", &vm.name, "--yes"],
        );
        // A torn write where the commit writes.
        common::run_ok(
            std::process::Command::new("qemu-io")
                .args(["-f", "raw", "-c", "write -P 0x77 64k 64k"])
                .arg(&vm.base),
        );
        if crashed {
            edit_record(s, |rec| {
                rec["boot"] = "00000000-0000-4000-8000-000000000000".into();
            });
        }
        let ran = ok(s, &bed.uri, &["status", &vm.name]);
        assert_eq!(
            ran.stderr.contains("the machine went down during a commit"),
            crashed,
            "{ran:?}"
        );
        assert!(journal_empty(s));
        assert_eq!(changed(&vm.overlay), 0);
        let raw =
            |o: &str, l: &str, p: u8| common::images::reads_pattern_as("raw", &vm.base, p, o, l);
        assert!(
            raw("0", "1M", 0x5a),
            "committed, the torn write overwritten"
        );
        assert!(raw("1M", "7M", 0x11), "the rest of the base as it was");
        // And the commit can be undone, back to the base before it.
        ok(s, &bed.uri, &["undo", &vm.name, "--yes"]);
        assert!(raw("0", "8M", 0x11));
    }
}

/// A kill at each step of taking a revision, rolling back and expiring loses nothing: the
/// guest's data reads as before the interrupted operation or as after it, the next run
/// finishes it (no journal record is left), and the history is consistent with the base.
#[test]
fn a_kill_during_revision_taking_rollback_and_expiry_loses_nothing() {
    let bed = testbed_shared();

    // Taking a revision (before the commit writes): the commit finishes at the next start,
    // and the revision is there.
    let state = state_dir();
    let s = state.path();
    let vm = StateVm::shut_off(&bed.uri, "vmo-hist-kill-take");
    killed_at(
        s,
        &bed.uri,
        "history-snapshot",
        &["commit", &vm.name, "--yes"],
    );
    assert!(reads_pattern(&vm.overlay, 0x5a, "0", "1M"));
    ok(s, &bed.uri, &["status", &vm.name]);
    assert!(journal_empty(s));
    assert_eq!(changed(&vm.overlay), 0);
    assert!(reads_pattern(&vm.base, 0x5a, "0", "1M"));
    assert_one_commit_revision(s, &bed.uri, &vm);

    // Rolling back, killed while recording the state left, then while applying.
    for point in ["history-rollback-record", "history-rollback-apply"] {
        let state = state_dir();
        let s = state.path();
        let vm = StateVm::shut_off(&bed.uri, &format!("vmo-hist-kill-{point}"));
        ok(s, &bed.uri, &["commit", &vm.name, "--yes"]);
        let rev = ids(&history(s, &bed.uri, &vm.name))[0];
        qemu_io(&vm.overlay, &["write -P 0x99 1M 2M"]);
        let overlay_before = checksum(&vm.overlay);
        killed_at(
            s,
            &bed.uri,
            point,
            &["rollback", &vm.name, &rev.to_string(), "--yes"],
        );
        // Nothing lost: before the apply step the disk is as it was.
        if point == "history-rollback-record" {
            assert_eq!(checksum(&vm.overlay), overlay_before, "{point}");
            assert!(reads_pattern(&vm.base, 0x5a, "0", "1M"), "{point}");
        }
        // The next start finishes the rollback.
        ok(s, &bed.uri, &["status", &vm.name]);
        assert!(journal_empty(s), "{point}");
        assert!(
            reads_pattern(&vm.overlay, 0x00, "0", "16M"),
            "{point}: rolled back"
        );
        let list = history(s, &bed.uri, &vm.name);
        assert_eq!(kinds(&list), ["rollback", "commit"], "{point}: {list:?}");
        // And the state left is whole: rolling back to it brings everything back.
        ok(
            s,
            &bed.uri,
            &["rollback", &vm.name, &ids(&list)[0].to_string(), "--yes"],
        );
        assert_eq!(checksum(&vm.overlay), overlay_before, "{point}");
        assert!(reads_pattern(&vm.overlay, 0x5a, "0", "1M"));
        assert!(reads_pattern(&vm.overlay, 0x99, "1M", "2M"));
        check_base(&vm.base);
    }

    // Expiring: `keep 0` killed between marking and deleting; the next start finishes it.
    let state = state_dir();
    let s = state.path();
    let vm = StateVm::shut_off(&bed.uri, "vmo-hist-kill-expire");
    commit_n(s, &bed.uri, &vm, 2, 0x50);
    assert_eq!(base_snapshots(&vm.base).len(), 2);
    let data_before = reads_pattern(&vm.base, 0x51, "0", "4M");
    assert!(data_before);
    killed_at(s, &bed.uri, "history-expire", &["keep", &vm.name, "0"]);
    ok(s, &bed.uri, &["status", &vm.name]);
    assert!(journal_empty(s));
    assert!(base_snapshots(&vm.base).is_empty());
    assert!(history(s, &bed.uri, &vm.name).is_empty());
    assert!(reads_pattern(&vm.base, 0x51, "0", "4M"));
    check_base(&vm.base);
}

/// A SIGKILL sweep over rollbacks at many points in time (the qemu-img steps included): the
/// disk is either as it was or rolled back, never anything else, and the next start ends
/// with the rollback done and every state restorable.
#[test]
fn killing_a_rollback_at_any_point_loses_nothing() {
    let bed = testbed_shared();
    // A VM as the sweep's, with a revision to roll back to and changes to leave.
    let prepared = |name: &str| {
        let vm = StateVm::shut_off(&bed.uri, name);
        let state = state_dir();
        ok(state.path(), &bed.uri, &["commit", &vm.name, "--yes"]);
        let rev = ids(&history(state.path(), &bed.uri, &vm.name))[0];
        qemu_io(&vm.overlay, &["write -P 0x99 1M 8M"]);
        (vm, state, rev)
    };
    // The kill points are spread over a rollback's measured duration on this machine, so they
    // fall inside it on a fast or a loaded machine alike (the shorter of two: the other tests
    // of this file may load the machine only while the first is measured).
    let timed = |name: &str| {
        let (vm, state, rev) = prepared(name);
        let started = std::time::Instant::now();
        ok(
            state.path(),
            &bed.uri,
            &["rollback", &vm.name, &rev.to_string(), "--yes"],
        );
        started.elapsed().as_millis() as u64
    };
    let whole = timed("vmo-hist-sweep-timed").min(timed("vmo-hist-sweep-timed-2"));
    let points = 11u64;
    let mut killed = 0;
    for i in 0..points {
        let delay_ms = whole * i / points;
        let name = format!("vmo-hist-sweep-{i}");
        let (vm, state, rev) = prepared(&name);
        let s = state.path();
        let overlay_before = checksum(&vm.overlay);
        let rev = rev.to_string();
        let args = ["rollback", &name, &rev, "--yes", "--connect", &bed.uri];
        if run_killed_after(s, &args, delay_ms) {
            killed += 1;
        }
        let as_before = checksum(&vm.overlay) == overlay_before;
        let rolled_back = changed(&vm.overlay) == 0;
        assert!(
            as_before || rolled_back,
            "{delay_ms} ms: a half-replaced overlay"
        );
        let status = ok(s, &bed.uri, &["status", &name]);
        assert!(
            journal_empty(s),
            "{delay_ms} ms: a journal record is left ({}): {:?}",
            status.stderr,
            std::fs::read_dir(s.join("journal")).map(|d| d
                .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
                .collect::<Vec<_>>())
        );
        let list = history(s, &bed.uri, &name);
        if list.len() == 2 {
            // Rolled back: the state left is whole.
            assert_eq!(changed(&vm.overlay), 0, "{delay_ms} ms");
            assert!(reads_pattern(&vm.base, 0x00, "0", "16M"), "{delay_ms} ms");
            ok(
                s,
                &bed.uri,
                &["rollback", &name, &ids(&list)[0].to_string(), "--yes"],
            );
        }
        assert_eq!(
            checksum(&vm.overlay),
            overlay_before,
            "{delay_ms} ms: {list:?}"
        );
        assert!(reads_pattern(&vm.base, 0x5a, "0", "1M"), "{delay_ms} ms");
        check_base(&vm.base);
        drop(vm);
        let _ = virsh;
    }
    eprintln!("{killed} rollbacks killed before they ended");
    assert!(
        killed >= points / 2,
        "only {killed} rollbacks were killed before they ended"
    );
}

/// Guard: the image helpers this file relies on still describe the test images.
#[test]
fn history_dir_is_not_an_overlay_neighbour() {
    // A kept overlay lives in a subfolder, where the sibling scan for other users of the base
    // does not look: a discard's revision never blocks the next commit.
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    create_base(&base, "16M");
    let overlay = dir.path().join("overlay.qcow2");
    create_overlay(&overlay, "base.qcow2");
    let kept = dir.path().join(".vmoverlay-history");
    std::fs::create_dir(&kept).unwrap();
    std::fs::hard_link(&overlay, kept.join("overlay.qcow2.1")).unwrap();
    assert!(vmoverlay::overlay::image::other_overlays_of(dir.path(), &base, &overlay).is_empty());
}
