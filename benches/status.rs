//! Inspection benchmark (`cargo bench --bench status`), printed as a table. Side by side in
//! one run, on real overlays made with qemu-img and qemu-io in a temporary directory:
//! - reading N overlays (chain + changed bytes) with the Rust qcow2 reader vs the two
//!   `qemu-img` subprocesses per overlay it replaced (`info --backing-chain -U`, `map -U`);
//! - `vmoverlay status --json` for many shut-off domains on the real libvirtd test bed
//!   (`tests/testbed/testbed.sh start`; defined here, undefined afterwards), and on libvirt's
//!   test driver, with the processes it spawned (counted with `strace -f -e trace=execve`).
//!
//! Options: `--rounds N` (3), `--mib N` written per overlay (4), `--domains N` (1000),
//! `--no-testbed` (only the test driver).

#[path = "support/args.rs"]
mod args;
#[path = "support/images.rs"]
mod images;
use args::arg;
use images::{median, run};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vmoverlay::overlay::image;

/// `n` real overlays of one base, each with `mib` MiB written (data and zeroes): one made
/// with qemu-img and qemu-io, the rest byte copies of it.
fn overlays(dir: &Path, n: usize, mib: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let base = dir.join("base.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg("256M"));
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0xaa 0 16M"])
        .arg(&base));
    let template = dir.join("template.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&template));
    let half = (mib * 1024 / 2).max(64);
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c"])
        .arg(format!("write -P 0x55 1M {half}k"))
        .arg("-c")
        .arg(format!("write -z 100M {half}k"))
        .arg("-c")
        .arg("write -P 0x66 200M 4k")
        .arg(&template));
    (0..n)
        .map(|i| {
            let p = dir.join(format!("vm{i:04}.qcow2"));
            std::fs::copy(&template, &p).unwrap();
            p
        })
        .collect()
}

fn read_rust(ovs: &[PathBuf]) -> (Duration, u64) {
    let t = Instant::now();
    let mut total = 0;
    for ov in ovs {
        let chain = image::backing_chain(ov).unwrap();
        assert_eq!(chain.len(), 2);
        total += image::changed_bytes(ov).unwrap();
    }
    (t.elapsed(), total)
}

fn read_qemu_img(ovs: &[PathBuf]) -> (Duration, u64) {
    let t = Instant::now();
    let mut total = 0;
    for ov in ovs {
        let info = Command::new("qemu-img")
            .args(["info", "--backing-chain", "--output=json", "-U"])
            .arg(ov)
            .output()
            .unwrap();
        assert!(info.status.success());
        let chain: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(chain.as_array().unwrap().len(), 2);
        let map = Command::new("qemu-img")
            .args(["map", "--output=json", "-U", "-f", "qcow2"])
            .arg(ov)
            .output()
            .unwrap();
        assert!(map.status.success());
        let entries: serde_json::Value = serde_json::from_slice(&map.stdout).unwrap();
        total += entries
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["depth"] == 0 && e["present"] == true)
            .map(|e| e["length"].as_u64().unwrap())
            .sum::<u64>();
    }
    (t.elapsed(), total)
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn per(d: Duration, n: usize) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3 / n as f64)
}

/// Runs `vmoverlay status --json` on `uri` `rounds` times (median), checks it saw the
/// `domains` domains named `prefix...` with `changed` bytes each (other engineers' domains may
/// share the test bed), then once under strace: the processes it spawned.
fn status(
    uri: &str,
    state: &Path,
    prefix: &str,
    domains: usize,
    changed: u64,
    rounds: usize,
) -> (Duration, String) {
    let exe = env!("CARGO_BIN_EXE_vmoverlay");
    let times = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            let out = Command::new(exe)
                .args(["status", "--json", "--connect", uri])
                .env("VMOVERLAY_STATE_DIR", state)
                .output()
                .unwrap();
            let took = t.elapsed();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let list: Vec<_> = v
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["domain"].as_str().unwrap().starts_with(prefix))
                .collect();
            assert_eq!(list.len(), domains);
            for d in list {
                assert_eq!(d["disks"][0]["changed_bytes"], changed, "{d}");
            }
            took
        })
        .collect();
    let trace = state.join("execve.trace");
    let st = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=execve", "-o"])
        .arg(&trace)
        .args([exe, "status", "--json", "--connect", uri])
        .env("VMOVERLAY_STATE_DIR", state)
        .stdout(std::process::Stdio::null())
        .status();
    let spawned = match st {
        Ok(s) if s.success() => {
            let text = std::fs::read_to_string(&trace).unwrap_or_default();
            // The first execve is vmoverlay itself.
            let n = text.lines().filter(|l| l.contains("execve(")).count();
            n.saturating_sub(1).to_string()
        }
        _ => "? (strace missing)".to_string(),
    };
    (median(times), spawned)
}

