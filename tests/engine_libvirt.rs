//! The libvirt engine: an unprivileged user (`nobody`) commits and discards root-owned 0600
//! images of a real guest through a real libvirtd's read-write socket; libvirtd does the work.
//! Faults: libvirtd killed, and QEMU killed, during the block commit.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::desktop::{labels, Hook, Kind, Session};
use common::guest::{read_image, Behaviour, TestVm};
use common::images::{changed, checksum, qemu_img, qemu_io, reads_pattern};
use common::{bin, testbed_exclusive, testbed_shared, virsh, TestbedGuard};

const MARK_AT: u64 = 2 << 20;
const NOBODY: u32 = 65534;

/// A state directory `nobody` owns (journal and settings of the unprivileged CLI).
fn nobody_home() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("vmoverlay-nobody-")
        .tempdir()
        .unwrap();
    std::os::unix::fs::chown(d.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    d
}

fn as_nobody(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
        "--",
        bin(),
    ])
    .args(args)
    .env_clear()
    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    .env("HOME", home)
    .env("VMOVERLAY_STATE_DIR", home.join("state"))
    .env("VMOVERLAY_CONFIG_DIR", home.join("config"))
    .env("RUST_LOG", "vmoverlay=info")
    .stdin(Stdio::null());
    c
}

