//! `vmoverlay commit` / `discard` against a real libvirtd and the tiny real guest.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::guest::{read_image, Behaviour, TestVm};
use common::images::*;
use common::{bin, testbed_shared, virsh};

const MARK_AT: u64 = 2 << 20;

fn cli(state: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("VMOVERLAY_STATE_DIR", state)
        .env("VMOVERLAY_CONFIG_DIR", state.join("config"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn marker_guest(uri: &str, name: &str, marker: &str) -> TestVm {
    common::guest::marker_guest(uri, name, marker, MARK_AT)
}

#[test]
fn commit_puts_the_guests_marker_into_the_base_and_the_domain_still_boots() {
    let bed = testbed_shared();
    let state = tempfile::tempdir().unwrap();
    let vm = marker_guest(&bed.uri, "vmo-commit", "COMMITTED-MARK");
    let inactive_xml = virsh(&bed.uri, &["dumpxml", "--inactive", &vm.name]);
    let out = cli(
        state.path(),
        &["commit", &vm.name, "--yes", "--connect", &bed.uri],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("committed"));
    assert_eq!(read_image(&vm.base, MARK_AT, 14), b"COMMITTED-MARK");
    assert_eq!(changed(&vm.overlay), 0);
    assert_eq!(
        virsh(&bed.uri, &["dumpxml", "--inactive", &vm.name]),
        inactive_xml
    );
    // The domain boots again on the rebuilt overlay and sees the committed data.
    vm.boot_to_power_off();
    let status = cli(
        state.path(),
        &["status", &vm.name, "--json", "--connect", &bed.uri],
    );
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let disk = &v[0]["disks"][0];
    assert_eq!(disk["target"], "vda");
    assert_eq!(disk["overlay"], vm.overlay.to_str().unwrap());
    assert_eq!(disk["base"], vm.base.to_str().unwrap());
    assert!(
        disk["changed_bytes"].as_u64().unwrap() > 0,
        "the second boot wrote again"
    );
    assert!(disk["last"]["summary"]
        .as_str()
        .unwrap()
        .contains("committed"));
}

#[test]
fn discard_leaves_the_marker_out_and_the_base_identical() {
    let bed = testbed_shared();
    let state = tempfile::tempdir().unwrap();
    let vm = marker_guest(&bed.uri, "vmo-discard", "DISCARDED-MARK");
    let base_before = checksum(&vm.base);
    let out = cli(
        state.path(),
        &["discard", &vm.name, "--yes", "--connect", &bed.uri],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(checksum(&vm.base), base_before);
    assert_eq!(changed(&vm.overlay), 0);
    assert_eq!(read_image(&vm.overlay, MARK_AT, 14), vec![0u8; 14]);
    vm.boot_to_power_off();
}

#[test]
fn a_running_domain_is_refused_and_nothing_changes() {
    let bed = testbed_shared();
    let state = tempfile::tempdir().unwrap();
    let vm = TestVm::define(
        &bed.uri,
        "vmo-running",
        &Behaviour {
            hold_secs: 600,
            ..Default::default()
        },
    );
    vm.start();
    let before = (checksum(&vm.base), checksum(&vm.overlay));
    for op in ["commit", "discard"] {
        let out = cli(
            state.path(),
            &[op, &vm.name, "--yes", "--connect", &bed.uri],
        );
        assert_eq!(code(&out), 5, "{op}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("vmo-running is running"),
            "{}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("nothing was changed"),
            "{}",
            stderr(&out)
        );
    }
    vm.destroy();
    assert_eq!((checksum(&vm.base), checksum(&vm.overlay)), before);
}

#[test]
fn a_base_shared_with_another_domain_is_refused() {
    let bed = testbed_shared();
    let state = tempfile::tempdir().unwrap();
    let vm = TestVm::define(&bed.uri, "vmo-shared-a", &Behaviour::default());
    qemu_io(&vm.overlay, &["write -P 0x21 0 1M"]);
    // A second domain whose overlay uses the same base, in another directory.
    let other = TestVm::define(&bed.uri, "vmo-shared-b", &Behaviour::default());
    std::fs::remove_file(&other.overlay).unwrap();
    create_overlay(&other.overlay, vm.base.to_str().unwrap());
    let before = (checksum(&vm.base), checksum(&vm.overlay));
    let out = cli(
        state.path(),
        &["commit", &vm.name, "--yes", "--connect", &bed.uri],
    );
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("domain vmo-shared-b (vda)"),
        "{}",
        stderr(&out)
    );
    assert_eq!((checksum(&vm.base), checksum(&vm.overlay)), before);
}

/// Between the end of `qemu-img commit` and the rebuild (the base checked, the journal
/// updated) the overlay stays held: a guest started exactly then fails to start, and the
/// commit finishes. (The commit stops itself there: `VMOVERLAY_TEST_STOP_AT`.)
#[test]
fn a_domain_started_between_the_commit_and_the_rebuild_fails_to_start() {
    let bed = testbed_shared();
    let state = tempfile::tempdir().unwrap();
    let vm = TestVm::define(&bed.uri, "vmo-gap", &Behaviour::default());
    qemu_io(&vm.overlay, &["write -P 0x3d 0 4M"]);
    let commit = Command::new(bin())
        .args(["commit", &vm.name, "--yes", "--connect", &bed.uri])
        .env("VMOVERLAY_STATE_DIR", state.path())
        .env("VMOVERLAY_TEST_STOP_AT", "commit-written")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = commit.id().to_string();
    let stopped = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit(") ").next().is_some_and(|r| r.starts_with('T')))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stopped() {
        assert!(
            Instant::now() < deadline,
            "the commit never reached its end"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        reads_pattern(&vm.base, 0x3d, "0", "4M"),
        "the base is written"
    );
    let start = Command::new("virsh")
        .args(["-q", "-c", &bed.uri, "start", &vm.name])
        .output()
        .unwrap();
    let cont = Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    assert!(cont.success());
    let out = commit.wait_with_output().unwrap();
    assert!(
        !start.status.success(),
        "the domain started on the overlay about to be replaced"
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
    assert!(vm.domstate().starts_with("shut off"));
    assert_eq!(changed(&vm.overlay), 0);
    assert!(reads_pattern(&vm.base, 0x3d, "0", "4M"));
}

#[test]
fn a_domain_started_while_its_commit_runs_fails_to_start_cleanly() {
    let bed = testbed_shared();
    let state = tempfile::tempdir().unwrap();
    let vm = TestVm::define(&bed.uri, "vmo-race", &Behaviour::default());
    qemu_img(&["resize", "-q", vm.base.to_str().unwrap(), "1G"]);
    qemu_img(&["resize", "-q", vm.overlay.to_str().unwrap(), "1G"]);
    qemu_io(&vm.overlay, &["write -P 0x3c 0 512M"]);
    let commit = Command::new(bin())
        .args(["commit", &vm.name, "--yes", "--connect", &bed.uri])
        .env("VMOVERLAY_STATE_DIR", state.path())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until `qemu-img commit` itself holds the overlay (the preconditions' own brief
    // reads lock it too), then try to start the domain.
    let deadline = Instant::now() + Duration::from_secs(30);
    while qemu_img_commit_pid(&vm.overlay).is_none()
        || !vmoverlay::overlay::image::is_locked(&vm.overlay).unwrap()
    {
        assert!(Instant::now() < deadline, "the commit never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let start = Command::new("virsh")
        .args(["-q", "-c", &bed.uri, "start", &vm.name])
        .output()
        .unwrap();
    let out = commit.wait_with_output().unwrap();
    assert!(
        !start.status.success(),
        "the domain started while its overlay was being committed"
    );
    let why = String::from_utf8_lossy(&start.stderr);
    assert!(
        why.contains("lock"),
        "start failed for another reason: {why}"
    );
    assert!(vm.domstate().starts_with("shut off"));
    if !out.status.success() {
        // The failing start can briefly hold the base, so qemu-img's reopen of it for writing
        // may lose the race. Then nothing may be lost: the commit says the data is intact,
        // stays journaled, and the next start finishes it.
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("the commit lost the race with the failing start: {err}");
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("intact") && err.contains("journaled"), "{err}");
        assert!(
            reads_pattern(&vm.overlay, 0x3c, "0", "512M"),
            "the guest's view is complete"
        );
        let next = cli(state.path(), &["status", &vm.name, "--connect", &bed.uri]);
        assert_eq!(code(&next), 0, "{}", stderr(&next));
        assert!(
            stderr(&next).contains("finished the interrupted commit"),
            "{}",
            stderr(&next)
        );
    }
    assert!(reads_pattern(&vm.base, 0x3c, "0", "512M"));
    assert_eq!(changed(&vm.overlay), 0);
}

/// Defines a domain with the given `<devices>` content (never started).
fn define_raw(uri: &str, name: &str, devices: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let xml = format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>{devices}</devices></domain>"
    );
    let path = dir.path().join("d.xml");
    std::fs::write(&path, xml).unwrap();
    let _ = Command::new("virsh")
        .args(["-q", "-c", uri, "undefine", name])
        .output();
    virsh(uri, &["define", path.to_str().unwrap()]);
    dir
}

struct Undefine<'a>(&'a str, &'a str);
impl Drop for Undefine<'_> {
    fn drop(&mut self) {
        let _ = Command::new("virsh")
            .args(["-q", "-c", self.0, "undefine", self.1])
            .output();
    }
}

#[test]
fn unmanaged_domains_get_clear_errors_and_no_file_changes() {
    let bed = testbed_shared();
    let state = tempfile::tempdir().unwrap();
    let uri = bed.uri.as_str();

    let _a = Undefine(uri, "vmo-nodisks");
    define_raw(uri, "vmo-nodisks", "");
    let out = cli(
        state.path(),
        &["commit", "vmo-nodisks", "--yes", "--connect", uri],
    );
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(stderr(&out).contains("it has no disks"), "{}", stderr(&out));

    let _b = Undefine(uri, "vmo-network");
    define_raw(
        uri,
        "vmo-network",
        "<disk type='network' device='disk'><driver name='qemu' type='raw'/>\
         <source protocol='nbd' name='x'><host name='127.0.0.1' port='10809'/></source>\
         <target dev='vda' bus='virtio'/></disk>",
    );
    let out = cli(
        state.path(),
        &["discard", "vmo-network", "--yes", "--connect", uri],
    );
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("vda: network disk"),
        "{}",
        stderr(&out)
    );

    // An overlay without a base, a raw disk, and a symlinked overlay: each named, none touched.
    let imgs = tempfile::tempdir().unwrap();
    let p = |n: &str| imgs.path().join(n);
    create_base(&p("base.qcow2"), "16M");
    create_base(&p("gone.qcow2"), "16M");
    create_overlay(&p("orphan.qcow2"), "gone.qcow2");
    std::fs::remove_file(p("gone.qcow2")).unwrap();
    create_overlay(&p("real.qcow2"), "base.qcow2");
    std::os::unix::fs::symlink(p("real.qcow2"), p("link.qcow2")).unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "raw",
        p("raw.img").to_str().unwrap(),
        "8M",
    ]);
    let disk = |file: &Path, fmt: &str, dev: &str| {
        format!(
            "<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>\
             <source file='{}'/><target dev='{dev}' bus='virtio'/></disk>",
            file.display()
        )
    };
    let _c = Undefine(uri, "vmo-bad");
    define_raw(
        uri,
        "vmo-bad",
        &[
            disk(&p("orphan.qcow2"), "qcow2", "vda"),
            disk(&p("raw.img"), "raw", "vdb"),
            disk(&p("link.qcow2"), "qcow2", "vdc"),
        ]
        .concat(),
    );
    let before = snapshot(imgs.path());
    let out = cli(
        state.path(),
        &["commit", "vmo-bad", "--yes", "--connect", uri],
    );
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("vda:") && err.contains("gone.qcow2"), "{err}");
    assert!(err.contains("vdb: raw image"), "{err}");
    assert!(err.contains("vdc:") && err.contains("symlink"), "{err}");
    assert!(err.contains("Nothing was changed"), "{err}");
    let out = cli(
        state.path(),
        &[
            "commit",
            "vmo-bad",
            "--disk",
            "vdz",
            "--yes",
            "--connect",
            uri,
        ],
    );
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let out = cli(
        state.path(),
        &["commit", "no-such-vm", "--yes", "--connect", uri],
    );
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert_eq!(snapshot(imgs.path()), before);
}

