//! Prompt benchmark (`cargo bench --bench prompt`; needs the test bed, run `./run-tests` once),
//! printed as tables. It measures what the user sees, in a real headless sway session run as
//! an unprivileged user (the tests' session code), on the tiny real guest:
//! - idle, before the first window: RSS, CPU time, processes spawned and wakeups per thread;
//! - time from libvirt's Stopped event (`virsh event --timestamp`) to the compositor's own
//!   `window` `new` event (sway IPC: the window's first frame is on screen), for every
//!   power-off including the first after start, side by side with a 5-second `virsh list`
//!   polling loop (the old tool's method) noticing the same stop, and GTK's `map` for
//!   reference;
//! - RSS after all the prompts.
//!
//! Each prompt is answered "Later" through the application's own action over D-Bus
//! (`org.gtk.Actions`), so the next power-off asks again.
//!
//! Options: `--runs N` (default 20), `--idle-secs N` (default 60), `--renderer NAME` (sets
//! `GSK_RENDERER` for the app, e.g. `gl`; default: the app's own choice, cairo).

#[path = "support/args.rs"]
mod args;
use args::arg;

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use common::desktop::{Hook, Kind, Session};
use common::guest::{Behaviour, TestVm};
use common::{bin, testbed_shared};

const APP_ID: &str = "io.github.vmoverlay.VMOverlay";

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

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// Fields of /proc/PID/stat after the command name (state is field 0).
fn stat_fields(pid: u32) -> Vec<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect()
}

/// utime + stime of a process and of its waited-for children, in seconds.
fn cpu_secs(pid: u32) -> (f64, f64) {
    let f = stat_fields(pid);
    let g = |i: usize| *f.get(i).unwrap_or(&0) as f64 / 100.0;
    (g(11) + g(12), g(13) + g(14))
}

/// Minor faults of waited-for children: any process spawned and reaped adds to it.
fn children_minflt(pid: u32) -> u64 {
    *stat_fields(pid).get(7).unwrap_or(&0)
}

