//! Nothing lost with real VMs: each state of a real domain in which `commit` or `discard` would
//! lose data or corrupt something is set up on the test-bed libvirtd with real qcow2 images, and
//! both operations must refuse it with their own exit code and a message, changing no byte of
//! any image and nothing libvirt knows; `status --json` names what blocks them.

mod common;

use std::path::Path;

use common::guest::{qemu_img, read_image, Behaviour};
use common::images::{changed, checksum, create_base, create_overlay, info, reads_pattern};
use common::vm_state::*;
use common::{testbed_shared, virsh};

fn state_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A guest that stays up (until destroyed) once started.
fn held() -> Behaviour {
    Behaviour {
        hold_secs: 600,
        ..Default::default()
    }
}

fn image_snapshots(path: &Path) -> Vec<String> {
    info(path)["snapshots"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| s["name"].as_str().unwrap().into())
                .collect()
        })
        .unwrap_or_default()
}

fn image_bitmaps(path: &Path) -> Vec<String> {
    info(path)["format-specific"]["data"]["bitmaps"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| s["name"].as_str().unwrap().into())
                .collect()
        })
        .unwrap_or_default()
}

/// A refused `vm`: both operations exit `code` saying `needles`, nothing changes, and
/// `status --json` lists a blocked entry of `kind` whose message the commit printed.
fn refused(uri: &str, vm: &StateVm, code: i32, needles: &[&str], kind: &str) -> serde_json::Value {
    let state = state_dir();
    let recapture = || capture(uri, &[&vm.name], &[vm.dir.path()]);
    let before = recapture();
    let err = assert_both_refused(
        state.path(),
        uri,
        &vm.name,
        code,
        needles,
        &before,
        recapture,
    );
    let status = status_json(state.path(), uri, &vm.name);
    let entry = blocked_entry(&status, kind);
    let message = entry["message"].as_str().unwrap();
    assert!(
        err.contains(message),
        "status says {message:?}, commit said {err:?}"
    );
    entry
}

#[test]
fn a_managed_save_blocks_commit_and_discard() {
    let bed = testbed_shared();
    let state = state_dir();
    let vm = StateVm::define(&bed.uri, "vmo-st-msave", &held());
    vm.start_running();
    virsh(&bed.uri, &["managedsave", &vm.name]);
    assert_eq!(vm.domstate(), "shut off (saved)");
    let save = Path::new("/var/lib/libvirt/qemu/save").join(format!("{}.save", vm.name));
    let save_sum = checksum(&save);
    let recapture = || capture(&bed.uri, &[&vm.name], &[vm.dir.path()]);
    let before = recapture();
    let dominfo = &before.libvirt[&format!("{}: virsh dominfo", vm.name)];
    assert!(
        dominfo
            .lines()
            .any(|l| l.starts_with("Managed save:") && l.ends_with("yes")),
        "{dominfo}"
    );
    let err = assert_both_refused(
        state.path(),
        &bed.uri,
        &vm.name,
        11,
        &["virsh managedsave-remove", "Nothing was changed"],
        &before,
        recapture,
    );
    assert_eq!(checksum(&save), save_sum, "the saved memory image changed");
    let status = status_json(state.path(), &bed.uri, &vm.name);
    let entry = blocked_entry(&status, "managed-save");
    let said = format!("vmoverlay: {}", entry["message"].as_str().unwrap());
    assert!(
        err.lines().any(|l| l == said),
        "status --json gives the sentence commit printed: {said:?}, commit: {err:?}"
    );
    // The guest still resumes from its saved memory on the disk it had.
    vm.start();
    assert_eq!(vm.domstate(), "running (restored)");
    vm.destroy();
    assert!(reads_pattern(&vm.overlay, 0x5a, "0", "1M"));
}

#[test]
fn a_libvirt_internal_snapshot_blocks_commit_and_discard() {
    let bed = testbed_shared();
    let vm = StateVm::shut_off(&bed.uri, "vmo-st-snap");
    virsh(&bed.uri, &["snapshot-create-as", &vm.name, "s1"]);
    assert_eq!(
        image_snapshots(&vm.overlay),
        ["s1"],
        "internal, in the overlay"
    );
    refused(&bed.uri, &vm, 12, &["snapshot"], "snapshots");
    assert_eq!(
        virsh(&bed.uri, &["snapshot-list", "--name", &vm.name]).trim(),
        "s1"
    );
}