#[test]
fn pinned_base_must_match_the_overlay() {
    let bed = testbed_shared();
    let state = tempfile::tempdir().unwrap();
    let vm = TestVm::define(&bed.uri, "vmo-pinned", &Behaviour::default());
    qemu_io(&vm.overlay, &["write -P 0x44 0 1M"]);
    let config = state.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let wrong = serde_json::json!({"vmo-pinned": [{"overlay": vm.overlay, "base": "/elsewhere/base.qcow2"}]});
    std::fs::write(config.join("pins.json"), wrong.to_string()).unwrap();
    let out = cli(
        state.path(),
        &["commit", &vm.name, "--yes", "--connect", &bed.uri],
    );
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("pinned base /elsewhere/base.qcow2"),
        "{}",
        stderr(&out)
    );
    let right = serde_json::json!({"vmo-pinned": [{"overlay": vm.overlay, "base": vm.base}]});
    std::fs::write(config.join("pins.json"), right.to_string()).unwrap();
    // Without --yes and without a terminal: refused, nothing written.
    let before = (checksum(&vm.base), checksum(&vm.overlay));
    let out = cli(state.path(), &["commit", &vm.name, "--connect", &bed.uri]);
    assert_eq!(code(&out), 10, "{}", stderr(&out));
    assert!(stderr(&out).contains("without --yes"), "{}", stderr(&out));
    assert_eq!((checksum(&vm.base), checksum(&vm.overlay)), before);
    let out = cli(
        state.path(),
        &["commit", &vm.name, "--yes", "--connect", &bed.uri],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(reads_pattern(&vm.base, 0x44, "0", "1M"));
}

