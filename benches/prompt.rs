//! Prompt benchmark (`cargo bench --bench prompt`; needs the test bed, run `./run-tests` once),
//! printed as a table. Side by side in one run on the tiny real guest:
//! - time from libvirt's Stopped event (`virsh event --timestamp`) to VM Overlay's dialog
//!   being mapped, against a 5-second `virsh list` polling loop (the old tool's method)
//!   noticing the same stop;
//! - idle cost over 60 s with no VM running: CPU time, processes spawned, RSS.
//!
//! Options: `--runs N` (default 20), `--idle-secs N` (default 60).

#[path = "support/args.rs"]
mod args;
use args::arg;

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use common::desktop::{Hook, Kind, Session};
use common::guest::{Behaviour, TestVm};
use common::{bin, testbed_shared};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// "2026-11-22 04:40:01.123+0000: event 'lifecycle' for domain 'x': Stopped Shutdown"
fn stopped_time(line: &str, vm: &str) -> Option<SystemTime> {
    if !line.contains(&format!("domain '{vm}'")) || !line.contains("Stopped") {
        return None;
    }
    let (stamp, _) = line.split_once("+0000:")?;
    humantime::parse_rfc3339(&format!("{}Z", stamp.replace(' ', "T"))).ok()
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// utime + stime (+ children's, when `with_children`) of a process, in seconds.
fn cpu_secs(pid: u32, with_children: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // Fields after the comm: state=0, … utime=11, stime=12, cutime=13, cstime=14.
    let ticks = f.get(11).unwrap_or(&0.0)
        + f.get(12).unwrap_or(&0.0)
        + if with_children {
            f.get(13).unwrap_or(&0.0) + f.get(14).unwrap_or(&0.0)
        } else {
            0.0
        };
    ticks / 100.0
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Descendants of `pid` seen now.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

fn main() {
    let runs = arg("--runs", 20);
    let idle = arg("--idle-secs", 60);
    let bed = testbed_shared();
    let s = Session::start(Kind::X11);
    let vm = TestVm::define(
        &bed.uri,
        "vmo-bench-prompt",
        &Behaviour {
            marker: Some("BENCH".into()),
            ..Default::default()
        },
    );
    let hook = Hook(s.home.join("hook.jsonl"));
    let app = Kill(
        s.command(bin())
            .args(["--connect", &bed.uri])
            .env("VMOVERLAY_TEST_HOOK", &hook.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    hook.wait("tray", Duration::from_secs(30), |v| {
        v["event"] == "tray-ready"
    });

    // libvirt's own timestamps of the Stopped events.
    let mut events = Kill(
        Command::new("virsh")
            .args(["-c", &bed.uri, "event", "--all", "--loop", "--timestamp"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, stops) = mpsc::channel();
    let out = events.0.stdout.take().unwrap();
    let name = vm.name.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(t) = stopped_time(&line, &name) {
                let _ = tx.send(t);
            }
        }
    });
    // The baseline: poll `virsh list` every 5 s, as the old tool did.
    let (ptx, polled) = mpsc::channel();
    let (uri, name) = (bed.uri.clone(), vm.name.clone());
    let stop_poller = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = stop_poller.clone();
    let poller = std::thread::spawn(move || {
        let mut was_running = false;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let out = Command::new("virsh")
                .args(["-q", "-c", &uri, "list", "--name", "--state-running"])
                .output()
                .unwrap();
            let running = String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.trim() == name);
            if was_running && !running {
                let _ = ptx.send(SystemTime::now());
            }
            was_running = running;
            std::thread::sleep(Duration::from_secs(5));
        }
    });

    let mut prompt = Vec::new();
    let mut polling = Vec::new();
    let mut missed_by_poller = 0;
    for run in 0..runs as usize {
        let before = hook.count(|v| v["event"] == "prompt-mapped" && v["vm"] == vm.name.as_str());
        vm.start();
        let stopped = stops
            .recv_timeout(Duration::from_secs(120))
            .expect("the guest stopped");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mapped = loop {
            let mapped: Vec<_> = hook
                .events()
                .into_iter()
                .filter(|v| v["event"] == "prompt-mapped" && v["vm"] == vm.name.as_str())
                .collect();
            if mapped.len() > before {
                break humantime::parse_rfc3339(mapped[before]["time"].as_str().unwrap()).unwrap();
            }
            assert!(Instant::now() < deadline, "run {run}: no prompt");
            std::thread::sleep(Duration::from_millis(10));
        };
        prompt.push(mapped.duration_since(stopped).unwrap_or_default());
        match polled.recv_timeout(Duration::from_secs(6)) {
            Ok(t) => polling.push(t.duration_since(stopped).unwrap_or_default()),
            Err(_) => missed_by_poller += 1,
        }
        // Answer "Later" (Escape is the dialog's close response) so the next stop asks again.
        let w = s
            .command("xdotool")
            .args(["search", "--name", "has shut down"])
            .output()
            .unwrap();
        for id in String::from_utf8_lossy(&w.stdout).lines() {
            let _ = s
                .command("xdotool")
                .args(["windowactivate", "--sync", id, "key", "Escape"])
                .output();
        }
        hook.wait("the answer", Duration::from_secs(10), |v| {
            v["event"] == "prompt-response"
        });
        let answered = hook.count(|v| v["event"] == "prompt-response");
        assert_eq!(answered, run + 1, "each prompt was answered once");
    }
    stop_poller.store(true, std::sync::atomic::Ordering::Relaxed);

    // Idle: no VM running, side by side with a 5-second polling loop in a shell.
    let pid = app.0.id();
    let baseline = Kill(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while true; do virsh -q -c '{}' list --name >/dev/null; sleep 5; done",
                bed.uri
            ))
            .spawn()
            .unwrap(),
    );
    let (cpu0, base0) = (cpu_secs(pid, true), cpu_secs(baseline.0.id(), true));
    let t0 = Instant::now();
    let mut seen = std::collections::HashSet::new();
    let mut base_seen = std::collections::HashSet::new();
    while t0.elapsed() < Duration::from_secs(idle) {
        seen.extend(children_of(pid));
        base_seen.extend(children_of(baseline.0.id()));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (cpu1, base1) = (cpu_secs(pid, true), cpu_secs(baseline.0.id(), true));
    let rss = rss_kib(pid);
    drop(baseline);
    let _ = poller.join();

    println!("| measurement ({runs} guest shutdowns) | p50 | p99 | max |");
    println!("|---|---|---|---|");
    let (p50, p99, max) = (
        percentile(&mut prompt, 0.5),
        percentile(&mut prompt, 0.99),
        *prompt.iter().max().unwrap(),
    );
    println!(
        "| VM Overlay: libvirt Stopped event -> dialog mapped | {} | {} | {} |",
        ms(p50),
        ms(p99),
        ms(max)
    );
    if !polling.is_empty() {
        let (p50, p99, max) = (
            percentile(&mut polling, 0.5),
            percentile(&mut polling, 0.99),
            *polling.iter().max().unwrap(),
        );
        println!(
            "| 5 s `virsh list` polling: Stopped event -> stop noticed ({} of {runs} seen) | {} | {} | {} |",
            polling.len(),
            ms(p50),
            ms(p99),
            ms(max)
        );
    }
    if missed_by_poller > 0 {
        println!("| stops the poller did not notice within 6 s | {missed_by_poller} | | |");
    }
    println!();
    println!("| idle for {idle} s, no VM running | CPU time | processes spawned | RSS |");
    println!("|---|---|---|---|");
    println!(
        "| VM Overlay (app, tray, monitor) | {:.2} s | {} | {} MiB |",
        cpu1 - cpu0,
        seen.len(),
        rss / 1024
    );
    println!(
        "| 5 s `virsh list` polling loop (sh + virsh) | {:.2} s | {} | – |",
        base1 - base0,
        base_seen.len()
    );
}
