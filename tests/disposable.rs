//! `adopt` and `release` on the test bed's libvirtd with real images: an ordinary VM (a qcow2
//! disk without a backing file and a raw disk) becomes disposable and back, its data intact,
//! its definition changed only where it must be; every refusal; interrupted at many points.

mod common;

use std::path::Path;

use common::guest::read_image;
use common::images::{changed, checksum, qemu_io};
use common::vm_state::*;
use common::{testbed_shared, virsh};

/// `vmoverlay ARGS --connect URI` with its own state directory.
fn on(state: &Path, uri: &str, args: &[&str]) -> Ran {
    let mut all = args.to_vec();
    all.extend(["--connect", uri]);
    vmoverlay(state, &all)
}

fn inactive_xml(uri: &str, name: &str) -> String {
    virsh(uri, &["dumpxml", "--inactive", name])
}

fn marker_in(path: &Path) -> bool {
    read_image(path, MARKER_OFFSET, MARKER.len()) == MARKER.as_bytes()
}

#[test]
fn an_ordinary_vm_becomes_disposable_and_back_with_nothing_lost() {
    let bed = testbed_shared();
    let uri = bed.uri.as_str();
    let state = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| on(state.path(), uri, args);
    let o = ordinary(uri, "vmo-adopt-both");
    let name = o.vm.name.as_str();
    // The marker written before the VM became disposable.
    o.vm.boot_to_power_off();
    assert!(marker_in(&o.vda), "{}", o.vm.console());
    let before = inactive_xml(uri, name);
    let (vda_sum, vdb_sum) = (checksum(&o.vda), checksum(&o.vdb));
    let status = status_json(state.path(), uri, name);
    for disk in status["skipped_disks"].as_array().unwrap() {
        assert_eq!(disk["adoptable"], true, "{status}");
    }
    let refused = run(&["adopt", name]);
    assert_eq!(refused.code, 10, "no --yes and no terminal: {refused:?}");

    let adopted = run(&["adopt", name, "--yes"]);
    assert_eq!(adopted.code, 0, "{adopted:?}");
    let (ov_a, ov_b) = (overlay_of(&o.vda), overlay_of(&o.vdb));
    for ov in [&ov_a, &ov_b] {
        assert!(ov.is_file(), "{} was created", ov.display());
        assert_eq!(changed(ov), 0, "a new overlay is empty");
    }
    let info = common::images::info(&ov_b);
    assert_eq!(
        info["backing-filename"], "data.raw",
        "beside its base, named relatively"
    );
    assert_eq!(info["backing-filename-format"], "raw");
    // The definition changed exactly in the two disks' source and driver type.
    let expected = before
        .replace(o.vda.to_str().unwrap(), ov_a.to_str().unwrap())
        .replace(o.vdb.to_str().unwrap(), ov_b.to_str().unwrap())
        .replace("type='raw'", "type='qcow2'");
    assert_eq!(inactive_xml(uri, name), expected);
    assert_eq!((checksum(&o.vda), checksum(&o.vdb)), (vda_sum, vdb_sum));
    // The guest sees the same data; what it writes now lands in the overlay.
    assert!(marker_in(&ov_a), "the marker is read through the overlay");
    let status = status_json(state.path(), uri, name);
    assert_eq!(status["disks"].as_array().unwrap().len(), 2, "{status}");
    assert!(blocked(&status).is_empty(), "{status}");
    o.vm.boot_to_power_off();
    assert!(changed(&ov_a) > 0, "the session wrote to the overlay");
    assert_eq!(checksum(&o.vda), vda_sum, "the base is untouched");
    qemu_io(&ov_b, &["write -P 0x44 2M 1M"]);
    let again = run(&["adopt", name, "--yes"]);
    assert_eq!(again.code, 16, "already disposable: {again:?}");

    // Commit and discard work on the adopted disks.
    let commit = run(&["commit", name, "--yes"]);
    assert_eq!(commit.code, 0, "{commit:?}");
    assert!(common::images::reads_raw_pattern(&o.vdb, 0x44, "2M", "1M"));
    qemu_io(&ov_b, &["write -P 0x55 4M 1M"]);
    let vdb_sum = checksum(&o.vdb);
    let discard = run(&["discard", name, "--yes"]);
    assert_eq!(discard.code, 0, "{discard:?}");
    assert_eq!(checksum(&o.vdb), vdb_sum);
    assert_eq!(changed(&ov_b), 0);

    // Release: pending changes need a word; with --discard the disks use their images again.
    qemu_io(&ov_b, &["write -P 0x66 5M 1M"]);
    let undecided = run(&["release", name, "--yes"]);
    assert_eq!(undecided.code, 10, "{undecided:?}");
    assert!(
        undecided.stderr.contains("--commit or --discard"),
        "{undecided:?}"
    );
    assert!(ov_b.is_file());
    let released = run(&["release", name, "--yes", "--discard"]);
    assert_eq!(released.code, 0, "{released:?}");
    assert!(!ov_a.exists() && !ov_b.exists(), "the overlays are removed");
    assert_eq!(
        inactive_xml(uri, name),
        before,
        "the definition is as it was"
    );
    assert_eq!(
        checksum(&o.vdb),
        vdb_sum,
        "the discarded write is not in the image"
    );
    assert!(marker_in(&o.vda));
    let status = status_json(state.path(), uri, name);
    assert!(status["disks"].as_array().unwrap().is_empty(), "{status}");
    o.vm.boot_to_power_off();

    // Adopt and release with --commit: the pending write lands in the image.
    assert_eq!(run(&["adopt", name, "--yes"]).code, 0);
    qemu_io(&overlay_of(&o.vdb), &["write -P 0x77 6M 1M"]);
    let released = run(&["release", name, "--yes", "--commit"]);
    assert_eq!(released.code, 0, "{released:?}");
    assert!(common::images::reads_raw_pattern(&o.vdb, 0x77, "6M", "1M"));
    assert_eq!(inactive_xml(uri, name), before);
}

