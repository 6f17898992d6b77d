//! The overlay engine on real qcow2 images (qemu-img, qemu-io, qemu-nbd), including faults.
//! These images belong to no libvirt domain; the domain side is in engine_libvirtd.rs.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::images::*;
use vmoverlay::overlay::{
    self, discover::inspect_overlay, ops, JobEvent, Journal, OpError, OpKind, Progress, Request,
};

struct Setup {
    dir: tempfile::TempDir,
    base: PathBuf,
    overlay: PathBuf,
    journal: Journal,
}

fn setup_in(dir: tempfile::TempDir, size: &str, relative: bool) -> Setup {
    let base = dir.path().join("base.qcow2");
    let overlay = dir.path().join("overlay.qcow2");
    create_base(&base, size);
    qemu_io(&base, &["write -P 0xaa 0 1M"]);
    let backing = if relative {
        "base.qcow2".to_string()
    } else {
        base.display().to_string()
    };
    create_overlay(&overlay, &backing);
    let journal = Journal::at(dir.path().join("state/journal"));
    Setup {
        dir,
        base,
        overlay,
        journal,
    }
}

fn setup() -> Setup {
    setup_in(tempfile::tempdir().unwrap(), "64M", false)
}

fn request(s: &Setup, op: OpKind) -> Request {
    Request {
        op,
        uri: "none".into(),
        domain: "images-only".into(),
        disk: inspect_overlay("vda", &s.overlay).unwrap(),
        firmware: None,
    }
}

fn run(s: &Setup, op: OpKind) -> Result<overlay::Outcome, OpError> {
    ops::run(&request(s, op), &NoDomain, &s.journal, &mut |_| {})
}

#[test]
fn commit_moves_exactly_what_was_written() {
    let s = setup();
    qemu_io(&s.overlay, &["write -P 0x55 4M 2M", "write -z 0 64k"]);
    assert_eq!(changed(&s.overlay), 2 * 1024 * 1024 + 65536);
    let mut fractions = Vec::new();
    let out = ops::run(
        &request(&s, OpKind::Commit),
        &NoDomain,
        &s.journal,
        &mut |p| {
            if let Progress::Committing(f) = p {
                fractions.push(f)
            }
        },
    )
    .unwrap();
    assert_eq!(out.changed_bytes, 2 * 1024 * 1024 + 65536);
    assert_eq!(fractions.last().copied(), Some(1.0), "{fractions:?}");
    // Read the base on its own (not through the overlay): it has the guest's writes...
    assert!(reads_pattern(&s.base, 0x55, "4M", "2M"));
    assert!(
        reads_pattern(&s.base, 0x00, "0", "64k"),
        "the zeroed range was committed"
    );
    // ...and nothing else changed in it.
    assert!(reads_pattern(&s.base, 0xaa, "64k", "960k"));
    assert!(reads_pattern(&s.base, 0x00, "6M", "1M"));
    assert_eq!(changed(&s.overlay), 0, "the overlay is empty afterwards");
    assert!(
        reads_pattern(&s.overlay, 0x55, "4M", "2M"),
        "the guest still sees its data"
    );
    assert!(s.journal.pending().is_empty());
}

#[test]
fn discard_leaves_the_base_byte_identical_and_the_overlay_empty() {
    let s = setup();
    qemu_io(&s.overlay, &["write -P 0x55 4M 2M"]);
    let before = checksum(&s.base);
    run(&s, OpKind::Discard).unwrap();
    assert_eq!(checksum(&s.base), before);
    assert_eq!(changed(&s.overlay), 0);
    assert!(
        reads_pattern(&s.overlay, 0x00, "4M", "2M"),
        "the writes are gone"
    );
    assert!(
        reads_pattern(&s.overlay, 0xaa, "0", "1M"),
        "the base shows through"
    );
}

#[test]
fn rebuild_keeps_owner_mode_relative_backing_size_and_cluster_size() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.qcow2");
    let overlay = dir.path().join("overlay.qcow2");
    create_base(&base, "48M");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        "base.qcow2",
        "-o",
        "cluster_size=131072",
        overlay.to_str().unwrap(),
        "80M",
    ]);
    std::os::unix::fs::chown(&overlay, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&overlay, std::fs::Permissions::from_mode(0o640)).unwrap();
    qemu_io(&overlay, &["write -P 0x11 0 1M"]);
    let s = Setup {
        journal: Journal::at(dir.path().join("state/journal")),
        base,
        overlay: overlay.clone(),
        dir,
    };
    run(&s, OpKind::Commit).unwrap();
    let meta = std::fs::metadata(&overlay).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (65534, 65534, 0o640)
    );
    let i = info(&overlay);
    assert_eq!(
        i["backing-filename"], "base.qcow2",
        "relative backing stays relative"
    );
    assert_eq!(i["backing-filename-format"], "qcow2");
    assert_eq!(i["virtual-size"], 80 * 1024 * 1024);
    assert_eq!(i["cluster-size"], 131072);
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("vmoverlay-new")),
        "{names:?}"
    );
}

