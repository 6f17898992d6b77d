//! Libvirt engine vs qemu-img engine (`cargo bench --bench libvirt_engine`), side by side in
//! one run against the project's test-bed libvirtd (`tests/testbed/testbed.sh start`): each
//! round commits a dirty overlay (default 256 MiB) of a shut-off domain through each engine,
//! preconditions, commit, check and rebuild included, on identical fresh images.
//!
//! Options: `--mib N` (dirty size, default 256), `--rounds N` (default 5).

#[path = "support/args.rs"]
mod args;
#[path = "support/images.rs"]
mod images;
use args::arg;
use images::{dirty_pair, median, secs};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vmoverlay::libvirt::domains::{domain_disks, LibvirtCheck};
use vmoverlay::overlay::{ops, Engine, EngineChoice, Journal, OpKind, Request};

fn testbed_uri() -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/testbed/testbed.sh");
    let out = Command::new(script)
        .arg("uri")
        .output()
        .expect("testbed.sh");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Defines a domain whose only disk is `overlay` (it is never booted by the bench itself).
fn define(uri: &str, name: &str, overlay: &Path) -> virt::domain::Domain {
    let conn = vmoverlay::libvirt::open(uri, false).expect("the test-bed libvirtd runs");
    if let Ok(old) = conn.lookup_domain_by_name(name) {
        let _ = old.destroy();
        let _ = old.undefine();
    }
    let xml = format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
         <emulator>/usr/bin/qemu-system-x86_64</emulator>\
         <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{}'/><target dev='vda' bus='virtio'/></disk></devices></domain>",
        overlay.display()
    );
    conn.define_domain_xml(&xml).unwrap()
}

fn commit(uri: &str, name: &str, kind: Engine, journal: &Journal) -> Duration {
    let conn = vmoverlay::libvirt::open(uri, true).unwrap();
    let check = LibvirtCheck::new(conn, uri, name);
    let t = Instant::now();
    let found = domain_disks(&check, EngineChoice::Only(kind), &[]).unwrap();
    let disk = found.managed.into_iter().next().expect("a managed disk");
    assert_eq!(disk.engine, kind);
    let req = Request {
        op: OpKind::Commit,
        uri: uri.into(),
        domain: name.into(),
        disk,
        firmware: None,
    };
    ops::run(&req, &check, journal, &mut |_| {}).unwrap();
    t.elapsed()
}

fn main() {
    let mib = arg("--mib", 256);
    let rounds = arg("--rounds", 5);
    // RUST_LOG=vmoverlay=debug shows where each commit's time goes.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off"))
        .format_timestamp_millis()
        .init();
    vmoverlay::libvirt::spawn_event_thread();
    let uri = testbed_uri();
    let root = tempfile::Builder::new()
        .prefix("vmoverlay-bench-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let journal = Journal::at(root.path().join("state/journal"));
    let (mut via_libvirt, mut via_qemu_img) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let (_, ov_l) = dirty_pair(&root.path().join(format!("l{r}")), mib);
        let (_, ov_q) = dirty_pair(&root.path().join(format!("q{r}")), mib);
        let dl = define(&uri, "vmo-bench-libvirt", &ov_l);
        let dq = define(&uri, "vmo-bench-qemu-img", &ov_q);
        // Alternate which goes first, so page-cache warmth favours neither.
        let mut l =
            || via_libvirt.push(commit(&uri, "vmo-bench-libvirt", Engine::Libvirt, &journal));
        let mut q = || {
            via_qemu_img.push(commit(
                &uri,
                "vmo-bench-qemu-img",
                Engine::QemuImg,
                &journal,
            ))
        };
        if r % 2 == 0 {
            l();
            q();
        } else {
            q();
            l();
        }
        for d in [dl, dq] {
            let _ = d.undefine();
        }
        let _ = std::fs::remove_dir_all(root.path().join(format!("l{r}")));
        let _ = std::fs::remove_dir_all(root.path().join(format!("q{r}")));
    }
    let (l, q) = (median(via_libvirt.clone()), median(via_qemu_img.clone()));
    let range = |v: &[Duration]| {
        format!(
            "{} – {}",
            secs(*v.iter().min().unwrap()),
            secs(*v.iter().max().unwrap())
        )
    };
    println!("| commit of a {mib} MiB dirty overlay (discovery + preconditions + commit + rebuild) | runs | median | range |");
    println!("|---|---|---|---|");
    println!(
        "| libvirt engine (paused start, active block commit, storage-volume rebuild) | {} | {} | {} |",
        via_libvirt.len(),
        secs(l),
        range(&via_libvirt)
    );
    println!(
        "| qemu-img engine | {} | {} | {} |",
        via_qemu_img.len(),
        secs(q),
        range(&via_qemu_img)
    );
    println!(
        "| ratio libvirt / qemu-img | | {:.2} | |",
        l.as_secs_f64() / q.as_secs_f64()
    );
}