/// Shut-off persistent domains on the test bed, undefined when dropped.
struct Defined {
    conn: virt::connect::Connect,
    names: Vec<String>,
}

impl Drop for Defined {
    fn drop(&mut self) {
        for n in &self.names {
            if let Ok(d) = self.conn.lookup_domain_by_name(n) {
                let _ = d.undefine();
            }
        }
    }
}

fn domain_xml(name: &str, disk: &Path) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
         <os><type arch='x86_64'>hvm</type></os><devices>\
         <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{}'/><target dev='vda' bus='virtio'/></disk></devices></domain>",
        disk.display()
    )
}

fn testbed_uri() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testbed/testbed.sh");
    let st = Command::new(&script).arg("start").status();
    assert!(
        st.is_ok_and(|s| s.success()),
        "the status benchmark needs the real libvirtd test bed: run tests/testbed/testbed.sh \
         install, or pass --no-testbed"
    );
    let out = Command::new(&script).arg("uri").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn main() {
    let rounds = arg("--rounds", 3usize);
    let mib = arg("--mib", 4usize);
    let domains = arg("--domains", 1000usize);
    let testbed = !std::env::args().any(|a| a == "--no-testbed");
    let root = tempfile::Builder::new()
        .prefix("vmoverlay-bench-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let all = overlays(&root.path().join("imgs"), domains.max(1000), mib);
    let mut rows = Vec::new();
    for n in [100, 1000] {
        let ovs = &all[..n];
        let mut rust = Vec::new();
        let mut changed = 0;
        for _ in 0..rounds {
            let (t, c) = read_rust(ovs);
            rust.push(t);
            changed = c;
        }
        // The subprocesses are slow: fewer rounds of the larger set.
        let mut qemu = Vec::new();
        for _ in 0..if n >= 1000 { 1 } else { rounds } {
            let (t, c) = read_qemu_img(ovs);
            assert_eq!(c, changed, "both readers agree on the changed bytes");
            qemu.push(t);
        }
        let (r, q) = (median(rust), median(qemu));
        rows.push(format!(
            "| read {n} overlays (chain + changed bytes, {} each) | {} ({}/overlay) | {} ({}/overlay) | {:.0}x |",
            vmoverlay::units::human_bytes(changed / n as u64),
            secs(r),
            per(r, n),
            secs(q),
            per(q, n),
            q.as_secs_f64() / r.as_secs_f64()
        ));
    }
    let per_overlay = image::changed_bytes(&all[0]).unwrap();
    let disks = &all[..domains];

    // libvirt's test driver: in-process, so only our own work is measured.
    let mut xml = String::from("<node>\n");
    for (i, d) in disks.iter().enumerate() {
        xml.push_str(&format!(
            "<domain type='test'><name>vm{i:04}</name><memory>1024</memory><os><type>hvm</type></os>\
             <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
             <source file='{}'/><target dev='vda' bus='virtio'/></disk></devices></domain>\n",
            d.display()
        ));
    }
    xml.push_str("</node>\n");
    let node = root.path().join("node.xml");
    std::fs::write(&node, xml).unwrap();
    let state = root.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let (t, spawned) = status(
        &format!("test://{}", node.display()),
        &state,
        "vm",
        domains,
        per_overlay,
        rounds,
    );
    rows.push(format!(
        "| `vmoverlay status --json`, {domains} running domains, libvirt test driver | {} | | | {spawned} processes spawned |",
        secs(t)
    ));

    if testbed {
        let uri = testbed_uri();
        let conn = virt::connect::Connect::open(Some(&uri)).unwrap();
        let mut defined = Defined {
            conn: conn.clone(),
            names: Vec::new(),
        };
        let prefix = format!("vmoverlay-bench-{}-", std::process::id());
        let t = Instant::now();
        for (i, d) in disks.iter().enumerate() {
            let name = format!("{prefix}{i:04}");
            conn.define_domain_xml(&domain_xml(&name, d)).unwrap();
            defined.names.push(name);
        }
        let define_time = t.elapsed();
        let others = conn.list_all_domains(0).map_or(0, |d| d.len()) - domains;
        let (t, spawned) = status(&uri, &state, &prefix, domains, per_overlay, rounds);
        rows.push(format!(
            "| `vmoverlay status --json`, {domains} shut-off domains (+{others} others), real libvirtd test bed (defined in {}) | {} | | | {spawned} processes spawned |",
            secs(define_time),
            secs(t)
        ));
        drop(defined);
    }

    println!("| measurement | Rust reader | qemu-img subprocesses | speed-up |");
    println!("|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    println!("\n({rounds} rounds, median; qemu-img for 1000 overlays: 1 round; one thread each)");
}
