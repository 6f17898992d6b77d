//! The command line's contract for scripts: exit codes, one-line errors, JSON.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::bin;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_connect_error(uri: &str) {
    let (code, stdout, stderr) = run(&["status", "--connect", uri]);
    assert_eq!(code, 2, "status --connect {uri}: {stderr}");
    assert!(stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(&format!("cannot connect to '{uri}'")),
        "{stderr}"
    );
    assert!(stderr.contains("Nothing was changed"), "{stderr}");
}

#[test]
fn unknown_malformed_and_down_uris_are_clear_errors() {
    assert_connect_error("nosuchdriver:///nothing");
    assert_connect_error("::not a uri");
    assert_connect_error("qemu:///system?socket=/nonexistent/vmoverlay/libvirt-sock");
}

#[test]
fn status_json_lists_domains_with_state_and_reason() {
    let (code, stdout, stderr) = run(&["status", "--json", "--connect", "test:///default"]);
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let test = &v.as_array().unwrap()[0];
    assert_eq!(test["domain"], "test");
    assert_eq!(test["state"], "running");
    assert_eq!(test["uri"], "test:///default");
    assert_eq!(test["uuid"].as_str().unwrap().len(), 36);
    assert!(test["reason"].is_string());
}

#[test]
fn status_of_a_missing_domain_is_not_found() {
    let (code, _, stderr) = run(&["status", "nosuchvm", "--connect", "test:///default"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("no domain named 'nosuchvm'"), "{stderr}");
}

#[test]
fn usage_errors_have_their_own_code() {
    let (code, _, stderr) = run(&["status", "--no-such-flag"]);
    assert_eq!(code, 64, "{stderr}");
}

#[test]
fn watch_keeps_retrying_an_unreachable_uri_and_says_so() {
    let uri = "qemu:///system?socket=/nonexistent/vmoverlay/libvirt-sock";
    let mut child = Command::new(bin())
        .args(["watch", "--connect", uri])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "watch exited instead of retrying"
    );
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let retries = stderr.lines().filter(|l| l.contains("retrying in")).count();
    assert!(retries >= 2, "stderr: {stderr}");
    assert!(stderr.contains(uri));
}

#[test]
fn watch_prints_connected_line_and_stops_on_sigterm() {
    let mut child = Command::new(bin())
        .args(["watch", "--json", "--connect", "test:///default"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["event"], "connected");
    assert_eq!(first["uri"], "test:///default");
    assert_eq!(first["domains"], 1);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "watch exits cleanly on SIGTERM");
}