/// `vmoverlay commit VM --yes` as `nobody`, running while the test goes on.
fn commit_in_background(home: &Path, vm: &TestVm, uri: &str) -> ChildGuard {
    ChildGuard(
        as_nobody(home, &["commit", &vm.name, "--yes", "--connect", uri])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

fn run_as_nobody(home: &Path, args: &[&str]) -> Output {
    as_nobody(home, args).output().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn wait_for(what: &str, within: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A guest that wrote `marker` to its overlay and powered off; then its images are made
/// root-owned 0600 in a root-only directory, as in /var/lib/libvirt/images.
fn private_marker_guest(uri: &str, name: &str, marker: &str) -> TestVm {
    let vm = common::guest::marker_guest(uri, name, marker, MARK_AT);
    make_private(&vm);
    vm
}

fn make_private(vm: &TestVm) {
    for p in [&vm.base, &vm.overlay] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::set_permissions(vm.dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
}

fn owner_and_mode(p: &Path) -> (u32, u32) {
    let m = std::fs::metadata(p).unwrap();
    (m.uid(), m.mode() & 0o7777)
}

fn status_disk(home: &Path, uri: &str, vm: &str) -> serde_json::Value {
    let out = run_as_nobody(home, &["status", vm, "--json", "--connect", uri]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["disks"][0].clone()
}

#[test]
fn nobody_commits_root_images_through_libvirtd_and_the_app_raises_no_prompt() {
    let bed = testbed_shared();
    let home = nobody_home();
    let vm = private_marker_guest(&bed.uri, "vmo-lv-commit", "LIBVIRT-COMMIT");
    // The files are out of reach for nobody: the libvirt engine is the only way.
    let denied = run_as_nobody(
        home.path(),
        &[
            "commit",
            &vm.name,
            "--yes",
            "--engine",
            "qemu-img",
            "--connect",
            &bed.uri,
        ],
    );
    assert_ne!(code(&denied), 0, "{}", text(&denied));
    let disk = status_disk(home.path(), &bed.uri, &vm.name);
    assert_eq!(disk["engine"], "libvirt", "{disk}");
    assert_eq!(disk["overlay"], vm.overlay.to_str().unwrap());
    assert_eq!(disk["base"], vm.base.to_str().unwrap());
    assert!(disk["changed_bytes"].as_u64().unwrap() > 0, "{disk}");

    // The desktop app watches the same libvirtd; the engine's paused start must not look
    // like the guest running, and must not raise a prompt.
    let s = Session::start(Kind::X11);
    let hook = Hook(s.home.join("hook.jsonl"));
    let log = std::fs::File::create(s.home.join("app.log")).unwrap();
    let _app = ChildGuard(
        s.command(bin())
            .args(["--connect", &bed.uri])
            .env("VMOVERLAY_TEST_HOOK", &hook.0)
            .env("RUST_LOG", "vmoverlay=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    hook.wait("tray-ready", Duration::from_secs(20), |v| {
        v["event"] == "tray-ready"
    });
    let item = s.tray_items()[0].split('/').next().unwrap().to_string();
    let line = |l: &[String]| {
        l.iter()
            .find(|t| t.starts_with(&format!("{} —", vm.name)))
            .cloned()
    };
    wait_for("the VM in the tray", Duration::from_secs(30), || {
        line(&labels(&s.menu(&item))).is_some()
    });
    let mut watch = common::WatchProcess::start(&[&bed.uri]);
    watch.expect("connected", Duration::from_secs(20), |v| {
        v["event"] == "connected"
    });

    let inactive_xml = virsh(&bed.uri, &["dumpxml", "--inactive", &vm.name]);
    let before = (owner_and_mode(&vm.base), owner_and_mode(&vm.overlay));
    let mut cli = commit_in_background(home.path(), &vm, &bed.uri);
    // While it works, the tray never shows the VM as running.
    let mut seen = Vec::new();
    while cli.0.try_wait().unwrap().is_none() {
        if let Some(l) = line(&labels(&s.menu(&item))) {
            seen.push(l);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = cli.take_output();
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("committed"),
        "{}",
        text(&out)
    );
    assert!(
        !seen.iter().any(|l| l.contains("running")),
        "the tray showed the engine's paused run as running: {seen:?}"
    );

    // libvirt saw starts, and each was marked as the engine's own.
    let events = watch.collect_for(Duration::from_secs(2));
    let starts: Vec<_> = events
        .iter()
        .filter(|v| v["domain"] == vm.name.as_str() && v["event"] == "started")
        .collect();
    assert!(!starts.is_empty(), "no start seen: {events:?}");
    // Each is marked, or was over before the monitor could ask (the short lock probe).
    assert!(
        starts
            .iter()
            .all(|v| v["engine_job"].is_string() || v["ended_before_asked"] == true),
        "a start read as the guest's: {starts:?}"
    );
    assert!(
        starts.iter().any(|v| v["engine_job"] == "commit"),
        "{starts:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        hook.count(|v| v["event"] == "prompt-mapped" && v["vm"] == vm.name.as_str()),
        0,
        "the engine's internal start raised a prompt: {:?}",
        hook.events()
    );
    // No second job: the app started none.
    assert_eq!(
        hook.count(|v| v["event"] == "job-done" && v["vm"] == vm.name.as_str()),
        0
    );

    // The work: marker in the base, overlay empty, files still root's 0600, definition as it was.
    assert_eq!(read_image(&vm.base, MARK_AT, 14), b"LIBVIRT-COMMIT");
    assert_eq!(changed(&vm.overlay), 0);
    assert_eq!(
        (owner_and_mode(&vm.base), owner_and_mode(&vm.overlay)),
        before
    );
    assert_eq!(
        virsh(&bed.uri, &["dumpxml", "--inactive", &vm.name]),
        inactive_xml
    );
    assert_eq!(
        status_disk(home.path(), &bed.uri, &vm.name)["changed_bytes"],
        0
    );
    // The directory got a transient pool (gone when libvirtd restarts), nothing persistent.
    let dir = vm.dir.path().to_str().unwrap();
    let persistent = virsh(&bed.uri, &["pool-list", "--persistent", "--name"]);
    for pool in persistent.lines().filter(|l| !l.trim().is_empty()) {
        let xml = virsh(&bed.uri, &["pool-dumpxml", pool.trim()]);
        assert!(
            !xml.contains(&format!("<path>{dir}</path>")),
            "a persistent pool {pool} was defined for {dir}"
        );
    }
    // And the guest boots again on the rebuilt overlay.
    vm.boot_to_power_off();
}

#[test]
fn nobody_discards_through_libvirtd_and_the_base_stays_identical() {
    let bed = testbed_shared();
    let home = nobody_home();
    let vm = private_marker_guest(&bed.uri, "vmo-lv-discard", "LIBVIRT-DISCARD");
    let inactive_xml = virsh(&bed.uri, &["dumpxml", "--inactive", &vm.name]);
    let base_before = checksum(&vm.base);
    let info_before = qemu_img(&["info", "--output=json", "-U", vm.overlay.to_str().unwrap()]);
    let out = run_as_nobody(
        home.path(),
        &["discard", &vm.name, "--yes", "--connect", &bed.uri],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(checksum(&vm.base), base_before);
    assert_eq!(changed(&vm.overlay), 0);
    assert_eq!(read_image(&vm.overlay, MARK_AT, 15), vec![0u8; 15]);
    assert_eq!(owner_and_mode(&vm.overlay), (0, 0o600));
    // Same virtual size, backing file and format, cluster size and compat level.
    let info_after = qemu_img(&["info", "--output=json", "-U", vm.overlay.to_str().unwrap()]);
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(&info_before).unwrap(),
        serde_json::from_str(&info_after).unwrap(),
    );
    for k in [
        "virtual-size",
        "backing-filename",
        "backing-filename-format",
        "cluster-size",
    ] {
        assert_eq!(a[k], b[k], "{k}");
    }
    assert_eq!(
        a["format-specific"]["data"]["compat"],
        b["format-specific"]["data"]["compat"]
    );
    assert_eq!(
        virsh(&bed.uri, &["dumpxml", "--inactive", &vm.name]),
        inactive_xml
    );
    vm.boot_to_power_off();
}

#[test]
fn a_running_domain_and_a_held_overlay_are_refused_through_libvirtd() {
    let bed = testbed_shared();
    let home = nobody_home();
    let vm = TestVm::define(
        &bed.uri,
        "vmo-lv-refuse",
        &Behaviour {
            hold_secs: 600,
            ..Default::default()
        },
    );
    qemu_io(&vm.overlay, &["write -P 0x42 1M 1M"]);
    make_private(&vm);
    let sums = (checksum(&vm.base), checksum(&vm.overlay));
    // Held by another process (qemu-io keeps its image locks while it waits on stdin).
    let mut holder = ChildGuard(
        Command::new("qemu-io")
            .args(["-f", "qcow2"])
            .arg(&vm.overlay)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(500));
    for op in ["commit", "discard"] {
        let out = run_as_nobody(home.path(), &[op, &vm.name, "--yes", "--connect", &bed.uri]);
        assert_eq!(code(&out), 6, "{op}: {}", text(&out));
    }
    holder.kill();
    assert_eq!((checksum(&vm.base), checksum(&vm.overlay)), sums);
    // Running: refused before anything is written.
    vm.start();
    let out = run_as_nobody(
        home.path(),
        &["commit", &vm.name, "--yes", "--connect", &bed.uri],
    );
    assert_eq!(code(&out), 5, "{}", text(&out));
    vm.destroy();
    assert_eq!((checksum(&vm.base), checksum(&vm.overlay)), sums);
}

/// The "remote" URI of the test bed: the same libvirtd over TCP on the loopback.
fn tcp_uri() -> String {
    let out = Command::new(common::testbed_script())
        .arg("tcp-uri")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn over_a_remote_connection_the_client_touches_no_image_file() {
    let bed = testbed_shared();
    let state = tempfile::tempdir().unwrap();
    let vm = private_marker_guest(&bed.uri, "vmo-lv-remote", "REMOTE-COMMIT");
    let xml = virsh(&bed.uri, &["dumpxml", "--inactive", &vm.name]);
    let uri = tcp_uri();
    // The CLI runs (as root, which could write the files) in a mount namespace where the
    // images' directory is an empty tmpfs: it can only succeed if nothing on the client
    // touches an image.
    let hidden = |args: &str| {
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs none \"$1\" && exec \"$2\" {args} --connect \"$3\""
            ))
            .arg("sh")
            .arg(vm.dir.path())
            .arg(bin())
            .arg(&uri)
            .env("VMOVERLAY_STATE_DIR", state.path())
            .env("VMOVERLAY_CONFIG_DIR", state.path().join("config"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let status = hidden(&format!("status {} --json", vm.name));
    assert_eq!(code(&status), 0, "{}", text(&status));
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v[0]["disks"][0]["engine"], "libvirt", "{v}");
    {
        // Another domain, in another directory, whose overlay is backed by the same base:
        // libvirtd (not this machine) says so, and the commit is refused.
        let other = TestVm::define(&bed.uri, "vmo-lv-remote-b", &Behaviour::default());
        let base = vm.base.to_str().unwrap();
        let ov = other.overlay.to_str().unwrap();
        qemu_img(&["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, ov]);
        let before = (checksum(&vm.base), checksum(&vm.overlay));
        let shared = hidden(&format!("commit {} --yes", vm.name));
        assert_eq!(code(&shared), 7, "{}", text(&shared));
        assert!(
            text(&shared).contains("vmo-lv-remote-b"),
            "{}",
            text(&shared)
        );
        assert_eq!((checksum(&vm.base), checksum(&vm.overlay)), before);
    }
    let out = hidden(&format!("commit {} --yes", vm.name));
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(read_image(&vm.base, MARK_AT, 13), b"REMOTE-COMMIT");
    assert_eq!(changed(&vm.overlay), 0);
    assert_eq!(virsh(&bed.uri, &["dumpxml", "--inactive", &vm.name]), xml);
    // `--engine qemu-img` cannot reach a remote host's files, and says so.
    let refused = hidden(&format!("discard {} --yes --engine qemu-img", vm.name));
    assert_eq!(code(&refused), 4, "{}", text(&refused));
    assert!(
        text(&refused).contains("only the libvirt engine"),
        "{}",
        text(&refused)
    );
}

/// A shut-off guest with 768 MiB of data in its overlay (so the block commit takes a while),
/// plus the guest's own marker.
fn big_private_guest(bed: &TestbedGuard, name: &str) -> TestVm {
    let vm = TestVm::define(
        &bed.uri,
        name,
        &Behaviour {
            marker: Some("FAULT-MARK".into()),
            offset: MARK_AT,
            hold_secs: 0,
        },
    );
    for img in [&vm.base, &vm.overlay] {
        qemu_img(&["resize", "-q", img.to_str().unwrap(), "1G"]);
    }
    vm.boot_to_power_off();
    qemu_io(&vm.overlay, &["write -P 0x6b 64M 768M"]);
    make_private(&vm);
    vm
}

/// Waits until the engine's block commit runs (and fails if the CLI ended before it did).
fn wait_for_block_job(uri: &str, vm: &str, cli: &mut ChildGuard) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let job = Command::new("virsh")
            .args(["-c", uri, "blockjob", vm, "vda", "--info"])
            .output()
            .unwrap();
        // virsh prints the progress bar to stderr.
        if text(&job).contains("Block Commit: [") {
            // Let it get some way into the 768 MiB.
            std::thread::sleep(Duration::from_millis(150));
            return;
        }
        seen.insert(text(&job));
        if cli.0.try_wait().unwrap().is_some() {
            panic!(
                "the CLI ended before its block commit was seen: {}\nvirsh said: {seen:?}",
                text(&cli.take_output())
            );
        }
        assert!(Instant::now() < deadline, "no block commit within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_all_data_reaches_the_base(bed: &TestbedGuard, home: &Path, vm: &TestVm, xml: &str) {
    // The next run finishes the journaled commit first.
    let out = run_as_nobody(home, &["commit", &vm.name, "--yes", "--connect", &bed.uri]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("finished the interrupted commit"),
        "{}",
        text(&out)
    );
    assert!(reads_pattern(&vm.base, 0x6b, "64M", "768M"));
    assert_eq!(read_image(&vm.base, MARK_AT, 10), b"FAULT-MARK");
    assert_eq!(changed(&vm.overlay), 0);
    assert_eq!(virsh(&bed.uri, &["dumpxml", "--inactive", &vm.name]), xml);
    assert_eq!(vm.domstate(), "shut off (destroyed)");
    assert!(std::fs::read_dir(home.join("state/journal"))
        .map(|d| d.count() == 0)
        .unwrap_or(true));
}

/// Commits a big guest as `nobody` and does `fault` while its block commit runs. The CLI must
/// fail saying the data is intact; after `recover` (e.g. restarting libvirtd), the overlay
/// still reads everything, and the next run finishes the commit with nothing lost.
fn fault_during_block_commit(
    bed: &TestbedGuard,
    name: &str,
    fault: impl FnOnce(&TestVm),
    recover: impl FnOnce(&TestVm),
) {
    let home = nobody_home();
    let vm = big_private_guest(bed, name);
    let xml = virsh(&bed.uri, &["dumpxml", "--inactive", &vm.name]);
    let mut cli = commit_in_background(home.path(), &vm, &bed.uri);
    wait_for_block_job(&bed.uri, &vm.name, &mut cli);
    fault(&vm);
    let out = cli.take_output();
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("data is intact"),
        "{}",
        text(&out)
    );
    recover(&vm);
    assert!(reads_pattern(&vm.overlay, 0x6b, "64M", "768M"));
    assert_all_data_reaches_the_base(bed, home.path(), &vm, &xml);
}

#[test]
fn libvirtd_killed_during_the_block_commit_loses_nothing_and_the_next_run_finishes() {
    let bed = testbed_exclusive();
    fault_during_block_commit(
        &bed,
        "vmo-lv-kill-daemon",
        |_| bed.kill_daemon(),
        |vm| {
            bed.start_daemon();
            // QEMU outlived the daemon: the engine's paused run is still there.
            wait_for("libvirtd back", Duration::from_secs(30), || {
                !vm.domstate().is_empty()
            });
            assert!(vm.domstate().starts_with("paused"), "{}", vm.domstate());
        },
    );
}

#[test]
fn qemu_killed_during_the_block_commit_loses_nothing_and_the_next_run_finishes() {
    let bed = testbed_shared();
    fault_during_block_commit(
        &bed,
        "vmo-lv-kill-qemu",
        |vm| {
            let st = Command::new("kill")
                .args(["-KILL", &vm.qemu_pid().to_string()])
                .status()
                .unwrap();
            assert!(st.success());
        },
        |_| {},
    );
}

/// Kills and reaps a child on drop.
struct ChildGuard(std::process::Child);

impl ChildGuard {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    fn take_output(&mut self) -> Output {
        let child = std::mem::replace(&mut self.0, Command::new("true").spawn().unwrap());
        child.wait_with_output().unwrap()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `nobody` makes an ordinary VM with root-owned 0600 images disposable and back, through
/// libvirtd (the volume API creates and deletes the overlays), over the local socket and over
/// the "remote" `qemu+tcp://` connection.
#[test]
fn nobody_adopts_and_releases_root_images_through_libvirtd() {
    let bed = testbed_shared();
    let tcp = String::from_utf8(
        Command::new(common::testbed_script())
            .arg("tcp-uri")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    for (uri, name) in [(&bed.uri, "vmo-lv-adopt"), (&tcp, "vmo-lv-adopt-tcp")] {
        let o = common::vm_state::ordinary(&bed.uri, name);
        for p in [&o.vda, &o.vdb] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::set_permissions(o.vm.dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let before = virsh(&bed.uri, &["dumpxml", "--inactive", name]);
        let home = nobody_home();
        let adopted = run_as_nobody(home.path(), &["adopt", name, "--yes", "--connect", uri]);
        assert_eq!(code(&adopted), 0, "{uri}: {}", text(&adopted));
        let (ov_a, ov_b) = (
            common::vm_state::overlay_of(&o.vda),
            common::vm_state::overlay_of(&o.vdb),
        );
        for ov in [&ov_a, &ov_b] {
            assert_eq!(owner_and_mode(ov), (0, 0o600), "{uri}: {}", ov.display());
            assert_eq!(changed(ov), 0);
        }
        let xml = virsh(&bed.uri, &["dumpxml", "--inactive", name]);
        assert!(xml.contains(&format!("'{}'", ov_a.display())), "{xml}");
        let status = status_disk(home.path(), uri, name);
        assert_eq!(status["engine"], "libvirt", "{uri}: {status}");
        // A session's write, then release with --commit: it lands in the raw image.
        qemu_io(&ov_b, &["write -P 0x71 1M 1M"]);
        let released = run_as_nobody(
            home.path(),
            &["release", name, "--yes", "--commit", "--connect", uri],
        );
        assert_eq!(code(&released), 0, "{uri}: {}", text(&released));
        assert!(!ov_a.exists() && !ov_b.exists(), "{uri}: overlays removed");
        assert_eq!(virsh(&bed.uri, &["dumpxml", "--inactive", name]), before);
        assert!(common::images::reads_raw_pattern(&o.vdb, 0x71, "1M", "1M"));
    }
}
