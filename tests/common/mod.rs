//! Test support shared by the integration tests: the real-libvirtd test bed, a `watch`
//! process reader, and the tiny real guest.
//!
//! Nothing here skips: when a part (libvirtd, QEMU, the guest kernel) is missing, the test
//! fails with a message that says which part and how to get it.
#![allow(dead_code)]

pub mod desktop;
pub mod guest;
pub mod images;
pub mod shells;
pub mod vm_state;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn testbed_script() -> PathBuf {
    manifest_dir().join("tests/testbed/testbed.sh")
}

/// The URI of the project's test-bed libvirtd.
pub fn testbed_uri() -> String {
    let out = Command::new(testbed_script()).arg("uri").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn testbed(cmd: &str) {
    let st = Command::new(testbed_script())
        .arg(cmd)
        .status()
        .expect("run tests/testbed/testbed.sh");
    assert!(
        st.success(),
        "tests/testbed/testbed.sh {cmd} failed: this test needs a real libvirtd \
         (run `tests/testbed/testbed.sh install` as root, or the README's test command)"
    );
}

/// A hold on the shared test bed. Tests that restart the daemon hold it exclusively, so
/// they never pull the daemon from under a test running at the same time (in this process
/// or in another test binary).
pub struct TestbedGuard {
    _lock: File,
    pub uri: String,
}

fn lock_file() -> File {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("testbed.lock");
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap()
}

/// Shared use of the running test-bed daemon (started if needed).
pub fn testbed_shared() -> TestbedGuard {
    let lock = lock_file();
    lock.lock_shared().unwrap();
    testbed("start");
    TestbedGuard {
        _lock: lock,
        uri: testbed_uri(),
    }
}

/// Exclusive use: the holder may kill and restart the daemon.
pub fn testbed_exclusive() -> TestbedGuard {
    let lock = lock_file();
    lock.lock().unwrap();
    testbed("start");
    TestbedGuard {
        _lock: lock,
        uri: testbed_uri(),
    }
}

impl TestbedGuard {
    pub fn kill_daemon(&self) {
        testbed("kill");
    }
    pub fn start_daemon(&self) {
        testbed("start");
    }
    pub fn freeze_daemon(&self) {
        testbed("freeze");
    }
    pub fn thaw_daemon(&self) {
        testbed("thaw");
    }
}

/// Runs `cmd`, asserts that it succeeded (its stderr in the message) and returns its output.
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{:?} (is it installed?): {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn virsh(uri: &str, args: &[&str]) -> String {
    let out = run_ok(
        Command::new("virsh")
            .arg("-q")
            .arg("-c")
            .arg(uri)
            .args(args),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A running `vmoverlay watch --json`, read line by line on a thread.
pub struct WatchProcess {
    child: Child,
    lines: mpsc::Receiver<Value>,
    pub seen: Vec<Value>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_vmoverlay")
}

impl WatchProcess {
    pub fn start(uris: &[&str]) -> WatchProcess {
        let mut cmd = Command::new(bin());
        cmd.arg("watch").arg("--json");
        for u in uris {
            cmd.arg("--connect").arg(u);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("watch printed a non-JSON line {line:?}: {e}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err_buf = stderr.clone();
        let child_err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(child_err).lines().map_while(Result::ok) {
                let mut b = err_buf.lock().unwrap();
                b.push_str(&line);
                b.push('\n');
            }
        });
        WatchProcess {
            child,
            lines: rx,
            seen: Vec::new(),
            stderr,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the next line matching `pred`; every line read is kept in `seen`.
    pub fn expect(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!(
                    "timed out after {timeout:?} waiting for {what}; watch printed:\n{}\nstderr:\n{}",
                    self.seen
                        .iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join("\n"),
                    self.stderr()
                ),
            }
        }
    }

    /// Collects every line printed within `period`.
    pub fn collect_for(&mut self, period: Duration) -> Vec<Value> {
        let deadline = Instant::now() + period;
        let mut got = Vec::new();
        while let Ok(v) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(v.clone());
            got.push(v);
        }
        got
    }
}

impl Drop for WatchProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Does this JSON line describe `event`/`detail` of domain `name`?
pub fn is_event(v: &Value, name: &str, event: &str, detail: &str) -> bool {
    v["domain"] == name && v["event"] == event && v["detail"] == detail
}
