//! Real-VM states that make `commit` or `discard` lose data (a managed save, libvirt snapshots
//! and checkpoints, internal snapshots and bitmaps only in the image, a domain XML that names
//! another backing file, other users of the base that no sibling scan finds), set up on the
//! test-bed libvirtd; and the means to prove that a refused operation changed nothing: the
//! bytes of every file involved and libvirt's own view of each domain.
//!
//! Facts verified on libvirt 9.0 / QEMU 7.2 (the test bed):
//! - `virsh snapshot-create-as VM s1` on a shut-off domain makes an internal qcow2 snapshot `s1`
//!   in the overlay (`qemu-img info`: "Snapshot list: 1 s1 0 B").
//! - `virsh snapshot-create-as VM s2 --disk-only` also works on a shut-off domain: it creates a
//!   new qcow2 `overlay.s2` backed by the overlay and points the persistent XML's disk at it.
//! - `virsh checkpoint-create-as` refuses an inactive domain ("Operation not supported: cannot
//!   create checkpoint for inactive domain"); on a running one it adds a persistent dirty bitmap
//!   named after the checkpoint to the overlay (seen in `qemu-img info` once QEMU has stopped).
//! - `virsh managedsave` leaves the domain "shut off (saved)", `dominfo` says "Managed save: yes".
//! - A `<backingStore>` written under a disk in the persistent XML is kept by `virsh define`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::guest::{qemu_img, Behaviour, TestVm};
use super::images::{create_overlay, qemu_io, snapshot};
use super::{bin, virsh};

/// A domain of the tiny guest on a fresh overlay/base pair, torn down completely on drop
/// (destroyed, then undefined with its snapshot and checkpoint metadata, managed save and
/// NVRAM, which a plain `undefine` refuses to leave behind).
pub struct StateVm {
    pub vm: TestVm,
}

impl std::ops::Deref for StateVm {
    type Target = TestVm;
    fn deref(&self) -> &TestVm {
        &self.vm
    }
}

/// Destroys and undefines `name` with everything libvirt keeps about it; errors are ignored.
pub fn remove_domain(uri: &str, name: &str) {
    let _ = Command::new("virsh")
        .args(["-q", "-c", uri, "destroy", name])
        .output();
    let _ = Command::new("virsh")
        .args(["-q", "-c", uri, "undefine", name])
        .args([
            "--snapshots-metadata",
            "--checkpoints-metadata",
            "--managed-save",
            "--nvram",
        ])
        .output();
}

impl Drop for StateVm {
    fn drop(&mut self) {
        remove_domain(&self.vm.uri, &self.vm.name);
    }
}

impl StateVm {
    /// Defines the domain (never started) whose overlay already holds 1 MiB of guest writes
    /// (0x5a at offset 0), so a commit or a discard would change bytes.
    pub fn shut_off(uri: &str, name: &str) -> StateVm {
        StateVm::define(uri, name, &Behaviour::default())
    }

    pub fn define(uri: &str, name: &str, behaviour: &Behaviour) -> StateVm {
        // A leftover with snapshots or a managed save from an interrupted run blocks `define`.
        remove_domain(uri, name);
        let vm = TestVm::define(uri, name, behaviour);
        qemu_io(&vm.overlay, &["write -P 0x5a 0 1M"]);
        StateVm { vm }
    }

    /// Redefines the domain from its persistent XML as changed by `edit`.
    pub fn edit_xml(&self, edit: impl FnOnce(String) -> String) {
        let xml = virsh(&self.uri, &["dumpxml", "--inactive", &self.name]);
        let edited = edit(xml.clone());
        assert_ne!(edited, xml, "the edit changed nothing");
        let path = self.dir.path().join("edited.xml");
        std::fs::write(&path, edited).unwrap();
        virsh(&self.uri, &["define", path.to_str().unwrap()]);
        std::fs::remove_file(&path).unwrap();
    }

    /// Boots through UEFI from now on (Debian's OVMF, pflash), with its variables in a file
    /// beside the images (libvirt makes it from the template at the first start).
    pub fn make_uefi(&self) -> std::path::PathBuf {
        for f in ["OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"] {
            assert!(
                Path::new("/usr/share/OVMF").join(f).is_file(),
                "this test needs Debian's ovmf package (tests/testbed/testbed.sh install)"
            );
        }
        let nvram = self.dir.path().join(format!("{}_VARS.fd", self.name));
        self.edit_xml(|xml| {
            xml.replacen(
                "</os>",
                &format!(
                    "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>\
                     <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>{}</nvram></os>",
                    nvram.display()
                ),
                1,
            )
        });
        nvram
    }

    /// Writes `<backingStore>` naming `file` under the disk vda of the persistent XML.
    pub fn set_xml_backing_store(&self, file: &Path) {
        let store = format!(
            "<backingStore type='file'><format type='qcow2'/><source file='{}'/></backingStore>",
            file.display()
        );
        self.edit_xml(|xml| {
            xml.replacen(
                "<target dev='vda'",
                &format!("{store}\n      <target dev='vda'"),
                1,
            )
        });
    }

