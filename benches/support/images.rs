//! Real images and timing helpers shared by the benchmarks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The benchmarks' images belong to no libvirt domain.
pub struct NoDomain;
impl vmoverlay::overlay::DomainCheck for NoDomain {
    fn ensure_inactive(&self) -> Result<(), vmoverlay::overlay::OpError> {
        Ok(())
    }
    fn other_users(&self, _: &Path, _: &Path) -> Result<Vec<String>, vmoverlay::overlay::OpError> {
        Ok(Vec::new())
    }
}

/// A base with some data and an overlay with `mib` MiB written over it, in `dir`.
pub fn dirty_pair(dir: &Path, mib: usize) -> (PathBuf, PathBuf) {
    dirty_pair_at(dir, mib, 64, 0)
}

/// A base (twice `mib` MiB) holding data in its first `base_mib` MiB, and an overlay with
/// `mib` MiB written from `at_mib` MiB on, in `dir`.
pub fn dirty_pair_at(dir: &Path, mib: usize, base_mib: usize, at_mib: usize) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let base = dir.join("base.qcow2");
    let overlay = dir.join("overlay.qcow2");
    let size = format!("{}M", mib * 2);
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg(&size));
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c"])
        .arg(format!("write -P 0xaa 0 {base_mib}M"))
        .arg(&base));
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&overlay));
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c"])
        .arg(format!("write -P 0x55 {at_mib}M {mib}M"))
        .arg(&overlay));
    (base, overlay)
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}
