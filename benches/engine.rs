//! Engine benchmark (`cargo bench --bench engine`), printed as a table. Side by side in one run:
//! - commit of a dirty overlay (default 1 GiB) through the engine (preconditions, commit,
//!   check, rebuild) vs `qemu-img commit` alone on identical data;
//! - rebuild of an overlay;
//! - `vmoverlay status --json` for 100 domains with real overlay images (test driver).
//!
//! Options: `--mib N` (dirty size, default 1024), `--rounds N` (default 3), `--domains N` (100).

#[path = "support/args.rs"]
mod args;
#[path = "support/images.rs"]
mod images;
use args::arg;
use images::{dirty_pair, median, run, secs, NoDomain};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vmoverlay::overlay::{discover::inspect_overlay, ops, Journal, OpKind, Request};

fn status_bench(root: &Path, domains: usize, rounds: usize) -> Duration {
    let imgs = root.join("status");
    std::fs::create_dir_all(&imgs).unwrap();
    let base = imgs.join("base.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg("64M"));
    let mut xml = String::from("<node>\n");
    for i in 0..domains {
        let ov = imgs.join(format!("vm{i:03}.qcow2"));
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base)
            .arg(&ov));
        xml.push_str(&format!(
            "<domain type='test'><name>vm{i:03}</name><memory>1024</memory><os><type>hvm</type></os>\
             <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
             <source file='{}'/><target dev='vda' bus='virtio'/></disk></devices></domain>\n",
            ov.display()
        ));
    }
    xml.push_str("</node>\n");
    let node = imgs.join("node.xml");
    std::fs::write(&node, xml).unwrap();
    let uri = format!("test://{}", node.display());
    let exe = env!("CARGO_BIN_EXE_vmoverlay");
    let times = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            let out = Command::new(exe)
                .args(["status", "--json", "--connect", &uri])
                .env("VMOVERLAY_STATE_DIR", root.join("state"))
                .output()
                .unwrap();
            let took = t.elapsed();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v.as_array().unwrap().len(), domains);
            assert_eq!(v[0]["disks"][0]["changed_bytes"], 0);
            took
        })
        .collect();
    median(times)
}

fn main() {
    let mib = arg("--mib", 1024);
    let rounds = arg("--rounds", 3);
    let domains = arg("--domains", 100);
    let root = tempfile::Builder::new()
        .prefix("vmoverlay-bench-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let journal = Journal::at(root.path().join("state/journal"));

    let mut engine = Vec::new();
    let mut plain = Vec::new();
    let mut rebuild = Vec::new();
    for r in 0..rounds {
        let (_, ov_a) = dirty_pair(&root.path().join(format!("a{r}")), mib);
        let (_, ov_b) = dirty_pair(&root.path().join(format!("b{r}")), mib);
        // Alternate which goes first, so page-cache warmth favours neither.
        let mut do_engine = || {
            let req = Request {
                op: OpKind::Commit,
                uri: "none".into(),
                domain: "bench".into(),
                disk: inspect_overlay("vda", &ov_a).unwrap(),
                firmware: None,
            };
            let t = Instant::now();
            ops::run(&req, &NoDomain, &journal, &mut |_| {}).unwrap();
            engine.push(t.elapsed());
        };
        let mut do_plain = || {
            let t = Instant::now();
            run(Command::new("qemu-img")
                .args(["commit", "-q", "-f", "qcow2"])
                .arg(&ov_b));
            plain.push(t.elapsed());
        };
        if r % 2 == 0 {
            do_engine();
            do_plain();
        } else {
            do_plain();
            do_engine();
        }
        let disk = inspect_overlay("vda", &ov_a).unwrap();
        for _ in 0..10 {
            let t = Instant::now();
            vmoverlay::overlay::qemu_img::rebuild(&disk).unwrap();
            rebuild.push(t.elapsed());
        }
        let _ = std::fs::remove_dir_all(root.path().join(format!("a{r}")));
        let _ = std::fs::remove_dir_all(root.path().join(format!("b{r}")));
    }
    let status = status_bench(root.path(), domains, rounds);

    let (e, p) = (median(engine.clone()), median(plain.clone()));
    println!("| measurement | runs | median |");
    println!("|---|---|---|");
    println!(
        "| engine commit of {mib} MiB (preconditions + commit + check + rebuild) | {} | {} |",
        engine.len(),
        secs(e)
    );
    println!(
        "| `qemu-img commit` alone, same data | {} | {} |",
        plain.len(),
        secs(p)
    );
    println!(
        "| ratio engine / qemu-img | | {:.2} |",
        e.as_secs_f64() / p.as_secs_f64()
    );
    println!(
        "| rebuild of an overlay | {} | {:.1} ms |",
        rebuild.len(),
        median(rebuild).as_secs_f64() * 1e3
    );
    println!(
        "| `vmoverlay status --json` for {domains} domains | {rounds} | {} |",
        secs(status)
    );
}