#[test]
fn a_libvirt_external_disk_only_snapshot_blocks_commit_and_discard() {
    let bed = testbed_shared();
    let vm = StateVm::shut_off(&bed.uri, "vmo-st-extsnap");
    // libvirt 9.0 takes it on a shut-off domain: a new overlay.s2 on top of the overlay, and
    // the persistent XML's disk now names it.
    virsh(
        &bed.uri,
        &["snapshot-create-as", &vm.name, "s2", "--disk-only"],
    );
    let top = vm.dir.path().join("overlay.s2");
    assert_eq!(
        info(&top)["full-backing-filename"],
        vm.overlay.to_str().unwrap()
    );
    let xml = virsh(&bed.uri, &["dumpxml", "--inactive", &vm.name]);
    assert!(
        xml.contains(&format!("<source file='{}'/>", top.display())),
        "{xml}"
    );
    refused(&bed.uri, &vm, 12, &["snapshot"], "snapshots");
}

#[test]
fn an_internal_snapshot_only_in_the_image_blocks_commit_and_discard() {
    let bed = testbed_shared();
    let vm = StateVm::shut_off(&bed.uri, "vmo-st-imgsnap");
    qemu_img(&["snapshot", "-c", "s", vm.overlay.to_str().unwrap()]);
    assert_eq!(
        virsh(&bed.uri, &["snapshot-list", "--name", &vm.name]).trim(),
        ""
    );
    let entry = refused(&bed.uri, &vm, 12, &["snapshot"], "internal-snapshots");
    assert_eq!(entry["disk"], "vda", "{entry}");
    assert_eq!(image_snapshots(&vm.overlay), ["s"]);
}

#[test]
fn a_libvirt_checkpoint_blocks_commit_and_discard() {
    let bed = testbed_shared();
    let vm = StateVm::define(&bed.uri, "vmo-st-ckpt", &held());
    // libvirt 9.0: "cannot create checkpoint for inactive domain"; it needs the guest running.
    vm.start_running();
    virsh(&bed.uri, &["checkpoint-create-as", &vm.name, "c1"]);
    vm.destroy();
    assert!(vm.domstate().starts_with("shut off"));
    assert_eq!(
        image_bitmaps(&vm.overlay),
        ["c1"],
        "the checkpoint's bitmap"
    );
    refused(&bed.uri, &vm, 13, &["checkpoint"], "checkpoints");
    assert_eq!(
        virsh(&bed.uri, &["checkpoint-list", "--name", &vm.name]).trim(),
        "c1"
    );
}

#[test]
fn a_persistent_bitmap_only_in_the_image_blocks_commit_and_discard() {
    let bed = testbed_shared();
    let vm = StateVm::shut_off(&bed.uri, "vmo-st-bitmap");
    qemu_img(&["bitmap", "--add", vm.overlay.to_str().unwrap(), "b0"]);
    assert_eq!(image_bitmaps(&vm.overlay), ["b0"]);
    let entry = refused(&bed.uri, &vm, 13, &["bitmap"], "bitmaps");
    assert_eq!(entry["disk"], "vda", "{entry}");
}

#[test]
fn an_xml_backing_store_naming_another_file_blocks_commit_and_discard() {
    let bed = testbed_shared();
    let vm = StateVm::shut_off(&bed.uri, "vmo-st-xmlother");
    let other = vm.dir.path().join("other-base.qcow2");
    create_base(&other, "16M");
    vm.set_xml_backing_store(&other);
    let entry = refused(
        &bed.uri,
        &vm,
        14,
        &[other.to_str().unwrap(), vm.base.to_str().unwrap()],
        "backing-mismatch",
    );
    assert_eq!(entry["disk"], "vda", "{entry}");
}

