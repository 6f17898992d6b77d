//! History benchmark (`cargo bench --bench history`), printed as a table: a commit of a dirty
//! overlay (default 1 GiB) through the engine with history on (a snapshot of the base first;
//! the commit then writes without QEMU's ordering flushes, see `CommitWrites::Protected`)
//! and off (`keep 0`: QEMU's ordered writes), side by side on identical images, in
//! alternating order, several runs, in two cases:
//! - **into free space**: the overlay's data lands where the base holds nothing (new files in
//!   the guest): both allocate, history adds only the snapshot;
//! - **over data**: the base already holds data everywhere the overlay writes (the worst case
//!   for history: every cluster is copied on write to a new place instead of overwritten).
//!
//! Target: history on within 3 % of off.
//!
//! Options: `--mib N` (dirty size, default 1024), `--rounds N` (pairs of runs, default 4),
//! `--raw 1` (a raw base: history keeps an undo delta of what the commit overwrites).

#[path = "support/args.rs"]
mod args;
#[path = "support/images.rs"]
mod images;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use args::arg;
use images::{dirty_pair_at, median, run, secs, NoDomain};
use vmoverlay::overlay::discover::inspect_overlay;
use vmoverlay::overlay::{history, ops, Journal, OpKind, Request};

/// One commit of `mib` MiB, over data the base holds there already or into its free space;
/// its duration.
fn one(root: &Path, mib: usize, over_data: bool, with_history: bool, raw: bool) -> Duration {
    let dir = root.join(if with_history { "on" } else { "off" });
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The base holds data in its first `mib` MiB; the overlay writes there, or after it.
    let at = if over_data { 0 } else { mib };
    let (base, overlay) = dirty_pair_at(&dir, mib, mib, at);
    if raw {
        let raw_base = dir.join("base.raw");
        run(Command::new("qemu-img")
            .args(["convert", "-q", "-O", "raw"])
            .arg(&base)
            .arg(&raw_base));
        run(Command::new("qemu-img")
            .args(["rebase", "-q", "-u", "-F", "raw", "-b"])
            .arg(&raw_base)
            .arg(&overlay));
        std::fs::remove_file(&base).unwrap();
    }
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
    let raw = arg("--raw", 0) == 1;
    let root = tempfile::Builder::new()
        .prefix("vmoverlay-bench-history-")
        .tempdir_in(std::env::var_os("TMPDIR").unwrap_or_else(|| "/var/tmp".into()))
        .unwrap();
    let kind = if raw { "raw" } else { "qcow2" };
    println!(
        "commit of {mib} MiB into a {kind} base, history on vs off ({rounds} rounds, alternating)"
    );
    for (over_data, case) in [(false, "into free space"), (true, "over data")] {
        let (mut on, mut off) = (Vec::new(), Vec::new());
        println!();
        println!("{case}");
        println!("{:<6} {:>12} {:>12}", "round", "history on", "history off");
        for i in 0..rounds {
            // Alternate which goes first, so caches and the disk's state favour neither.
            let (a, b) = if i % 2 == 0 {
                let a = one(root.path(), mib, over_data, true, raw);
                (a, one(root.path(), mib, over_data, false, raw))
            } else {
                let b = one(root.path(), mib, over_data, false, raw);
                (one(root.path(), mib, over_data, true, raw), b)
            };
            println!("{:<6} {:>12} {:>12}", i + 1, secs(a), secs(b));
            on.push(a);
            off.push(b);
        }
        let (m_on, m_off) = (median(on), median(off));
        let overhead = (m_on.as_secs_f64() / m_off.as_secs_f64() - 1.0) * 100.0;
        println!("{:<6} {:>12} {:>12}", "median", secs(m_on), secs(m_off));
        println!(
            "{case}: history costs {overhead:+.1} % ({})",
            if overhead <= 3.0 {
                "within the 3 % target"
            } else {
                "OVER the 3 % target"
            }
        );
    }
}