/// A "Name: N kB" field of a /proc file, in KiB.
fn kib(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// VmRSS, its anonymous part, and PSS (shared library pages divided among their users).
struct Memory {
    rss: u64,
    anon: u64,
    pss: u64,
}

fn memory(pid: u32) -> Memory {
    let status = format!("/proc/{pid}/status");
    Memory {
        rss: kib(&status, "VmRSS:"),
        anon: kib(&status, "RssAnon:"),
        pss: kib(&format!("/proc/{pid}/smaps_rollup"), "Pss:"),
    }
}

/// Resident KiB per mapped file (anonymous memory as "[anon]"), largest first.
fn rss_by_file(pid: u32) -> Vec<(String, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    let mut current = String::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            current = words.nth(4).unwrap_or("[anon]").to_string();
        } else if first == "Rss:" {
            *by.entry(current.clone()).or_default() +=
                words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    let mut v: Vec<_> = by.into_iter().filter(|(_, k)| *k > 0).collect();
    v.sort_by_key(|f| std::cmp::Reverse(f.1));
    v
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Context switches (voluntary + involuntary) per thread name: each is a wakeup.
fn switches_by_thread(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let dir = t.path();
        let name = std::fs::read_to_string(dir.join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let n: u64 = std::fs::read_to_string(dir.join("status"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        *out.entry(name).or_default() += n;
    }
    out
}

/// Children of `pid` alive now (the app runs under `setpriv`, which execs: same PID).
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
    let runs: usize = arg("--runs", 20);
    let idle: u64 = arg("--idle-secs", 60);
    let renderer: String = arg("--renderer", String::new());
    // --smaps 1: also list where the resident memory is, file by file.
    let smaps: u32 = arg("--smaps", 0);
    let bed = testbed_shared();
    let s = Session::start(Kind::Wayland);
    let vm = TestVm::define(
        &bed.uri,
        "vmo-bench-prompt",
        &Behaviour {
            marker: Some("BENCH".into()),
            ..Default::default()
        },
    );
    // The app runs as the session's unprivileged user: it must read the images.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(vm.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for img in [&vm.base, &vm.overlay] {
        std::fs::set_permissions(img, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let windows = s.sway_window_events();
    let hook = Hook(s.home.join("hook.jsonl"));
    let mut cmd = s.command(bin());
    cmd.args(["--connect", &bed.uri])
        .env("VMOVERLAY_TEST_HOOK", &hook.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if !renderer.is_empty() {
        cmd.env("GSK_RENDERER", &renderer);
    }
    let app = Kill(cmd.spawn().unwrap());
    let pid = app.0.id();
    hook.wait("tray", Duration::from_secs(30), |v| {
        v["event"] == "tray-ready"
    });
    // Settled: the start-up inspection of the (shut off) guest is done.
    std::thread::sleep(Duration::from_secs(5));

    // Idle, before the first window, side by side with a 5-second polling loop in a shell.
    let mem_idle = memory(pid);
    let files_idle = rss_by_file(pid);
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
    let (cpu0, ccpu0) = cpu_secs(pid);
    let (base0, cbase0) = cpu_secs(baseline.0.id());
    let (flt0, sw0) = (children_minflt(pid), switches_by_thread(pid));
    let t0 = Instant::now();
    let mut seen = std::collections::HashSet::new();
    let mut base_seen = std::collections::HashSet::new();
    while t0.elapsed() < Duration::from_secs(idle) {
        seen.extend(children_of(pid));
        base_seen.extend(children_of(baseline.0.id()));
        std::thread::sleep(Duration::from_millis(10));
    }
    let minutes = t0.elapsed().as_secs_f64() / 60.0;
    let (cpu1, ccpu1) = cpu_secs(pid);
    let (base1, cbase1) = cpu_secs(baseline.0.id());
    let (flt1, sw1) = (children_minflt(pid), switches_by_thread(pid));
    drop(baseline);
    let reaped_children = flt1 > flt0;

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

    let target = format!("('{}', '{}')", bed.uri, vm.name);
    let mut frame = Vec::new();
    let mut mapped_v = Vec::new();
    let mut polling = Vec::new();
    let mut missed_by_poller = 0;
    let mut others = 0;
    for run in 0..runs {
        let before = hook.count(|v| v["event"] == "prompt-mapped" && v["vm"] == vm.name.as_str());
        vm.start();
        let stopped = stops
            .recv_timeout(Duration::from_secs(120))
            .expect("the guest stopped");
        // The shared test bed may run other people's guests, which this app prompts for too:
        // a window is this VM's prompt once an event names it (sway sends `new` untitled).
        let want = format!("{} has shut down", vm.name);
        let mut news: BTreeMap<i64, SystemTime> = BTreeMap::new();
        let shown = loop {
            let (t, v) = windows
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("run {run}: no window on screen"));
            let c = &v["container"];
            if c["app_id"] != APP_ID {
                continue;
            }
            let id = c["id"].as_i64().unwrap_or(-1);
            if v["change"] == "new" {
                news.insert(id, t);
            }
            if c["name"].as_str().is_some_and(|n| n == want) {
                if let Some(t) = news.get(&id) {
                    others += news.len() - 1;
                    break *t;
                }
            }
        };
        eprintln!(
            "run {run}: stopped {} shown {}",
            humantime::format_rfc3339_nanos(stopped),
            humantime::format_rfc3339_nanos(shown)
        );
        frame.push(shown.duration_since(stopped).unwrap_or_default());
        hook.wait_count("prompt-mapped", Duration::from_secs(10), before + 1, |v| {
            v["event"] == "prompt-mapped" && v["vm"] == vm.name.as_str()
        });
        let mapped = hook
            .events()
            .into_iter()
            .filter(|v| v["event"] == "prompt-mapped" && v["vm"] == vm.name.as_str())
            .nth(before)
            .unwrap();
        let mapped = humantime::parse_rfc3339(mapped["time"].as_str().unwrap()).unwrap();
        mapped_v.push(mapped.duration_since(stopped).unwrap_or_default());
        match polled.recv_timeout(Duration::from_secs(6)) {
            Ok(t) => polling.push(t.duration_since(stopped).unwrap_or_default()),
            Err(_) => missed_by_poller += 1,
        }
        // "Later", so the next stop asks again; the window goes away.
        s.activate_action("later", Some(&target));
        loop {
            let (_, v) = windows
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("run {run}: the prompt never closed"));
            if v["change"] == "close" && v["container"]["name"].as_str() == Some(want.as_str()) {
                break;
            }
        }
    }
    stop_poller.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = poller.join();
    std::thread::sleep(Duration::from_secs(1));
    let mem_after = memory(pid);
    if smaps > 0 {
        let before: BTreeMap<_, _> = files_idle.into_iter().collect();
        let after: BTreeMap<_, _> = rss_by_file(pid).into_iter().collect();
        let files: std::collections::BTreeSet<_> = before.keys().chain(after.keys()).collect();
        let mut files: Vec<_> = files.into_iter().collect();
        files.sort_by_key(|f| {
            std::cmp::Reverse(before.get(*f).max(after.get(*f)).copied().unwrap_or(0))
        });
        println!("| resident, by mapping (KiB) | before the first window | after {runs} prompts |");
        println!("|---|---|---|");
        for file in files.into_iter().take(50) {
            let kib = |m: &BTreeMap<String, u64>| m.get(file).copied().unwrap_or(0);
            println!("| {file} | {} | {} |", kib(&before), kib(&after));
        }
        println!();
    }

    let shown_renderer = if renderer.is_empty() {
        "GSK_RENDERER unset: the app's default, cairo".to_string()
    } else {
        format!("GSK_RENDERER={renderer}")
    };
    println!(
        "Renderer: {shown_renderer}; sway 1.7 headless, WLR_RENDERER=pixman (software), {} cores.",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| {runs} guest power-offs, from libvirt's Stopped event | first after start | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    let row = |what: &str, v: &[Duration]| {
        println!(
            "| {what} | {} | {} | {} | {} |",
            ms(v[0]),
            ms(percentile(v, 0.5)),
            ms(percentile(v, 0.99)),
            ms(*v.iter().max().unwrap())
        );
    };
    row(
        "VM Overlay: prompt's first frame on screen (sway `window` `new`)",
        &frame,
    );
    row(
        "VM Overlay: prompt mapped (GTK `map`, for reference)",
        &mapped_v,
    );
    if !polling.is_empty() {
        println!(
            "| 5 s `virsh list` poller: stop noticed ({} of {runs} seen) | – | {} | {} | {} |",
            polling.len(),
            ms(percentile(&polling, 0.5)),
            ms(percentile(&polling, 0.99)),
            ms(*polling.iter().max().unwrap())
        );
    }
    if missed_by_poller > 0 {
        println!("| stops the poller did not notice within 6 s | {missed_by_poller} | | | |");
    }
    if others > 0 {
        println!(
            "| (prompts for other guests on the shared test bed during the runs: {others}) | | | | |"
        );
    }
    println!();
    println!("| VM Overlay, memory | before the first window | after {runs} prompts |");
    println!("|---|---|---|");
    println!("| VmRSS | {} | {} |", mib(mem_idle.rss), mib(mem_after.rss));
    println!(
        "| of which anonymous (RssAnon) | {} | {} |",
        mib(mem_idle.anon),
        mib(mem_after.anon)
    );
    println!(
        "| PSS (shared pages divided among their users) | {} | {} |",
        mib(mem_idle.pss),
        mib(mem_after.pss)
    );
    println!();
    println!(
        "| idle {idle} s, no VM running, no window | CPU per minute | processes spawned | wakeups per minute |"
    );
    println!("|---|---|---|---|");
    // Per thread name, over the threads alive at both ends (a worker that ended meanwhile
    // would make a plain difference of the sums wrap around).
    let per_thread = |name: &String, n: &u64| n.saturating_sub(sw0.get(name).copied().unwrap_or(0));
    let wakeups: u64 = sw1.iter().map(|(k, v)| per_thread(k, v)).sum();
    println!(
        "| VM Overlay (app, tray, monitor) | {:.1} ms | {}{} | {:.0} |",
        ((cpu1 - cpu0) + (ccpu1 - ccpu0)) * 1e3 / minutes,
        seen.len(),
        if reaped_children && seen.is_empty() {
            " (children's page faults grew: at least one)"
        } else {
            ""
        },
        wakeups as f64 / minutes
    );
    println!(
        "| 5 s `virsh list` polling loop (sh + virsh) | {:.1} ms | {} | – |",
        ((base1 - base0) + (cbase1 - cbase0)) * 1e3 / minutes,
        base_seen.len(),
    );
    println!();
    println!("| VM Overlay thread (idle) | wakeups per minute |");
    println!("|---|---|");
    for (name, n) in &sw1 {
        println!("| {name} | {:.0} |", per_thread(name, n) as f64 / minutes);
    }
    drop(events);
}