#[test]
fn what_cannot_be_made_disposable_is_refused_with_its_reason() {
    let bed = testbed_shared();
    let uri = bed.uri.as_str();
    let state = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| on(state.path(), uri, args);
    let o = ordinary(uri, "vmo-adopt-refused");
    let name = o.vm.name.as_str();
    let recapture = || capture(uri, &[name], &[o.vm.dir.path()]);
    let check = |code: i32, needle: &str, args: &[&str]| {
        let before = recapture();
        let ran = run(args);
        assert_eq!(ran.code, code, "{args:?}: {ran:?}");
        assert!(ran.stderr.contains(needle), "{args:?}: {ran:?}");
        assert!(
            ran.stderr.to_lowercase().contains("nothing was changed"),
            "{ran:?}"
        );
        assert_unchanged(&format!("{args:?}"), &before, &recapture());
    };
    // A shareable disk, a cdrom, a disk that does not exist.
    o.vm.edit_xml(|xml| {
        xml.replacen(
            "<target dev='vdb'",
            "<shareable/>\n      <target dev='vdb'",
            1,
        )
    });
    check(4, "shared", &["adopt", name, "--disk", "vdb", "--yes"]);
    check(3, "no disk vdz", &["adopt", name, "--disk", "vdz", "--yes"]);
    // A libvirt snapshot; a running VM; a saved VM.
    // (external, on vda only: libvirt takes internal snapshots only when every disk is qcow2)
    let xml = inactive_xml(uri, name);
    let snap = o.vm.dir.path().join("system.s1");
    virsh(
        uri,
        &[
            "snapshot-create-as",
            name,
            "s1",
            "--disk-only",
            "--diskspec",
            &format!("vda,snapshot=external,file={}", snap.display()),
            "--diskspec",
            "vdb,snapshot=no",
        ],
    );
    check(12, "snapshot", &["adopt", name, "--yes"]);
    virsh(uri, &["snapshot-delete", name, "s1", "--metadata"]);
    let saved = o.vm.dir.path().join("saved.xml");
    std::fs::write(&saved, xml).unwrap();
    virsh(uri, &["define", saved.to_str().unwrap()]);
    std::fs::remove_file(&snap).unwrap();
    std::fs::remove_file(&saved).unwrap();
    o.vm.start_running();
    // (libvirt's view of a running guest changes by itself: its definition must not)
    let xml = inactive_xml(uri, name);
    let running = run(&["adopt", name, "--yes"]);
    assert_eq!(running.code, 5, "{running:?}");
    assert!(running.stderr.contains("running"), "{running:?}");
    assert_eq!(inactive_xml(uri, name), xml);
    assert!(!overlay_of(&o.vda).exists());
    virsh(uri, &["destroy", name]);
    // An overlay already where the new one would go.
    let squatter = overlay_of(&o.vda);
    std::fs::write(&squatter, b"someone's file").unwrap();
    check(
        4,
        "already exists",
        &["adopt", name, "--disk", "vda", "--yes"],
    );
    std::fs::remove_file(&squatter).unwrap();
    // A directory this process cannot write (a read-only bind mount over it).
    let dir = o.vm.dir.path();
    let mounted = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "mount --bind '{0}' '{0}' && mount -o remount,ro,bind '{0}'",
            dir.display()
        ))
        .status()
        .unwrap();
    assert!(mounted.success(), "a read-only bind mount (needs root)");
    let ro = run(&[
        "adopt", name, "--disk", "vda", "--yes", "--engine", "qemu-img",
    ]);
    let _ = std::process::Command::new("umount").arg(dir).status();
    assert_eq!(ro.code, 9, "{ro:?}");
    assert!(!squatter.exists());
    // Releasing an ordinary disk: not managed.
    check(
        4,
        "no managed disk",
        &["release", name, "--yes", "--discard"],
    );
}