#[test]
fn paths_with_spaces_and_non_ascii_work() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("my vms/Ünïcødé 虚拟机 $(touch pwned)");
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("base image.qcow2");
    let overlay = dir.join("guest's overlay ×.qcow2");
    create_base(&base, "32M");
    create_overlay(&overlay, base.to_str().unwrap());
    qemu_io(&overlay, &["write -P 0x42 1M 1M"]);
    let s = Setup {
        journal: Journal::at(root.path().join("state/journal")),
        base: base.clone(),
        overlay,
        dir: root,
    };
    run(&s, OpKind::Commit).unwrap();
    assert!(reads_pattern(&base, 0x42, "1M", "1M"));
    assert!(!dir.join("pwned").exists() && !Path::new("pwned").exists());
}

#[test]
fn sigkill_of_qemu_img_mid_commit_is_completed_from_the_journal() {
    let s = setup_in(tempfile::tempdir().unwrap(), "1G", false);
    qemu_io(&s.overlay, &["write -P 0x5a 0 384M"]);
    let base_before = checksum(&s.base);
    let events = overlay::spawn(
        request(&s, OpKind::Commit),
        Box::new(NoDomain),
        s.journal.clone(),
    );
    let mut killed_at = None;
    let result = loop {
        match events.recv_blocking().unwrap() {
            JobEvent::Progress(Progress::Committing(f)) if killed_at.is_none() && f > 0.05 => {
                let pid = qemu_img_commit_pid(&s.overlay).expect("qemu-img commit is running");
                let st = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status()
                    .unwrap();
                assert!(st.success());
                killed_at = Some(f);
            }
            JobEvent::Progress(_) => {}
            JobEvent::Done(r) => break r,
        }
    };
    let killed_at = killed_at.expect("commit was killed midway");
    let err = result.expect_err("a killed commit fails");
    assert!(matches!(err, OpError::Failed { .. }), "{err}");
    assert!(err.to_string().contains("intact"), "{err}");
    assert!(killed_at < 1.0);
    // Nothing is lost: the guest's view (overlay over base) is complete.
    assert!(reads_pattern(&s.overlay, 0x5a, "0", "384M"));
    assert_ne!(
        checksum(&s.base),
        base_before,
        "the commit had started writing the base"
    );
    let pending = s.journal.pending();
    assert_eq!(pending.len(), 1);
    // Its writes were unordered (a revision protects it) and failed midway: the record says
    // so, and the resumed commit goes back to the revision before committing again.
    let record = pending[0].as_ref().expect("a readable record");
    assert_eq!(record.boot.as_deref(), Some("unflushed"), "{record:?}");
    // Next start: recovery completes it.
    let done = overlay::recover(&s.journal, &|_| Ok(Box::new(NoDomain)), &mut |_, _| {});
    assert_eq!(done.len(), 1);
    let outcome = done[0].1.clone().unwrap();
    assert!(outcome.resumed);
    assert!(
        reads_pattern(&s.base, 0x5a, "0", "384M"),
        "everything is in the base"
    );
    assert_eq!(changed(&s.overlay), 0);
    assert!(s.journal.pending().is_empty());
}

/// The journal of a discard whose process died after journaling, before replacing the overlay.
fn journal_interrupted_discard(s: &Setup) {
    let req = request(s, OpKind::Discard);
    let rec = vmoverlay::overlay::Record {
        op: OpKind::Discard,
        uri: req.uri,
        domain: req.domain,
        uuid: None,
        disk: req.disk,
        phase: vmoverlay::overlay::Phase::Rebuilding,
        overlay_stamp: vmoverlay::overlay::Stamp::of(&s.overlay).ok(),
        started: "2026-11-22T00:00:00Z".into(),
        firmware: None,
        boot: None,
    };
    s.journal.begin(&rec).unwrap();
}

#[test]
fn an_interrupted_rebuild_is_finished_at_the_next_start() {
    let s = setup();
    qemu_io(&s.overlay, &["write -P 0x33 2M 1M"]);
    journal_interrupted_discard(&s);
    // Meanwhile a new operation on the same overlay is refused, not run twice.
    let busy = run(&s, OpKind::Commit).unwrap_err();
    assert_eq!(busy.exit_code(), 6, "{busy}");
    let done = overlay::recover(&s.journal, &|_| Ok(Box::new(NoDomain)), &mut |_, _| {});
    assert!(done[0].1.is_ok(), "{:?}", done[0].1);
    assert_eq!(changed(&s.overlay), 0);
    assert!(s.journal.pending().is_empty());
}

