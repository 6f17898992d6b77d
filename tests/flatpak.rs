//! The Flatpak. First the manifest as a file: it parses, it names the app as the rest of the
//! project does, every file it names exists, every archive has a sha256, its finish-args are
//! exactly the documented ones, and its crate sources are exactly Cargo.lock's (and what
//! build-aux/flatpak-cargo-sources.py writes). Then the Flatpak built and run for real:
//! build-aux/flatpak-build.sh builds the manifest with flatpak-builder against stand-in
//! runtimes made from Debian packages (build-aux/stand-in-runtimes.sh; Flathub is out of
//! reach) and installs it into a private installation, and the tests `flatpak run` it in its
//! bubblewrap sandbox against the test bed's libvirtd, in a real X11 session with the portals.
//! The first build takes about 15 minutes on 2 cores; later ones reuse the cache in
//! /var/cache/vmoverlay-flatpak (see those scripts).

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::desktop::{find_item, labels, Hook, Kind, Session};
use common::guest::{read_image, Behaviour, TestVm};
use serde_json::Value;

const MANIFEST: &str = "build-aux/io.github.vmoverlay.VMOverlay.json";
const APP_ID: &str = vmoverlay::config::APP_ID;

fn read_json(rel: &str) -> Value {
    let path = common::manifest_dir().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel} is not JSON: {e}"))
}

fn modules(manifest: &Value) -> Vec<&Value> {
    manifest["modules"]
        .as_array()
        .expect("modules")
        .iter()
        .collect()
}

#[test]
fn the_manifest_names_the_app_and_only_what_exists() {
    let m = read_json(MANIFEST);
    assert_eq!(m["id"], vmoverlay::config::APP_ID);
    assert_eq!(m["command"], "vmoverlay");
    assert_eq!(m["runtime"], "org.gnome.Platform");
    assert_eq!(m["sdk"], "org.gnome.Sdk");
    assert!(m["sdk-extensions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "org.freedesktop.Sdk.Extension.rust-stable"));
    let names: Vec<&str> = modules(&m)
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "libtirpc",
            "rpcsvc-proto",
            "libvirt",
            "qemu-img",
            "vmoverlay"
        ]
    );
    let build_aux = common::manifest_dir().join("build-aux");
    for module in modules(&m) {
        for source in module["sources"].as_array().unwrap() {
            match source {
                // A file of generated sources, relative to the manifest.
                Value::String(file) => {
                    assert!(build_aux.join(file).is_file(), "{file} is missing")
                }
                s if s["type"] == "archive" => {
                    let sha = s["sha256"].as_str().unwrap_or("");
                    assert!(
                        sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
                        "{}: no sha256",
                        module["name"]
                    );
                    assert!(s["url"].as_str().unwrap().starts_with("https://"));
                }
                s if s["type"] == "dir" => {
                    let dir = build_aux.join(s["path"].as_str().unwrap());
                    assert!(dir.join("meson.build").is_file(), "{dir:?}");
                }
                other => panic!("unexpected source {other}"),
            }
        }
    }
    // The app module is built by the project's meson (which drives cargo), offline.
    let app = modules(&m)[4];
    assert_eq!(app["buildsystem"], "meson");
    assert_eq!(app["build-options"]["env"]["CARGO_NET_OFFLINE"], "true");
    // libvirt: the client library only, with the remote and test drivers.
    let opts: BTreeSet<&str> = modules(&m)[2]["config-opts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    for o in [
        "-Ddriver_remote=enabled",
        "-Ddriver_test=enabled",
        "-Ddriver_libvirtd=disabled",
        "-Ddriver_qemu=disabled",
    ] {
        assert!(opts.contains(o), "libvirt lacks {o}");
    }
    let qemu: Vec<&str> = modules(&m)[3]["config-opts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    assert!(qemu.contains(&"--enable-tools") && qemu.contains(&"--disable-system"));
}

#[test]
fn finish_args_are_exactly_the_documented_ones() {
    let m = read_json(MANIFEST);
    let args: BTreeSet<&str> = m["finish-args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let expected: BTreeSet<&str> = [
        "--socket=wayland",
        "--socket=fallback-x11",
        "--share=ipc",
        "--device=dri",
        "--filesystem=/run/libvirt",
        "--filesystem=xdg-run/libvirt",
        "--talk-name=org.kde.StatusNotifierWatcher",
    ]
    .into();
    assert_eq!(args, expected);
    // The README documents each of them.
    let readme = std::fs::read_to_string(common::manifest_dir().join("README.md")).unwrap();
    for a in &args {
        assert!(readme.contains(a), "README does not mention {a}");
    }
}

/// `(name, version, checksum)` of every registry package in Cargo.lock.
fn locked_crates() -> BTreeSet<(String, String, String)> {
    let lock = std::fs::read_to_string(common::manifest_dir().join("Cargo.lock")).unwrap();
    let mut out = BTreeSet::new();
    for block in lock.split("[[package]]").skip(1) {
        let field = |key: &str| {
            block.lines().find_map(|l| {
                l.strip_prefix(&format!("{key} = \""))
                    .and_then(|v| v.strip_suffix('"'))
                    .map(str::to_string)
            })
        };
        if field("source").is_some_and(|s| s.starts_with("registry+")) {
            out.insert((
                field("name").unwrap(),
                field("version").unwrap(),
                field("checksum").expect("a registry package has a checksum"),
            ));
        }
    }
    out
}

#[test]
fn crate_sources_are_exactly_cargo_lock() {
    let sources = read_json("build-aux/cargo-sources.json");
    let sources = sources.as_array().unwrap();
    let mut archives = BTreeSet::new();
    let mut checksum_files = BTreeSet::new();
    for s in sources {
        match s["type"].as_str().unwrap() {
            "archive" => {
                let url = s["url"].as_str().unwrap();
                let mut parts = url.rsplit('/');
                let file = parts.next().unwrap();
                let name = parts.next().unwrap();
                let version = file
                    .strip_prefix(&format!("{name}-"))
                    .and_then(|f| f.strip_suffix(".crate"))
                    .unwrap_or_else(|| panic!("{url}"));
                assert_eq!(s["dest"], format!("cargo/vendor/{name}-{version}"));
                archives.insert((
                    name.to_string(),
                    version.to_string(),
                    s["sha256"].as_str().unwrap().to_string(),
                ));
            }
            "inline" if s["dest-filename"] == ".cargo-checksum.json" => {
                let v: Value = serde_json::from_str(s["contents"].as_str().unwrap()).unwrap();
                checksum_files.insert(v["package"].as_str().unwrap().to_string());
            }
            "inline" if s["dest-filename"] == "config.toml" => {
                assert!(s["contents"]
                    .as_str()
                    .unwrap()
                    .contains("replace-with = \"vendored-sources\""));
            }
            other => panic!("unexpected source type {other}"),
        }
    }
    let locked = locked_crates();
    assert!(locked.len() > 100, "Cargo.lock parsed: {}", locked.len());
    let missing: Vec<_> = locked.difference(&archives).collect();
    let extra: Vec<_> = archives.difference(&locked).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "run build-aux/flatpak-cargo-sources.py: missing {missing:?}, extra {extra:?}"
    );
    let sums: BTreeSet<String> = locked.iter().map(|(_, _, c)| c.clone()).collect();
    assert_eq!(checksum_files, sums);
}