#[test]
fn on_a_terminal_it_asks_and_shows_progress() {
    let bed = testbed_shared();
    let state = tempfile::tempdir().unwrap();
    let vm = TestVm::define(&bed.uri, "vmo-terminal", &Behaviour::default());
    qemu_io(&vm.overlay, &["write -P 0x6b 0 8M"]);
    // `script` runs the command on a real pseudo-terminal and forwards our stdin to it.
    let run_on_tty = |answer: &str| {
        let cmd = format!("{} commit {} --connect '{}'", bin(), vm.name, bed.uri);
        let mut child = Command::new("script")
            .args(["-q", "-e", "-c", &cmd, "/dev/null"])
            .env("VMOVERLAY_STATE_DIR", state.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("script (util-linux) is installed");
        std::thread::sleep(Duration::from_millis(1500));
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(answer.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, screen) = run_on_tty("n\n");
    assert_eq!(code, Some(10), "{screen}");
    assert!(
        screen.contains("Commit 8.0 MiB written by vmo-terminal (vda) into"),
        "{screen}"
    );
    assert!(screen.contains("not confirmed"), "{screen}");
    assert!(
        reads_pattern(&vm.base, 0x00, "0", "8M"),
        "nothing was committed"
    );
    let (code, screen) = run_on_tty("y\n");
    assert_eq!(code, Some(0), "{screen}");
    assert!(
        screen.contains("committing vda"),
        "progress is shown: {screen}"
    );
    assert!(screen.contains("committed 8.0 MiB"), "{screen}");
    assert!(reads_pattern(&vm.base, 0x6b, "0", "8M"));
}