#[test]
fn an_xml_backing_store_naming_the_same_file_commits_into_it() {
    let bed = testbed_shared();
    let state = state_dir();
    let vm = StateVm::shut_off(&bed.uri, "vmo-st-xmlsame");
    vm.set_xml_backing_store(&vm.base);
    let xml = virsh(&bed.uri, &["dumpxml", "--inactive", &vm.name]);
    let status = status_json(state.path(), &bed.uri, &vm.name);
    assert_eq!(
        blocked(&status),
        Vec::<serde_json::Value>::new(),
        "{status}"
    );
    let ran = vmoverlay(
        state.path(),
        &["commit", &vm.name, "--yes", "--connect", &bed.uri],
    );
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert!(
        reads_pattern(&vm.base, 0x5a, "0", "1M"),
        "the data is in the base"
    );
    assert_eq!(changed(&vm.overlay), 0);
    assert_eq!(virsh(&bed.uri, &["dumpxml", "--inactive", &vm.name]), xml);
}

/// `vm`'s base has another user, `who`, that only a search beyond the base's directory finds:
/// the commit is refused naming it and changes nothing (neither `vm`'s files nor the other
/// user's `domains` and `dirs`); a discard of `vm` still works and touches only its overlay.
fn commit_refused_discard_works(
    uri: &str,
    vm: &StateVm,
    who: &str,
    domains: &[&str],
    dirs: &[&Path],
) {
    let state = state_dir();
    let mut all_domains = vec![vm.name.as_str()];
    all_domains.extend(domains);
    let mut all_dirs = vec![vm.dir.path()];
    all_dirs.extend(dirs);
    let recapture = || capture(uri, &all_domains, &all_dirs);
    let before = recapture();
    let ran = vmoverlay(
        state.path(),
        &["commit", &vm.name, "--yes", "--connect", uri],
    );
    assert_eq!(ran.code, 7, "commit: {}{}", ran.stdout, ran.stderr);
    assert!(ran.stderr.contains(who), "{who} not named: {}", ran.stderr);
    assert_unchanged("after commit", &before, &recapture());

    let others = || capture(uri, domains, dirs);
    let others_before = others();
    let base_before = checksum(&vm.base);
    let ran = vmoverlay(
        state.path(),
        &["discard", &vm.name, "--yes", "--connect", uri],
    );
    assert_eq!(ran.code, 0, "discard: {}", ran.stderr);
    assert_eq!(changed(&vm.overlay), 0);
    assert_eq!(read_image(&vm.overlay, 0, 16), vec![0u8; 16]);
    assert_eq!(checksum(&vm.base), base_before);
    assert_unchanged("after discard", &others_before, &others());
}

#[test]
fn a_domain_in_another_directory_on_the_same_base_blocks_commit_only() {
    let bed = testbed_shared();
    let vm = StateVm::shut_off(&bed.uri, "vmo-st-dir-a");
    let other = StateVm::shut_off(&bed.uri, "vmo-st-dir-b");
    std::fs::remove_file(&other.overlay).unwrap();
    create_overlay(&other.overlay, vm.base.to_str().unwrap());
    commit_refused_discard_works(
        &bed.uri,
        &vm,
        "vmo-st-dir-b",
        &[&other.name],
        &[other.dir.path()],
    );
}

#[test]
fn a_domain_on_a_pool_volume_over_the_same_base_blocks_commit_only() {
    let bed = testbed_shared();
    let vm = StateVm::shut_off(&bed.uri, "vmo-st-vol-a");
    let pool = Pool::create(&bed.uri, "vmo-st-vol-pool");
    pool.overlay_volume("vmo-st-vol-b.qcow2", &vm.base);
    let other = StateVm::shut_off(&bed.uri, "vmo-st-vol-b");
    other.use_volume(&pool.name, "vmo-st-vol-b.qcow2");
    commit_refused_discard_works(
        &bed.uri,
        &vm,
        "vmo-st-vol-b",
        &[&other.name],
        &[other.dir.path(), pool.dir.path()],
    );
}

#[test]
fn a_pool_volume_over_the_same_base_used_by_no_domain_blocks_commit_only() {
    let bed = testbed_shared();
    let vm = StateVm::shut_off(&bed.uri, "vmo-st-pool-a");
    let pool = Pool::create(&bed.uri, "vmo-st-pool-pool");
    pool.overlay_volume("vmo-st-orphan-volume.qcow2", &vm.base);
    commit_refused_discard_works(
        &bed.uri,
        &vm,
        "vmo-st-orphan-volume.qcow2",
        &[],
        &[pool.dir.path()],
    );
}