#[test]
fn the_generator_reproduces_the_committed_crate_sources() {
    let out = Command::new("python3")
        .arg(common::manifest_dir().join("build-aux/flatpak-cargo-sources.py"))
        .arg("--stdout")
        .output()
        .expect("python3 runs build-aux/flatpak-cargo-sources.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed =
        std::fs::read_to_string(common::manifest_dir().join("build-aux/cargo-sources.json"))
            .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout) == committed,
        "build-aux/cargo-sources.json is stale: run build-aux/flatpak-cargo-sources.py"
    );
}

// ---------------------------------------------------------------------------------------------
// The Flatpak built and run for real: build-aux/flatpak-build.sh makes the stand-in runtimes
// (Debian packages under the manifest's runtime names, build-aux/stand-in-runtimes.sh), builds
// the manifest with flatpak-builder and installs the app into a private installation; the tests
// below run it with `flatpak run` (bubblewrap, xdg-dbus-proxy, the portals) against the test
// bed's libvirtd. A missing part (flatpak, flatpak-builder >= 1.4, mmdebstrap, the network for
// the .debs and sources) fails the build, and so every test that needs it.

/// The private installation the app is installed into (`FLATPAK_USER_DIR`), after building.
fn installation() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let script = common::manifest_dir().join("build-aux/flatpak-build.sh");
            let start = Instant::now();
            // Its progress and, on failure, the end of flatpak-builder's log go to the terminal.
            let st = Command::new(&script)
                .status()
                .map_err(|e| format!("{}: {e}", script.display()))?;
            if !st.success() {
                return Err(format!(
                    "{} failed ({st}): the Flatpak could not be built (needs root, \
                     `tests/testbed/testbed.sh install` and the Debian mirror)",
                    script.display()
                ));
            }
            eprintln!("flatpak: built and installed in {:?}", start.elapsed());
            Ok(cache_dir().join("flatpak"))
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn cache_dir() -> PathBuf {
    std::env::var_os("VMOVERLAY_FLATPAK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/vmoverlay-flatpak"))
}