    /// Turns the disk vda into `<disk type='volume'>` naming `volume` in `pool`.
    pub fn use_volume(&self, pool: &str, volume: &str) {
        let file = format!("<source file='{}'/>", self.overlay.display());
        self.edit_xml(|xml| {
            assert!(xml.contains(&file), "{xml}");
            xml.replacen(
                "<disk type='file' device='disk'>",
                "<disk type='volume' device='disk'>",
                1,
            )
            .replacen(
                &file,
                &format!("<source pool='{pool}' volume='{volume}'/>"),
                1,
            )
        });
    }

    /// Starts the guest and waits until libvirt reports it running.
    pub fn start_running(&self) {
        self.start();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !self.domstate().starts_with("running") {
            assert!(
                std::time::Instant::now() < deadline,
                "{} is {} instead of running; console:\n{}",
                self.name,
                self.domstate(),
                self.console()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// A transient libvirt `dir` storage pool over a fresh directory, destroyed on drop.
pub struct Pool {
    pub uri: String,
    pub name: String,
    pub dir: tempfile::TempDir,
}

impl Pool {
    pub fn create(uri: &str, name: &str) -> Pool {
        let _ = Command::new("virsh")
            .args(["-q", "-c", uri, "pool-destroy", name])
            .output();
        let dir = tempfile::Builder::new()
            .prefix("vmoverlay-pool-")
            .tempdir()
            .unwrap();
        virsh(
            uri,
            &[
                "pool-create-as",
                name,
                "dir",
                "--target",
                dir.path().to_str().unwrap(),
            ],
        );
        Pool {
            uri: uri.to_string(),
            name: name.to_string(),
            dir,
        }
    }

    /// A qcow2 overlay of `base` named `volume` in the pool; libvirt knows its backing store.
    pub fn overlay_volume(&self, volume: &str, base: &Path) -> PathBuf {
        let path = self.dir.path().join(volume);
        create_overlay(&path, base.to_str().unwrap());
        virsh(&self.uri, &["pool-refresh", &self.name]);
        let xml = virsh(&self.uri, &["vol-dumpxml", "--pool", &self.name, volume]);
        assert!(
            xml.contains(&format!("<path>{}</path>", base.display())),
            "libvirt does not see {} as the backing store of {volume}:\n{xml}",
            base.display()
        );
        path
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = Command::new("virsh")
            .args(["-q", "-c", &self.uri, "pool-destroy", &self.name])
            .output();
    }
}

/// What must not change when an operation is refused: the checksum of every file under some
/// directories, and libvirt's view of some domains.
#[derive(Debug, PartialEq, Eq)]
pub struct Capture {
    pub files: BTreeMap<PathBuf, u64>,
    pub libvirt: BTreeMap<String, String>,
}

/// libvirt's view of `name`: the persistent XML, snapshot and checkpoint names, `dominfo`
/// (state, managed save) and the state with its reason.
pub fn libvirt_view(uri: &str, name: &str) -> BTreeMap<String, String> {
    let mut view = BTreeMap::new();
    for args in [
        &["dumpxml", "--inactive"][..],
        &["snapshot-list", "--name"],
        &["checkpoint-list", "--name"],
        &["dominfo"],
        &["domstate", "--reason"],
    ] {
        let mut full = args.to_vec();
        full.push(name);
        view.insert(
            format!("{name}: virsh {}", args.join(" ")),
            virsh(uri, &full),
        );
    }
    view
}

pub fn capture(uri: &str, domains: &[&str], dirs: &[&Path]) -> Capture {
    Capture {
        files: dirs.iter().flat_map(|d| snapshot(d)).collect(),
        libvirt: domains.iter().flat_map(|d| libvirt_view(uri, d)).collect(),
    }
}

/// Fails with what changed (files by name, libvirt views in full) if `now` differs from `before`.
pub fn assert_unchanged(what: &str, before: &Capture, now: &Capture) {
    let changed_files: Vec<_> = before
        .files
        .keys()
        .chain(now.files.keys())
        .filter(|p| before.files.get(*p) != now.files.get(*p))
        .collect();
    assert!(
        changed_files.is_empty(),
        "{what}: files changed, appeared or vanished: {changed_files:?}"
    );
    for (k, v) in &before.libvirt {
        assert_eq!(Some(v), now.libvirt.get(k), "{what}: `{k}` changed");
    }
}

/// One run of the command line, in the C locale, with its own state and config directories.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn vmoverlay(state: &Path, args: &[&str]) -> Ran {
    let out = Command::new(bin())
        .args(args)
        .env("LC_ALL", "C")
        .env_remove("LANGUAGE")
        .env("VMOVERLAY_STATE_DIR", state)
        .env("VMOVERLAY_CONFIG_DIR", state.join("config"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `vmoverlay ARGS` (state in `state`) and SIGKILLs it after `delay_ms`; whether it was
/// killed before it ended.
pub fn run_killed_after(state: &Path, args: &[&str], delay_ms: u64) -> bool {
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(bin())
        .args(args)
        .env("LC_ALL", "C")
        .env("VMOVERLAY_STATE_DIR", state)
        .env("VMOVERLAY_CONFIG_DIR", state.join("config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(delay_ms));
    let _ = child.kill();
    let killed = child.wait().unwrap().signal().is_some();
    // A qemu-img the CLI started may still run for a moment: let it end.
    std::thread::sleep(std::time::Duration::from_millis(300));
    killed
}

/// `vmoverlay status NAME --json`: the one domain object.
pub fn status_json(state: &Path, uri: &str, name: &str) -> Value {
    let ran = vmoverlay(state, &["status", name, "--json", "--connect", uri]);
    assert_eq!(ran.code, 0, "status: {}", ran.stderr);
    let v: Value = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("status --json printed {:?}: {e}", ran.stdout));
    let list = v.as_array().expect("status --json prints an array");
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["domain"], name, "{v}");
    list[0].clone()
}

/// The `blocked` entries of a domain object from `status --json`.
pub fn blocked(domain: &Value) -> Vec<Value> {
    domain["blocked"]
        .as_array()
        .unwrap_or_else(|| panic!("no \"blocked\" array in {domain}"))
        .clone()
}

/// The `blocked` entry of `kind`, checked for shape: a disk that is "vda" or null and a
/// message that is not empty.
pub fn blocked_entry(domain: &Value, kind: &str) -> Value {
    let all = blocked(domain);
    let entry = all
        .iter()
        .find(|b| b["kind"] == kind)
        .unwrap_or_else(|| panic!("no blocked entry of kind {kind:?} in {domain}"))
        .clone();
    assert!(
        entry["disk"].is_null() || entry["disk"] == "vda",
        "disk is \"vda\" or null: {entry}"
    );
    assert!(
        entry["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{entry}"
    );
    entry
}

/// Runs `commit` and `discard` of `vm` (with `--yes`) and checks that each exits `code`, says
/// every one of `needles` on stderr, and changes nothing of `before` (recaptured with
/// `recapture`). Returns the commit's stderr.
pub fn assert_both_refused(
    state: &Path,
    uri: &str,
    vm: &str,
    code: i32,
    needles: &[&str],
    before: &Capture,
    recapture: impl Fn() -> Capture,
) -> String {
    let mut commit_err = String::new();
    for op in ["commit", "discard"] {
        let ran = vmoverlay(state, &[op, vm, "--yes", "--connect", uri]);
        assert_eq!(
            ran.code, code,
            "{op} {vm}: exit {} instead of {code}\nstdout: {}\nstderr: {}",
            ran.code, ran.stdout, ran.stderr
        );
        for n in needles {
            assert!(ran.stderr.contains(n), "{op}: no {n:?} in: {}", ran.stderr);
        }
        assert_unchanged(&format!("after {op}"), before, &recapture());
        if op == "commit" {
            commit_err = ran.stderr;
        }
    }
    commit_err
}

/// The marker the ordinary VM's guest writes at each boot, and where.
pub const MARKER: &str = "ADOPT-MARKER";
pub const MARKER_OFFSET: u64 = 3 << 20;

/// A shut-off VM that is not disposable: vda is the tiny guest's disk made a standalone qcow2
/// (it writes its marker there at each boot), vdb a raw data disk with 0x33 in its first MiB.
pub struct Ordinary {
    pub vm: StateVm,
    pub vda: PathBuf,
    pub vdb: PathBuf,
}

pub fn ordinary(uri: &str, name: &str) -> Ordinary {
    let vm = StateVm::define(
        uri,
        name,
        &Behaviour {
            marker: Some(MARKER.into()),
            offset: MARKER_OFFSET,
            hold_secs: 0,
        },
    );
    // The tiny guest's overlay, cut loose from its (empty) base: an ordinary qcow2 image.
    let vda = vm.dir.path().join("system.qcow2");
    std::fs::rename(&vm.overlay, &vda).unwrap();
    qemu_img(&["rebase", "-u", "-b", "", vda.to_str().unwrap()]);
    let vdb = vm.dir.path().join("data.raw");
    qemu_img(&["create", "-q", "-f", "raw", vdb.to_str().unwrap(), "8M"]);
    let st = std::process::Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x33 0 1M"])
        .arg(&vdb)
        .output()
        .unwrap();
    assert!(st.status.success());
    let overlay = vm.overlay.display().to_string();
    vm.edit_xml(|xml| {
        xml.replace(&overlay, vda.to_str().unwrap()).replacen(
            "</disk>",
            &format!(
                "</disk>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n      \
                 <source file='{}'/>\n      <target dev='vdb' bus='virtio'/>\n    </disk>",
                vdb.display()
            ),
            1,
        )
    });
    Ordinary { vm, vda, vdb }
}

/// Where `adopt` puts the overlay of `image`.
pub fn overlay_of(image: &Path) -> PathBuf {
    let stem = image.file_stem().unwrap().to_string_lossy().into_owned();
    image.with_file_name(format!("{stem}.overlay.qcow2"))
}