/// The rebuild's window made deterministic: the operation pauses with QEMU's locks on the old
/// overlay held and the new overlay ready (a test hook); a guest started at that moment fails to
/// start cleanly, and the operation then completes with nothing lost. Before the locks were
/// held, that guest ran on the old overlay and everything it wrote was unlinked with it.
#[test]
fn a_guest_started_while_its_overlay_is_replaced_fails_to_start_cleanly() {
    let bed = testbed_shared();
    for op in ["discard", "commit"] {
        let vm = StateVm::shut_off(&bed.uri, &format!("vmo-st-window-{op}"));
        let state = state_dir();
        let (go, hook) = (state.path().join("go"), state.path().join("hook.jsonl"));
        let child = std::process::Command::new(common::bin())
            .args([op, vm.name.as_str(), "--yes", "--connect", bed.uri.as_str()])
            .env("LC_ALL", "C")
            .env("VMOVERLAY_STATE_DIR", state.path())
            .env("VMOVERLAY_CONFIG_DIR", state.path().join("config"))
            .env("VMOVERLAY_TEST_HOOK", &hook)
            .env("VMOVERLAY_TEST_PAUSE_BEFORE_REPLACE", &go)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !std::fs::read_to_string(&hook).is_ok_and(|h| h.contains("before-replace")) {
            assert!(std::time::Instant::now() < deadline, "{op} never paused");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let start = std::process::Command::new("virsh")
            .args(["-q", "-c", &bed.uri, "start", &vm.name])
            .output()
            .unwrap();
        let why = String::from_utf8_lossy(&start.stderr);
        assert!(!start.status.success(), "{op}: the guest started");
        assert!(why.contains("lock"), "{op}: {why}");
        assert!(vm.domstate().starts_with("shut off"), "{op}");
        std::fs::write(&go, "").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{op}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            changed(&vm.overlay),
            0,
            "{op}: the overlay is rebuilt empty"
        );
        assert_eq!(
            reads_pattern(&vm.base, 0x5a, "0", "1M"),
            op == "commit",
            "{op}: the guest's data is where the operation put it"
        );
    }
}

/// Kills `vmoverlay` itself at many points of a commit and of a discard (qemu-img engine),
/// then checks that the guest's data is in the overlay or the base, never lost, and that the
/// next runs finish the operation or explain, ending with the overlay empty.
#[test]
fn killing_vmoverlay_at_any_point_loses_nothing() {
    kill_sweep("qemu-img", 10);
}

/// The same sweep with libvirtd doing the work (a paused start and a block commit).
#[test]
fn killing_vmoverlay_at_any_point_of_the_libvirt_engine_loses_nothing() {
    kill_sweep("libvirt", 9);
}

/// How long `op` takes with `engine` on this machine now, on a VM like the sweep's: the
/// sweep's kill points are spread over it, so they fall inside the operation on a fast or a
/// loaded machine alike.
fn duration_of(engine: &str, op: &str) -> std::time::Duration {
    let bed = testbed_shared();
    let name = format!("vmo-st-kill-{engine}-{op}-timed");
    let vm = StateVm::shut_off(&bed.uri, &name);
    qemu_io_write(&vm.overlay, "write -P 0x5a 1M 15M");
    let state = state_dir();
    let started = std::time::Instant::now();
    let ran = vmoverlay(
        state.path(),
        &[
            op,
            &name,
            "--yes",
            "--connect",
            &bed.uri,
            "--engine",
            engine,
        ],
    );
    assert_eq!(ran.code, 0, "{ran:?}");
    started.elapsed()
}

