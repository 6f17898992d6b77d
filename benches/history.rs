//! History benchmark (`cargo bench --bench history`), printed as a table: a commit of a dirty
//! overlay (default 1 GiB) through the engine with history on (a snapshot of the base first;
//! the commit then copies on write every cluster it overwrites) and off (`keep 0`), side by
//! side on identical images, in alternating order, several runs. The base already holds data
//! where the overlay writes (the worst case for history: every cluster is copied on write).
//! Target: history on within 3 % of off.
//!
//! Options: `--mib N` (dirty size, default 1024), `--rounds N` (pairs of runs, default 4).

#[path = "support/args.rs"]
mod args;
#[path = "support/images.rs"]
mod images;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use args::arg;
use images::{median, run, secs};
use vmoverlay::overlay::discover::inspect_overlay;
use vmoverlay::overlay::{history, ops, DomainCheck, Journal, OpError, OpKind, Request};

/// The bench's images belong to no libvirt domain.
struct NoDomain;
impl DomainCheck for NoDomain {
    fn ensure_inactive(&self) -> Result<(), OpError> {
        Ok(())
    }
    fn other_users(&self, _: &Path, _: &Path) -> Result<Vec<String>, OpError> {
        Ok(Vec::new())
    }
}

/// One commit of `mib` MiB over a base that holds data there already; its duration.
fn one(root: &Path, mib: usize, with_history: bool) -> Duration {
    let dir = root.join(if with_history { "on" } else { "off" });
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("base.qcow2");
    let overlay = dir.join("overlay.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg(format!("{}M", mib * 2)));
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c"])
        .arg(format!("write -P 0xaa 0 {mib}M"))
        .arg(&base));
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&overlay));
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c"])
        .arg(format!("write -P 0x55 0 {mib}M"))
        .arg(&overlay));
    run(&mut Command::new("sync"));
    let journal = Journal::at(dir.join("state/journal"));
    let disk = inspect_overlay("vda", &overlay).unwrap();
    if !with_history {
        history::set_keep(&journal, &disk, 0).unwrap();
    }
    let req = Request {
        op: OpKind::Commit,
        uri: "bench".into(),
        domain: "bench".into(),
        disk: disk.clone(),
        firmware: None,
    };
    let t = Instant::now();
    ops::run(&req, &NoDomain, &journal, &mut |_| {}).unwrap();
    let took = t.elapsed();
    let revisions = history::Store::beside(&journal)
        .load(&disk)
        .unwrap()
        .ready()
        .count();
    assert_eq!(revisions, usize::from(with_history), "revisions taken");
    let _ = std::fs::remove_dir_all(&dir);
    took
}

fn main() {
    let mib: usize = arg("--mib", 1024);
    let rounds: usize = arg("--rounds", 4);
    let root = tempfile::Builder::new()
        .prefix("vmoverlay-bench-history-")
        .tempdir_in(std::env::var_os("TMPDIR").unwrap_or_else(|| "/var/tmp".into()))
        .unwrap();
    let (mut on, mut off) = (Vec::new(), Vec::new());
    println!("commit of {mib} MiB over data, history on vs off ({rounds} rounds, alternating)");
    println!("{:<6} {:>12} {:>12}", "round", "history on", "history off");
    for i in 0..rounds {
        // Alternate which goes first, so caches and the disk's state favour neither.
        let (a, b) = if i % 2 == 0 {
            let a = one(root.path(), mib, true);
            (a, one(root.path(), mib, false))
        } else {
            let b = one(root.path(), mib, false);
            (one(root.path(), mib, true), b)
        };
        println!("{:<6} {:>12} {:>12}", i + 1, secs(a), secs(b));
        on.push(a);
        off.push(b);
    }
    let (m_on, m_off) = (median(on), median(off));
    let overhead = (m_on.as_secs_f64() / m_off.as_secs_f64() - 1.0) * 100.0;
    println!("{:<6} {:>12} {:>12}", "median", secs(m_on), secs(m_off));
    println!(
        "history costs {overhead:+.1} % ({})",
        if overhead <= 3.0 {
            "within the 3 % target"
        } else {
            "OVER the 3 % target"
        }
    );
}
