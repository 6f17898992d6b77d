//! Real qcow2 images for engine tests, written and read through QEMU's block layer.

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use vmoverlay::overlay::{DomainCheck, OpError};

pub use super::guest::qemu_img;

/// For images that belong to no libvirt domain: nothing runs them, nobody else uses them.
pub struct NoDomain;

impl DomainCheck for NoDomain {
    fn ensure_inactive(&self) -> Result<(), OpError> {
        Ok(())
    }
    fn other_users(&self, _: &Path, _: &Path) -> Result<Vec<String>, OpError> {
        Ok(Vec::new())
    }
}

pub fn create_base(path: &Path, size: &str) {
    qemu_img(&["create", "-q", "-f", "qcow2", path.to_str().unwrap(), size]);
}

/// An overlay of `base` with the backing reference `backing_ref` (absolute or relative to the
/// overlay's directory).
pub fn create_overlay(path: &Path, backing_ref: &str) {
    super::run_ok(
        Command::new("qemu-img")
            .args("create -q -f qcow2 -F qcow2 -b".split(' '))
            .arg(backing_ref)
            .arg(path)
            .current_dir(path.parent().unwrap()),
    );
}

/// Runs qemu-io commands on an image (read-write), e.g. `write -P 0x55 4M 1M`.
pub fn qemu_io(path: &Path, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "qcow2"]);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    let out = c.arg(path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("failed") && !text.contains("Pattern verification"),
        "qemu-io {cmds:?} on {}: {text}{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Does `path` (read through its whole chain, without locks) hold `pattern` at offset/len?
pub fn reads_pattern(path: &Path, pattern: u8, offset: &str, len: &str) -> bool {
    reads_pattern_as("qcow2", path, pattern, offset, len)
}

/// As [`reads_pattern`], for a raw image.
pub fn reads_raw_pattern(path: &Path, pattern: u8, offset: &str, len: &str) -> bool {
    reads_pattern_as("raw", path, pattern, offset, len)
}

pub fn reads_pattern_as(format: &str, path: &Path, pattern: u8, offset: &str, len: &str) -> bool {
    let out = Command::new("qemu-io")
        .args(["-U", "-r", "-f", format, "-c"])
        .arg(format!("read -P {pattern:#x} {offset} {len}"))
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success() && !text.contains("Pattern verification failed") && text.contains("read ")
}

/// A checksum of a file's bytes.
pub fn checksum(path: &Path) -> u64 {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.write(&buf[..n]);
    }
    h.finish()
}

/// Checksums of every regular file below `dir` (to prove "no file changed").
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                out.insert(p.clone(), checksum(&p));
            }
        }
    }
    out
}

pub fn changed(overlay: &Path) -> u64 {
    vmoverlay::overlay::image::changed_bytes(overlay).unwrap()
}

pub fn info(path: &Path) -> serde_json::Value {
    let out = qemu_img(&["info", "--output=json", "-U", path.to_str().unwrap()]);
    serde_json::from_str(&out).unwrap()
}

/// The PID of a running `qemu-img commit` of `overlay`, if any.
pub fn qemu_img_commit_pid(overlay: &Path) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()? {
        let e = e.ok()?;
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.first().is_some_and(|a| a.ends_with(b"qemu-img"))
            && args.contains(&&b"commit"[..])
            && args.contains(&overlay.as_os_str().as_encoded_bytes())
        {
            return Some(pid);
        }
    }
    None
}