fn kill_sweep(engine: &str, points: u32) {
    let bed = testbed_shared();
    let mut killed_mid_operation = 0;
    for op in ["commit", "discard"] {
        let whole = duration_of(engine, op).as_millis() as u64;
        let delays_ms: Vec<u64> = (0..points as u64)
            .map(|i| whole * i / points as u64)
            .collect();
        for &delay_ms in &delays_ms {
            let name = format!("vmo-st-kill-{engine}-{op}-{delay_ms}");
            let vm = StateVm::shut_off(&bed.uri, &name);
            qemu_io_write(&vm.overlay, "write -P 0x5a 1M 15M");
            let base_before = checksum(&vm.base);
            let state = state_dir();
            let args = [
                op,
                name.as_str(),
                "--yes",
                "--connect",
                &bed.uri,
                "--engine",
                engine,
            ];
            if run_killed_after(state.path(), &args, delay_ms) {
                killed_mid_operation += 1;
            }
            // Never lost: the guest's view (overlay over base) still reads every byte it wrote,
            // unless a discard had already replaced the overlay whole, as it was asked to.
            let intact = reads_pattern(&vm.overlay, 0x5a, "0", "16M");
            match op {
                "commit" => assert!(intact, "commit killed after {delay_ms} ms: data lost"),
                _ => {
                    assert!(
                        intact || changed(&vm.overlay) == 0,
                        "discard killed after {delay_ms} ms: a half-discarded overlay"
                    );
                    assert_eq!(checksum(&vm.base), base_before, "discard wrote the base");
                }
            }
            // The next run finishes or explains; another run of the same operation ends it.
            let status = vmoverlay(state.path(), &["status", &name, "--connect", &bed.uri]);
            assert_eq!(status.code, 0, "{op}/{delay_ms}: {status:?}");
            let again = vmoverlay(state.path(), &[op, &name, "--yes", "--connect", &bed.uri]);
            let pending = std::fs::read_dir(state.path().join("journal"))
                .map(|d| d.count())
                .unwrap_or(0);
            assert!(
                again.code == 0 || again.stderr.contains("no changes") || pending == 0,
                "{op}/{delay_ms}: {again:?}"
            );
            assert_eq!(pending, 0, "{op}/{delay_ms}: a journal record is left");
            assert_eq!(changed(&vm.overlay), 0, "{op}/{delay_ms}: {again:?}");
            match op {
                "commit" => assert!(
                    reads_pattern(&vm.base, 0x5a, "0", "16M"),
                    "{op}/{delay_ms}: the data is in the base"
                ),
                _ => assert_eq!(checksum(&vm.base), base_before, "{op}/{delay_ms}"),
            }
        }
    }
    eprintln!("{engine}: {killed_mid_operation} runs killed before they ended");
    assert!(
        killed_mid_operation >= points,
        "{engine}: the sweep killed only {killed_mid_operation} runs before they ended"
    );
}

fn qemu_io_write(path: &Path, cmd: &str) {
    common::images::qemu_io(path, &[cmd]);
}