/// SIGKILL at many points of an adopt and of a release, for each engine: the domain never
/// names a file that does not exist, no data is lost, and the next run finishes or rolls back.
#[test]
fn killing_adopt_or_release_at_any_point_leaves_a_working_vm() {
    let bed = testbed_shared();
    let uri = bed.uri.as_str();
    let mut killed = 0;
    for engine in ["qemu-img", "libvirt"] {
        for delay_ms in [0u64, 40, 80, 120, 160, 220, 300, 400] {
            let o = ordinary(uri, &format!("vmo-adopt-kill-{engine}-{delay_ms}"));
            let name = o.vm.name.as_str();
            let state = tempfile::tempdir().unwrap();
            let vda_sum = checksum(&o.vda);
            for change in ["adopt", "release"] {
                let mut args = vec![change, name, "--yes", "--connect", uri, "--engine", engine];
                if change == "release" {
                    args.push("--discard");
                }
                if run_killed_after(state.path(), &args, delay_ms) {
                    killed += 1;
                }
                // Whatever the definition names exists, and reads the guest's data.
                let xml = inactive_xml(uri, name);
                for image in [&o.vda, &overlay_of(&o.vda)] {
                    if xml.contains(&format!("'{}'", image.display())) {
                        assert!(image.is_file(), "{change}/{engine}/{delay_ms}: {xml}");
                    }
                }
                // The next run finishes or rolls back, then the change completes.
                let status = vmoverlay(state.path(), &["status", name, "--connect", uri]);
                assert_eq!(status.code, 0, "{status:?}");
                let left: Vec<_> = std::fs::read_dir(state.path().join("journal"))
                    .map(|d| d.map(|e| e.unwrap().file_name()).collect())
                    .unwrap_or_default();
                assert!(left.is_empty(), "{change}/{engine}/{delay_ms}: {left:?}");
                let again = vmoverlay(state.path(), &args);
                let done = match change {
                    "adopt" => again.code == 0 || again.code == 16,
                    _ => again.code == 0 || again.code == 4,
                };
                assert!(done, "{change}/{engine}/{delay_ms}: {again:?}");
            }
            // Back where it started: the image named directly, its data intact, no overlay.
            assert!(inactive_xml(uri, name).contains(&format!("'{}'", o.vda.display())));
            assert!(!overlay_of(&o.vda).exists() && !overlay_of(&o.vdb).exists());
            assert_eq!(checksum(&o.vda), vda_sum);
            assert!(common::images::reads_raw_pattern(&o.vdb, 0x33, "0", "1M"));
        }
    }
    assert!(
        killed >= 8,
        "only {killed} runs were killed before they ended"
    );
}

/// A UEFI VM: adopting records its firmware variables as the base's, so a discard after the
/// next session puts them back; releasing leaves the current ones.
#[test]
fn adopting_a_uefi_vm_records_its_firmware_variables() {
    let bed = testbed_shared();
    let uri = bed.uri.as_str();
    let state = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| on(state.path(), uri, args);
    let o = ordinary(uri, "vmo-adopt-uefi");
    let name = o.vm.name.as_str();
    let nvram = o.vm.make_uefi();
    o.vm.boot_to_power_off();
    let at_adopt = std::fs::read(&nvram).unwrap();
    let adopted = run(&["adopt", name, "--yes"]);
    assert_eq!(adopted.code, 0, "{adopted:?}");
    let status = status_json(state.path(), uri, name);
    assert!(status["discard_blocked"].is_null(), "{status}");
    o.vm.boot_to_power_off();
    assert_ne!(
        std::fs::read(&nvram).unwrap(),
        at_adopt,
        "the session wrote variables"
    );
    let discard = run(&["discard", name, "--yes"]);
    assert_eq!(discard.code, 0, "{discard:?}");
    assert_eq!(std::fs::read(&nvram).unwrap(), at_adopt);
    o.vm.boot_to_power_off();
    let current = std::fs::read(&nvram).unwrap();
    let released = run(&["release", name, "--yes", "--commit"]);
    assert_eq!(released.code, 0, "{released:?}");
    assert_eq!(
        std::fs::read(&nvram).unwrap(),
        current,
        "release leaves them"
    );
}