#[test]
fn a_rebuild_is_not_resumed_over_an_overlay_written_since() {
    let s = setup();
    journal_interrupted_discard(&s);
    std::thread::sleep(Duration::from_millis(20));
    qemu_io(&s.overlay, &["write -P 0x66 0 1M"]); // a guest ran and wrote after the crash
    let done = overlay::recover(&s.journal, &|_| Ok(Box::new(NoDomain)), &mut |_, _| {});
    assert!(done[0].1.is_err());
    assert!(
        reads_pattern(&s.overlay, 0x66, "0", "1M"),
        "the new writes are kept"
    );
    assert!(
        s.journal.pending().is_empty(),
        "the stale record does not block the overlay"
    );
}

fn assert_refused(s: &Setup, op: OpKind, code: i32, needle: &str) {
    let before = snapshot(s.dir.path());
    let err = run(s, op).unwrap_err();
    assert_eq!(err.exit_code(), code, "{err}");
    let msg = err.to_string();
    assert!(msg.contains(needle), "{msg}");
    assert!(msg.contains("Nothing was changed"), "{msg}");
    assert_eq!(
        snapshot(s.dir.path()),
        before,
        "a refused {op:?} changed a file"
    );
}

struct Holder(Child);
impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_locked(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !overlay::image::is_locked(p).unwrap() {
        assert!(
            Instant::now() < deadline,
            "{} never got locked",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn images_held_by_qemu_io_or_qemu_nbd_are_refused() {
    let s = setup();
    qemu_io(&s.overlay, &["write -P 0x55 4M 1M"]);
    // qemu-io reading commands from a pipe keeps the overlay open.
    let holder = Holder(
        Command::new("qemu-io")
            .args(["-f", "qcow2"])
            .arg(&s.overlay)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_locked(&s.overlay);
    assert_refused(
        &s,
        OpKind::Commit,
        6,
        "overlay.qcow2 is open in another process",
    );
    assert_refused(&s, OpKind::Discard, 6, "open in another process");
    drop(holder);

    // qemu-nbd serving the base read-only also holds it.
    let sock = s.dir.path().join("nbd.sock");
    let holder = Holder(
        Command::new("qemu-nbd")
            .args(["-r", "-f", "qcow2", "-k"])
            .arg(&sock)
            .arg(&s.base)
            .spawn()
            .unwrap(),
    );
    wait_locked(&s.base);
    let before = checksum(&s.overlay);
    let err = run(&s, OpKind::Commit).unwrap_err();
    assert_eq!(err.exit_code(), 6, "{err}");
    assert!(err.to_string().contains("base.qcow2"), "{err}");
    assert_eq!(checksum(&s.overlay), before);
    drop(holder);
    run(&s, OpKind::Commit).unwrap();
}

#[test]
fn a_second_overlay_on_the_same_base_blocks_commit_but_not_discard() {
    let s = setup();
    qemu_io(&s.overlay, &["write -P 0x55 4M 1M"]);
    create_overlay(&s.dir.path().join("sibling.qcow2"), "base.qcow2");
    assert_refused(&s, OpKind::Commit, 7, "sibling.qcow2");
    run(&s, OpKind::Discard).unwrap();
}

#[test]
fn no_space_for_the_commit_is_refused() {
    let s = setup();
    let small = s.dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "vmoverlay-test"])
        .arg(&small)
        .status()
        .expect("mount (root is needed for this test)");
    assert!(st.success(), "mounting a small tmpfs needs root");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let base = small.join("base.qcow2");
    create_base(&base, "256M");
    let overlay = s.dir.path().join("big.qcow2");
    create_overlay(&overlay, base.to_str().unwrap());
    qemu_io(&overlay, &["write -P 0x77 0 64M"]);
    let before = (checksum(&base), checksum(&overlay));
    let req = Request {
        op: OpKind::Commit,
        uri: "none".into(),
        domain: "images-only".into(),
        disk: inspect_overlay("vda", &overlay).unwrap(),
        firmware: None,
    };
    let err = ops::run(&req, &NoDomain, &s.journal, &mut |_| {}).unwrap_err();
    assert_eq!(err.exit_code(), 8, "{err}");
    assert!(err.to_string().contains("not enough free space"), "{err}");
    assert_eq!((checksum(&base), checksum(&overlay)), before);
}

#[test]
fn bad_images_are_not_managed_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    // Missing overlay.
    let e = inspect_overlay("vda", &p("nothing.qcow2"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing"), "{e}");
    // Missing base.
    create_base(&p("gone.qcow2"), "16M");
    create_overlay(&p("orphan.qcow2"), "gone.qcow2");
    std::fs::remove_file(p("gone.qcow2")).unwrap();
    let e = inspect_overlay("vda", &p("orphan.qcow2"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("gone.qcow2"), "{e}");
    // No backing file.
    create_base(&p("plain.qcow2"), "16M");
    let e = inspect_overlay("vda", &p("plain.qcow2"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no backing file"), "{e}");
    // Backing loop.
    create_base(&p("a.qcow2"), "16M");
    create_overlay(&p("b.qcow2"), "a.qcow2");
    qemu_img(&[
        "rebase",
        "-u",
        "-F",
        "qcow2",
        "-b",
        "b.qcow2",
        p("a.qcow2").to_str().unwrap(),
    ]);
    let e = inspect_overlay("vda", &p("b.qcow2"))
        .unwrap_err()
        .to_string();
    assert!(e.to_lowercase().contains("loop"), "{e}");
    // Not qcow2.
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "raw",
        p("raw.img").to_str().unwrap(),
        "16M",
    ]);
    let e = inspect_overlay("vda", &p("raw.img"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("raw"), "{e}");
    // Symlinked overlay.
    create_base(&p("base.qcow2"), "16M");
    create_overlay(&p("real.qcow2"), "base.qcow2");
    std::os::unix::fs::symlink(p("real.qcow2"), p("link.qcow2")).unwrap();
    let e = inspect_overlay("vda", &p("link.qcow2"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("symlink"), "{e}");
}

/// A domain that is off for the first `off_calls` checks, then running: puts "the VM was
/// started" at an exact point of an operation.
struct StartsAfter {
    off_calls: std::sync::atomic::AtomicUsize,
}

impl vmoverlay::overlay::DomainCheck for StartsAfter {
    fn ensure_inactive(&self) -> Result<(), OpError> {
        use std::sync::atomic::Ordering;
        let left = self.off_calls.load(Ordering::SeqCst);
        if left == 0 {
            return Err(OpError::DomainActive {
                domain: "images-only".into(),
                state: "running (booted)".into(),
            });
        }
        self.off_calls.store(left - 1, Ordering::SeqCst);
        Ok(())
    }
    fn other_users(&self, _: &Path, _: &Path) -> Result<Vec<String>, OpError> {
        Ok(Vec::new())
    }
}

fn starts_after(n: usize) -> StartsAfter {
    StartsAfter {
        off_calls: std::sync::atomic::AtomicUsize::new(n),
    }
}

#[test]
fn a_vm_started_right_before_the_commit_leaves_nothing_changed_and_no_record() {
    let s = setup();
    qemu_io(&s.overlay, &["write -P 0x55 4M 1M"]);
    let before = snapshot(s.dir.path());
    // Off for the preconditions, running at the check right before the write.
    let err = ops::run(
        &request(&s, OpKind::Commit),
        &starts_after(1),
        &s.journal,
        &mut |_| {},
    )
    .unwrap_err();
    assert_eq!(err.exit_code(), 5, "{err}");
    assert!(err.to_string().contains("nothing was changed"), "{err}");
    assert!(s.journal.pending().is_empty(), "no record is left behind");
    let mut after = snapshot(s.dir.path());
    after.retain(|p, _| !p.starts_with(s.dir.path().join("state")));
    assert_eq!(after, before);
}

#[test]
fn a_vm_started_after_the_commit_is_reported_truthfully_and_finished_later() {
    let s = setup();
    qemu_io(&s.overlay, &["write -P 0x55 4M 1M"]);
    // Off for the preconditions and the commit, running when the overlay is to be rebuilt.
    let err = ops::run(
        &request(&s, OpKind::Commit),
        &starts_after(2),
        &s.journal,
        &mut |_| {},
    )
    .unwrap_err();
    assert_eq!(err.exit_code(), 1, "{err}");
    let msg = err.to_string();
    assert!(
        !msg.contains("nothing was changed") && !msg.contains("Nothing was changed"),
        "{msg}"
    );
    assert!(
        msg.contains("became running") && msg.contains("it is in the base"),
        "{msg}"
    );
    assert!(
        reads_pattern(&s.base, 0x55, "4M", "1M"),
        "the commit did happen"
    );
    assert_eq!(s.journal.pending().len(), 1, "still journaled");
    let done = overlay::recover(&s.journal, &|_| Ok(Box::new(NoDomain)), &mut |_, _| {});
    assert!(done[0].1.is_ok(), "{:?}", done[0].1);
    assert_eq!(changed(&s.overlay), 0);
    assert!(s.journal.pending().is_empty());
}