/// The test bed's socket directory, which the sandbox must be granted.
fn testbed_socket_dir(uri: &str) -> String {
    let socket = uri
        .split("socket=")
        .nth(1)
        .expect("the test bed's URI names its socket");
    Path::new(socket)
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

/// `flatpak run` of the installed app, outside any desktop session (the CLI).
fn flatpak_cli(run: &Path) -> Command {
    let mut c = Command::new("flatpak");
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", run.join("home"))
        .env("XDG_RUNTIME_DIR", run.join("run"))
        .env("LANG", "C.UTF-8")
        .env("FLATPAK_USER_DIR", installation());
    c
}

fn private_run_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("vmoverlay-flatpak-")
        .tempdir()
        .unwrap();
    std::fs::create_dir_all(dir.path().join("home")).unwrap();
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    std::fs::set_permissions(
        dir.path().join("run"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    dir
}

fn stdout_of(c: &mut Command) -> String {
    let out = c.output().expect("flatpak is installed");
    assert!(
        out.status.success(),
        "{c:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_flatpak_is_built_as_a_release_from_the_checkout_alone() {
    let dir = installation();
    // What flatpak-builder ran for the app module: meson's release build, hence cargo's.
    let log = std::fs::read_to_string(cache_dir().join("build.log")).unwrap();
    let app_part = log
        .split("Building module vmoverlay")
        .nth(1)
        .unwrap_or_else(|| panic!("the app module was built: {log}"));
    // meson lists the options it was given ("buildtype: release"); flatpak-builder passes none.
    assert!(
        app_part.lines().any(|l| {
            l.split_once(':')
                .is_some_and(|(k, v)| k.trim() == "buildtype" && v.trim() == "release")
        }),
        "meson was not asked for a release build:\n{app_part}"
    );
    assert!(
        app_part.contains("Finished `release` profile"),
        "cargo did not build the release profile:\n{app_part}"
    );
    // The installed app: its binary, libvirt's client library and qemu-img, and no debug build.
    let location = stdout_of(Command::new("flatpak").env("FLATPAK_USER_DIR", &dir).args([
        "--user",
        "info",
        "--show-location",
        APP_ID,
    ]));
    let files = Path::new(location.trim()).join("files");
    for f in ["bin/vmoverlay", "bin/qemu-img", "lib/libvirt.so.0"] {
        assert!(files.join(f).exists(), "the app lacks {f}");
    }
    let size = std::fs::metadata(files.join("bin/vmoverlay"))
        .unwrap()
        .len();
    assert!(
        size < 40 << 20,
        "bin/vmoverlay is {size} bytes: a debug build?"
    );
    // The sources copied into the build were the checkout without target/ and .git.
    let m = read_json(MANIFEST);
    let dir_source = modules(&m)[4]["sources"][0].clone();
    let skip: Vec<&str> = dir_source["skip"]
        .as_array()
        .expect("the dir source has a skip list")
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for s in ["target", ".git"] {
        assert!(skip.contains(&s), "the dir source copies {s}");
    }
}

#[test]
fn in_the_sandbox_status_lists_the_test_beds_domains_through_libvirt() {
    let bed = common::testbed_shared();
    let vm = TestVm::define(&bed.uri, "vmo-flatpak-status", &Behaviour::default());
    let run = private_run_dir();
    let sockets = testbed_socket_dir(&bed.uri);
    let grant = format!("--filesystem={sockets}");
    // The sandbox sees the daemon's socket, but not the images.
    let out = flatpak_cli(run.path())
        .args(["--user", "run", &grant, "--command=test", APP_ID, "-e"])
        .arg(&vm.overlay)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "the sandbox sees {}: {out:?}",
        vm.overlay.display()
    );
    let text = stdout_of(flatpak_cli(run.path()).args([
        "--user",
        "run",
        &grant,
        APP_ID,
        "status",
        "--connect",
        &bed.uri,
    ]));
    assert!(text.contains("vmo-flatpak-status"), "{text}");
    let json: Value = serde_json::from_str(&stdout_of(flatpak_cli(run.path()).args([
        "--user",
        "run",
        &grant,
        APP_ID,
        "status",
        "--json",
        "--connect",
        &bed.uri,
    ])))
    .unwrap();
    let domain = json
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["domain"] == "vmo-flatpak-status")
        .unwrap_or_else(|| panic!("status --json lacks the domain: {json}"));
    assert_eq!(domain["state"], "shutoff", "{domain}");
    let disk = &domain["disks"][0];
    assert_eq!(disk["overlay"], vm.overlay.to_str().unwrap(), "{domain}");
    assert_eq!(disk["base"], vm.base.to_str().unwrap(), "{domain}");
    assert_eq!(disk["engine"], "libvirt", "{domain}");
}

// ---- the app in a real X11 session (Xvfb, openbox, xfce4-panel's tray, dunst) ----

struct App(std::process::Child);
impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Points the session's D-Bus activation (the portals) at GNOME's and GTK's portal backends.
fn portal_environment(s: &Session) {
    s.activation_environment(&[
        "DISPLAY",
        "HOME",
        "XDG_CONFIG_HOME",
        "XDG_RUNTIME_DIR",
        "XDG_CURRENT_DESKTOP=GNOME",
        "GDK_BACKEND=x11",
    ]);
}

/// `flatpak run` of the app in the session, with `grants` added, writing its test hook.
fn start_sandboxed(s: &Session, grants: &[String], args: &[&str]) -> (App, Hook) {
    let hooks = s.home.join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let hook = Hook(hooks.join("hook.jsonl"));
    let log = std::fs::File::create(s.home.join("app.log")).unwrap();
    let child = s
        .command("flatpak")
        .env("FLATPAK_USER_DIR", installation())
        .args(["--user", "run"])
        .arg(format!("--filesystem={}", hooks.display()))
        .args(grants)
        .arg(format!("--env=VMOVERLAY_TEST_HOOK={}", hook.0.display()))
        .arg("--env=RUST_LOG=vmoverlay=info")
        .arg(APP_ID)
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("flatpak is installed");
    (App(child), hook)
}

fn app_log(s: &Session) -> String {
    std::fs::read_to_string(s.home.join("app.log")).unwrap_or_default()
}

fn our_item(s: &Session) -> String {
    let items = s.tray_items();
    assert_eq!(items.len(), 1, "exactly our item is registered: {items:?}");
    items[0].split('/').next().unwrap().to_string()
}

fn wait_menu(s: &Session, item: &str, what: &str, pred: impl Fn(&[String]) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let layout = s.menu(item);
        if pred(&labels(&layout)) {
            return layout;
        }
        assert!(
            Instant::now() < deadline,
            "tray menu never showed {what}: {:?}; app log:\n{}",
            labels(&layout),
            app_log(s)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_until(what: &str, timeout: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn xdotool(s: &Session, args: &[&str]) -> String {
    let out = s.command("xdotool").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Clicks the prompt's Commit (Discard | Later | Commit, left to right) with the mouse.
fn click_commit(s: &Session, title: &str) {
    let win = xdotool(s, &["search", "--name", title]);
    let win = win
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no window named {title:?}"));
    let geo = xdotool(s, &["getwindowgeometry", "--shell", win]);
    let val = |k: &str| -> i64 {
        geo.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {geo}"))
    };
    let x = val("X") + val("WIDTH") * 5 / 6;
    let y = val("Y") + val("HEIGHT") - 27;
    xdotool(
        s,
        &["mousemove", &x.to_string(), &y.to_string(), "click", "1"],
    );
}

/// Method calls on the session bus to `interface`, as `dbus-monitor` prints them.
struct Monitor(std::process::Child, PathBuf);
impl Monitor {
    fn start(s: &Session, interface: &str) -> Monitor {
        let path = s.home.join(format!("monitor-{interface}.txt"));
        let out = std::fs::File::create(&path).unwrap();
        let child = s
            .command("dbus-monitor")
            .args([
                "--session",
                &format!("type='method_call',interface='{interface}'"),
            ])
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-monitor (dbus-bin) is installed");
        Monitor(child, path)
    }
    fn text(&self) -> String {
        std::fs::read_to_string(&self.1).unwrap_or_default()
    }
}
impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The sandboxed app against the test bed: its tray item registers through xdg-dbus-proxy and
/// lists the domains; a guest's own power-off raises the prompt; Commit, through the libvirt
/// engine (the sandbox sees no image), puts the guest's marker into the base; the result is
/// notified through the Notification portal (to the session's notification daemon).
#[test]
fn in_the_sandbox_tray_prompt_and_commit_through_libvirt_with_a_portal_notification() {
    let bed = common::testbed_shared();
    let s = Session::start(Kind::X11);
    portal_environment(&s);
    let notifications = Monitor::start(&s, "org.freedesktop.portal.Notification");
    let vm = TestVm::define(
        &bed.uri,
        "vmo-flatpak-guest",
        &Behaviour {
            marker: Some("FLATPAK-COMMIT".into()),
            offset: 3 << 20,
            hold_secs: 0,
        },
    );
    let grant = format!("--filesystem={}", testbed_socket_dir(&bed.uri));
    let (_app, hook) = start_sandboxed(&s, &[grant], &["--connect", &bed.uri]);
    hook.wait("tray-ready", Duration::from_secs(60), |v| {
        v["event"] == "tray-ready"
    });
    let item = our_item(&s);
    wait_menu(&s, &item, "the test bed's guest", |l| {
        l.iter()
            .any(|t| t.starts_with("vmo-flatpak-guest — shut off"))
    });
    // Inside Flatpak the item has no well-known name: it is the proxy's unique name.
    assert!(item.starts_with(':'), "{item}");
    // The guest writes its marker into the overlay and powers itself off: the prompt.
    vm.start();
    hook.wait("the prompt", Duration::from_secs(90), |v| {
        v["event"] == "prompt-mapped" && v["vm"] == vm.name
    });
    let title = "vmo-flatpak-guest has shut down";
    assert!(
        !xdotool(&s, &["search", "--name", title]).is_empty(),
        "the prompt is a mapped X11 window"
    );
    std::thread::sleep(Duration::from_millis(1500));
    s.screenshot("flatpak-prompt.png");
    assert_eq!(read_image(&vm.overlay, 3 << 20, 14), b"FLATPAK-COMMIT");
    click_commit(&s, title);
    let done = hook.wait("the commit", Duration::from_secs(90), |v| {
        v["event"] == "job-done" && v["vm"] == vm.name
    });
    assert_eq!(done["extra"]["op"], "commit", "{done}");
    assert_eq!(done["extra"]["ok"], true, "{done}; log:\n{}", app_log(&s));
    assert_eq!(read_image(&vm.base, 3 << 20, 14), b"FLATPAK-COMMIT");
    // The notification went through the portal (the sandbox cannot talk to the daemon).
    wait_until("the commit's notification", Duration::from_secs(20), || {
        s.notifications()
            .contains("vmo-flatpak-guest: changes committed")
    });
    let calls = notifications.text();
    assert!(
        calls.contains("member=AddNotification") && calls.contains("changes committed"),
        "no AddNotification on the portal:\n{calls}"
    );
}

/// *Start at login* in the real sandbox asks the Background portal, which writes the autostart
/// entry as `flatpak run` of the app with its arguments, and removes it again.
#[test]
fn in_the_sandbox_start_at_login_goes_through_the_background_portal() {
    let s = Session::start(Kind::X11);
    portal_environment(&s);
    // The user already allowed background activity (otherwise the portal asks in a dialog).
    s.allow_background(APP_ID);
    let background = Monitor::start(&s, "org.freedesktop.portal.Background");
    let (_app, hook) = start_sandboxed(&s, &[], &["--connect", "test:///default"]);
    hook.wait("tray-ready", Duration::from_secs(60), |v| {
        v["event"] == "tray-ready"
    });
    let item = our_item(&s);
    wait_menu(&s, &item, "the test driver's VM", |l| {
        l.iter().any(|t| t.starts_with("test — running"))
    });
    let autostart = s
        .home
        .join(".config/autostart")
        .join(format!("{APP_ID}.desktop"));
    let toggle = find_item(&s.menu(&item), "", "Start at login").unwrap();
    s.click(&item, toggle);
    wait_until(
        "the portal's autostart entry",
        Duration::from_secs(20),
        || autostart.exists(),
    );
    let entry = std::fs::read_to_string(&autostart).unwrap();
    assert!(
        entry.contains(&format!(
            "Exec=flatpak run --command=vmoverlay {APP_ID} --connect test:///default"
        )),
        "{entry}"
    );
    assert!(
        background.text().contains("member=RequestBackground"),
        "the app did not ask the Background portal:\n{}",
        background.text()
    );
    // The sandbox cannot write the entry itself.
    let sandbox_home = s.home.join(".var/app").join(APP_ID);
    assert!(sandbox_home.is_dir(), "the app ran in its sandbox home");
    s.click(&item, toggle);
    wait_until(
        "the portal removing the entry",
        Duration::from_secs(20),
        || !autostart.exists(),
    );
}