/// A real UEFI guest (Debian's OVMF, direct kernel boot): its firmware variables follow its
/// disk. A discard puts back the variables recorded when the disk and the base last agreed (a
/// commit records them); without such a record a discard is refused (exit 15) unless told to
/// keep them; `--keep-firmware` keeps them as they are.
#[test]
fn a_uefi_guests_firmware_variables_follow_its_disk() {
    let bed = testbed_shared();
    let state = state_dir();
    let name = "vmo-st-uefi";
    let behaviour = Behaviour {
        marker: Some("UEFI-SESSION".into()),
        ..Default::default()
    };
    let vm = StateVm::define(&bed.uri, name, &behaviour);
    let nvram = vm.make_uefi();
    let uri = bed.uri.as_str();
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--connect", uri]);
        vmoverlay(state.path(), &all)
    };
    // A session through the firmware: libvirt creates the variables from the template, OVMF
    // writes its own, the guest writes to its disk.
    vm.boot_to_power_off();
    assert!(nvram.is_file(), "libvirt made the variables file");
    let template = std::fs::read("/usr/share/OVMF/OVMF_VARS_4M.fd").unwrap();
    let after_first = std::fs::read(&nvram).unwrap();
    assert_ne!(after_first, template, "the firmware wrote its variables");
    // Nothing recorded yet: a discard would keep the session's variables with the base's disk.
    let refused = run(&["discard", name, "--yes"]);
    assert_eq!(refused.code, 15, "{refused:?}");
    assert!(refused.stderr.contains("--keep-firmware"), "{refused:?}");
    assert!(
        reads_pattern(&vm.overlay, 0x5a, "0", "1M"),
        "nothing discarded"
    );
    let status = status_json(state.path(), uri, name);
    assert!(
        blocked(&status).is_empty(),
        "commit stays offered: {status}"
    );
    assert_eq!(status["discard_blocked"]["kind"], "firmware-variables");
    assert_eq!(status["discard_blocked"]["exit_code"], 15);
    // A commit keeps the variables and records them as the base's.
    let commit = run(&["commit", name, "--yes"]);
    assert_eq!(commit.code, 0, "{commit:?}");
    let recorded = std::fs::read(&nvram).unwrap();
    assert_eq!(recorded, after_first, "a commit leaves the variables alone");
    // The next session changes them again; its discard puts back the recorded ones.
    vm.boot_to_power_off();
    let after_second = std::fs::read(&nvram).unwrap();
    assert_ne!(
        after_second, recorded,
        "the second boot wrote variables too"
    );
    assert!(changed(&vm.overlay) > 0);
    let base_before = checksum(&vm.base);
    let discard = run(&["discard", name, "--yes"]);
    assert_eq!(discard.code, 0, "{discard:?}");
    assert_eq!(changed(&vm.overlay), 0);
    assert_eq!(checksum(&vm.base), base_before);
    assert_eq!(
        std::fs::read(&nvram).unwrap(),
        recorded,
        "the variables that go with the base are back"
    );
    // --keep-firmware keeps what the session wrote.
    vm.boot_to_power_off();
    let after_third = std::fs::read(&nvram).unwrap();
    let keep = run(&["discard", name, "--yes", "--keep-firmware"]);
    assert_eq!(keep.code, 0, "{keep:?}");
    assert_eq!(std::fs::read(&nvram).unwrap(), after_third);
    // And the guest still boots on what it was left with.
    vm.boot_to_power_off();
}

/// Never stuck: an operation interrupted while its domain is renamed is still finished (the
/// journal record follows the domain by UUID), and a journal that cannot be written (a full
/// filesystem) leaves no record behind that would block the overlay.
#[test]
fn a_renamed_domain_is_finished_and_a_full_journal_leaves_no_record() {
    let bed = testbed_shared();
    let state = state_dir();
    let (old, new) = ("vmo-st-rename-a", "vmo-st-rename-b");
    remove_domain(&bed.uri, new);
    let vm = StateVm::shut_off(&bed.uri, old);
    let (go, hook) = (state.path().join("go"), state.path().join("hook.jsonl"));
    let mut child = std::process::Command::new(common::bin())
        .args(["commit", old, "--yes", "--connect", bed.uri.as_str()])
        .env("VMOVERLAY_STATE_DIR", state.path())
        .env("VMOVERLAY_CONFIG_DIR", state.path().join("config"))
        .env("VMOVERLAY_TEST_HOOK", &hook)
        .env("VMOVERLAY_TEST_PAUSE_BEFORE_REPLACE", &go)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::fs::read_to_string(&hook).is_ok_and(|h| h.contains("before-replace")) {
        assert!(std::time::Instant::now() < deadline, "commit never paused");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    virsh(&bed.uri, &["domrename", old, new]);
    let renamed = RenamedBack {
        uri: bed.uri.clone(),
        from: new,
        to: old,
    };
    let status = vmoverlay(state.path(), &["status", "--connect", &bed.uri]);
    assert_eq!(status.code, 0, "{status:?}");
    assert!(
        status.stderr.contains("finished the interrupted commit"),
        "{status:?}"
    );
    assert_eq!(changed(&vm.overlay), 0);
    assert!(reads_pattern(&vm.base, 0x5a, "0", "1M"));
    drop(renamed);

    // A journal on a full filesystem: the commit is refused, nothing changes, no record stays.
    let full = state_dir();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(full.path())
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a small tmpfs (needs root)");
    let _unmount = Unmount(full.path().to_path_buf());
    std::fs::create_dir_all(full.path().join("journal")).unwrap();
    let filler = vec![0u8; 60 * 1024];
    let _ = std::fs::write(full.path().join("filler"), &filler);
    common::images::qemu_io(&vm.overlay, &["write -P 0x6b 2M 1M"]);
    let (base_before, overlay_before) = (checksum(&vm.base), checksum(&vm.overlay));
    let ran = vmoverlay(
        full.path(),
        &["commit", old, "--yes", "--connect", &bed.uri],
    );
    assert_eq!(ran.code, 9, "{ran:?}");
    assert!(ran.stderr.contains("Nothing was changed"), "{ran:?}");
    let left: Vec<_> = std::fs::read_dir(full.path().join("journal"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "a record was left behind: {left:?}");
    assert_eq!(
        (checksum(&vm.base), checksum(&vm.overlay)),
        (base_before, overlay_before)
    );
}

struct RenamedBack<'a> {
    uri: String,
    from: &'a str,
    to: &'a str,
}

impl Drop for RenamedBack<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("virsh")
            .args(["-q", "-c", &self.uri, "domrename", self.from, self.to])
            .output();
    }
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// What no scan can see, the user can name: an overlay of the base in a directory that is no
/// sibling, no pool and no domain's goes unnoticed, until that directory is listed in the
/// `scan-dirs.json` setting; then the commit is refused.
#[test]
fn an_unregistered_overlay_is_found_in_a_directory_the_user_lists() {
    let bed = testbed_shared();
    let vm = StateVm::shut_off(&bed.uri, "vmo-st-scan");
    let elsewhere = tempfile::tempdir().unwrap();
    let hidden = elsewhere.path().join("copy-of-the-vm.qcow2");
    create_overlay(&hidden, vm.base.to_str().unwrap());
    let state = state_dir();
    std::fs::create_dir_all(state.path().join("config")).unwrap();
    std::fs::write(
        state.path().join("config/scan-dirs.json"),
        serde_json::json!([elsewhere.path()]).to_string(),
    )
    .unwrap();
    let before = checksum(&vm.base);
    let ran = vmoverlay(
        state.path(),
        &["commit", &vm.name, "--yes", "--connect", &bed.uri],
    );
    assert_eq!(ran.code, 7, "{ran:?}");
    assert!(ran.stderr.contains("copy-of-the-vm.qcow2"), "{ran:?}");
    assert_eq!(checksum(&vm.base), before);
    // Without the setting it is invisible (what the README says about such images).
    std::fs::remove_file(state.path().join("config/scan-dirs.json")).unwrap();
    let ran = vmoverlay(
        state.path(),
        &["commit", &vm.name, "--yes", "--connect", &bed.uri],
    );
    assert_eq!(ran.code, 0, "{ran:?}");
}

/// A user of the base on another connection this process was given (here libvirt's test
/// driver, whose domain's disk is an overlay of the same base file): the commit is refused and
/// names it with its connection; without that connection it would not be seen.
#[test]
fn a_domain_on_another_connection_on_the_same_base_blocks_commit() {
    let bed = testbed_shared();
    let vm = StateVm::shut_off(&bed.uri, "vmo-st-otherconn");
    let elsewhere = tempfile::tempdir().unwrap();
    let other = elsewhere.path().join("session-vm.qcow2");
    create_overlay(&other, vm.base.to_str().unwrap());
    let node = elsewhere.path().join("node.xml");
    std::fs::write(
        &node,
        format!(
            "<node><domain type='test'><name>session-vm</name><memory>65536</memory>\
             <os><type>hvm</type></os><devices><disk type='file' device='disk'>\
             <driver name='qemu' type='qcow2'/><source file='{}'/>\
             <target dev='vda' bus='virtio'/></disk></devices></domain></node>",
            other.display()
        ),
    )
    .unwrap();
    let test_uri = format!("test://{}", node.display());
    let state = state_dir();
    let before = checksum(&vm.base);
    let ran = vmoverlay(
        state.path(),
        &[
            "commit",
            &vm.name,
            "--yes",
            "--connect",
            &bed.uri,
            "--connect",
            &test_uri,
        ],
    );
    assert_eq!(ran.code, 7, "{ran:?}");
    assert!(
        ran.stderr.contains("session-vm") && ran.stderr.contains(&test_uri),
        "{ran:?}"
    );
    assert_eq!(checksum(&vm.base), before);
}
