//! Real desktop sessions for the app's tests: a session D-Bus, a notification daemon (dunst)
//! and a StatusNotifierItem host, either X11 (Xvfb + openbox + xfce4-panel's systray) or
//! Wayland (headless sway + waybar, run as `nobody` because sway refuses root). The real
//! shells (GNOME Shell, KDE Plasma) are started by `super::shells` inside the same session.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const PANEL_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<channel name="xfce4-panel" version="1.0">
  <property name="configver" type="int" value="2"/>
  <property name="panels" type="array">
    <value type="int" value="1"/>
    <property name="panel-1" type="empty">
      <property name="position" type="string" value="p=6;x=0;y=0"/>
      <property name="length" type="uint" value="100"/>
      <property name="position-locked" type="bool" value="true"/>
      <property name="size" type="uint" value="32"/>
      <property name="plugin-ids" type="array"><value type="int" value="1"/></property>
    </property>
  </property>
  <property name="plugins" type="empty">
    <property name="plugin-1" type="string" value="systray"/>
  </property>
</channel>
"#;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    X11,
    Wayland,
    /// X11 without any tray host (openbox alone).
    X11NoTray,
    /// GNOME Shell 43, Wayland, headless, with the AppIndicator extension (see `shells`).
    Gnome,
    /// GNOME Shell 43 as GNOME ships it: no tray host at all.
    GnomeNoTray,
    /// KDE Plasma 5.27 on X11: Xvfb + kwin_x11 + plasmashell.
    PlasmaX11,
    /// KDE Plasma 5.27 on Wayland: kwin_wayland --virtual + plasmashell.
    PlasmaWayland,
}

impl Kind {
    /// A real shell: it brings its own notification server (and tray host, if any).
    pub fn is_shell(self) -> bool {
        matches!(
            self,
            Kind::Gnome | Kind::GnomeNoTray | Kind::PlasmaX11 | Kind::PlasmaWayland
        )
    }
}

pub struct Session {
    pub kind: Kind,
    pub home: PathBuf,
    pub(super) env: Vec<(String, String)>,
    /// Run session programs (and the app) as this user (`setpriv`), or as ourselves.
    user: Option<(u32, u32)>,
    pub(super) children: Vec<Child>,
    dbus_pid: Option<i32>,
    /// Real shells are heavy (software rendering on 2 cores): one at a time per test binary.
    _one_shell: Option<std::sync::MutexGuard<'static, ()>>,
    _dir: tempfile::TempDir,
}

pub fn artifacts() -> PathBuf {
    let p = super::manifest_dir().join("target/test-artifacts");
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn free_display() -> u32 {
    let start = 100 + (std::process::id() % 400);
    (start..start + 200)
        .find(|n| {
            !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
                && !Path::new(&format!("/tmp/.X{n}-lock")).exists()
        })
        .expect("a free X display number")
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Session {
    pub fn start(kind: Kind) -> Session {
        static ONE_SHELL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let one_shell = kind
            .is_shell()
            .then(|| ONE_SHELL.lock().unwrap_or_else(|e| e.into_inner()));
        let dir = tempfile::Builder::new()
            .prefix("vmoverlay-session-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = dir.path().join("home");
        let run = dir.path().join("run");
        std::fs::create_dir_all(home.join(".config/xfce4/xfconf/xfce-perchannel-xml")).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(
            home.join(".config/xfce4/xfconf/xfce-perchannel-xml/xfce4-panel.xml"),
            PANEL_XML,
        )
        .unwrap();
        // dunst's context menu lists the notifications' buttons through a dmenu-like program:
        // this one chooses the line that names the button and the VM written to `dunst-pick`
        // (see `Session::notification_action`), as a user picks it from the menu.
        std::fs::create_dir_all(home.join(".config/dunst")).unwrap();
        let picker = home.join("dunst-pick.sh");
        std::fs::write(
            &picker,
            "#!/bin/sh\nin=$(cat)\nprintf '%s\\n' \"$in\" >> \"$HOME/dunst-menu.log\"\n\
             label=$(sed -n 1p \"$HOME/dunst-pick\"); vm=$(sed -n 2p \"$HOME/dunst-pick\")\n\
             printf '%s\\n' \"$in\" | grep -F -- \"$label\" | grep -m1 -F -- \"$vm\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&picker, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            home.join(".config/dunst/dunstrc"),
            format!("[global]\n    dmenu = {}\n", picker.display()),
        )
        .unwrap();
        let user = match kind {
            Kind::X11 | Kind::X11NoTray => None,
            // nobody:nogroup (sway, gnome-shell and kwin want an unprivileged user).
            _ => Some((65534, 65534)),
        };
        if let Some((uid, gid)) = user {
            for p in [dir.path().to_path_buf(), home.clone(), run.clone()] {
                chown_r(&p, uid, gid);
            }
        }
        let mut s = Session {
            kind,
            home: home.clone(),
            env: vec![
                ("HOME".into(), home.display().to_string()),
                ("XDG_RUNTIME_DIR".into(), run.display().to_string()),
                (
                    "XDG_CONFIG_HOME".into(),
                    home.join(".config").display().to_string(),
                ),
                (
                    "XDG_CACHE_HOME".into(),
                    home.join(".cache").display().to_string(),
                ),
                (
                    "XDG_STATE_HOME".into(),
                    home.join(".local/state").display().to_string(),
                ),
                ("PATH".into(), session_path(user.is_some())),
                ("LANG".into(), "C.UTF-8".into()),
                // Every process of this session carries it, also those the bus activates:
                // how `Drop` finds them (and no other session's).
                (
                    "VMOVERLAY_TEST_SESSION".into(),
                    dir.path().display().to_string(),
                ),
            ],
            user,
            children: Vec::new(),
            dbus_pid: None,
            _one_shell: one_shell,
            _dir: dir,
        };
        if !kind.is_shell() {
            // The shells' tests read the screen through AT-SPI.
            s.env.push(("NO_AT_BRIDGE".into(), "1".into()));
            s.env.push(("GTK_A11Y".into(), "none".into()));
        }
        s.start_dbus();
        match kind {
            Kind::X11 => s.start_x11(true),
            Kind::X11NoTray => s.start_x11(false),
            Kind::Wayland => s.start_wayland(),
            _ => super::shells::start(&mut s),
        }
        if !kind.is_shell() {
            let dunst = s
                .command("dunst")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("dunst is installed");
            s.children.push(dunst);
        }
        if !matches!(kind, Kind::X11NoTray | Kind::GnomeNoTray) {
            wait_for("the StatusNotifierWatcher", Duration::from_secs(60), || {
                s.has_name("org.kde.StatusNotifierWatcher")
            });
        }
        wait_for("the notification daemon", Duration::from_secs(60), || {
            s.has_name("org.freedesktop.Notifications")
        });
        s
    }

    /// Is this bus name owned now (not merely activatable)?
    pub fn has_name(&self, name: &str) -> bool {
        self.busctl(&["list", "--no-pager", "--acquired"])
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name))
    }

    /// The program name of a bus name's owner ("kded5", "gnome-shell"), if owned.
    pub fn name_owner_comm(&self, name: &str) -> Option<String> {
        self.busctl(&["status", "--no-pager", name])
            .lines()
            .find_map(|l| l.strip_prefix("Comm="))
            .map(str::to_string)
    }

    pub(super) fn set_var(&mut self, name: &str, value: &str) {
        self.env.push((name.into(), value.into()));
    }

    /// Starts a long-running program of the session, killed with it; output to `log`.
    pub(super) fn spawn(&mut self, mut cmd: Command, log: &str) {
        let log = std::fs::File::create(self.home.join(log)).unwrap();
        let child = cmd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        self.children.push(child);
    }

    /// Starts Xvfb on a free display and points the session at it.
    pub(super) fn start_xvfb(&mut self) {
        let n = free_display();
        let xvfb = Command::new("Xvfb")
            .arg(format!(":{n}"))
            .args(["-screen", "0", "1280x800x24", "-nolisten", "tcp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb is installed");
        self.children.push(xvfb);
        wait_for("Xvfb", Duration::from_secs(10), || {
            Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
        });
        self.env.push(("DISPLAY".into(), format!(":{n}")));
        self.env.push(("GDK_BACKEND".into(), "x11".into()));
    }

    fn start_dbus(&mut self) {
        let mut child = self
            .command("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.home.join("session-bus.log")).unwrap())
            .spawn()
            .expect("dbus-daemon is installed");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        self.env
            .push(("DBUS_SESSION_BUS_ADDRESS".into(), line.trim().to_string()));
        self.dbus_pid = Some(child.id() as i32);
        self.children.push(child);
    }

    fn start_x11(&mut self, with_panel: bool) {
        self.start_xvfb();
        let progs: &[&str] = if with_panel {
            &["openbox", "xfce4-panel"]
        } else {
            &["openbox"]
        };
        for prog in progs {
            let c = self
                .command(prog)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{prog}: {e}"));
            self.children.push(c);
        }
    }

    fn start_wayland(&mut self) {
        let cfg = self.home.join("sway.conf");
        let waybar = self.home.join("waybar.json");
        std::fs::write(
            &waybar,
            r#"{"layer": "top", "position": "top", "height": 30, "modules-right": ["tray"], "tray": {"icon-size": 21, "spacing": 4}}"#,
        )
        .unwrap();
        std::fs::write(
            &cfg,
            format!(
                "output * resolution 1280x800\nexec waybar -c {}\n",
                waybar.display()
            ),
        )
        .unwrap();
        chown_r(&self.home, 65534, 65534);
        self.env.push(("WLR_BACKENDS".into(), "headless".into()));
        self.env
            .push(("WLR_LIBINPUT_NO_DEVICES".into(), "1".into()));
        self.env.push(("WLR_RENDERER".into(), "pixman".into()));
        self.env
            .push(("WAYLAND_DISPLAY".into(), "wayland-1".into()));
        self.env.push(("GDK_BACKEND".into(), "wayland".into()));
        let sway = self
            .command("sway")
            .arg("-c")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sway is installed");
        self.children.push(sway);
        let sock = PathBuf::from(self.var("XDG_RUNTIME_DIR")).join("wayland-1");
        wait_for("sway's Wayland socket", Duration::from_secs(20), || {
            sock.exists()
        });
    }

    pub fn var(&self, name: &str) -> String {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// A command that runs inside the session (its user, environment and bus).
    pub fn command(&self, program: &str) -> Command {
        let mut c = match self.user {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={gid}"),
                    "--clear-groups",
                    "--",
                    program,
                ]);
                c
            }
            None => Command::new(program),
        };
        c.env_clear();
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// sway's IPC socket (`$XDG_RUNTIME_DIR/sway-ipc.<uid>.<pid>.sock`), Wayland sessions only.
    pub fn sway_socket(&self) -> PathBuf {
        let run = PathBuf::from(self.var("XDG_RUNTIME_DIR"));
        let mut found = None;
        wait_for("sway's IPC socket", Duration::from_secs(20), || {
            found = std::fs::read_dir(&run).ok().and_then(|d| {
                d.flatten().map(|e| e.path()).find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("sway-ipc.") && n.ends_with(".sock"))
                })
            });
            found.is_some()
        });
        found.unwrap()
    }

    /// The compositor's own window events (sway IPC `subscribe ["window"]`), each with the
    /// moment it was read: a `new` event is sent when a window's first frame is committed.
    pub fn sway_window_events(&self) -> std::sync::mpsc::Receiver<(std::time::SystemTime, Value)> {
        use std::io::{Read, Write};
        let mut sock = std::os::unix::net::UnixStream::connect(self.sway_socket())
            .expect("connect to sway's IPC socket");
        let send = |sock: &mut std::os::unix::net::UnixStream, kind: u32, payload: &[u8]| {
            let mut msg = b"i3-ipc".to_vec();
            msg.extend_from_slice(&(payload.len() as u32).to_ne_bytes());
            msg.extend_from_slice(&kind.to_ne_bytes());
            msg.extend_from_slice(payload);
            sock.write_all(&msg).unwrap();
        };
        const SUBSCRIBE: u32 = 2;
        send(&mut sock, SUBSCRIBE, br#"["window"]"#);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || loop {
            let mut header = [0u8; 14];
            if sock.read_exact(&mut header).is_err() {
                return;
            }
            let now = std::time::SystemTime::now();
            let len = u32::from_ne_bytes(header[6..10].try_into().unwrap()) as usize;
            let kind = u32::from_ne_bytes(header[10..14].try_into().unwrap());
            let mut body = vec![0u8; len];
            if sock.read_exact(&mut body).is_err() {
                return;
            }
            // Events have the high bit set; the first reply is the subscription's answer.
            if kind & 0x8000_0000 != 0 {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if tx.send((now, v)).is_err() {
                    return;
                }
            } else {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                assert_eq!(v["success"], true, "sway refused the subscription: {v}");
            }
        });
        rx
    }

    /// Gives the session bus's activated services (the portals) these environment entries.
    pub fn activation_environment(&self, vars: &[&str]) {
        let st = self
            .command("dbus-update-activation-environment")
            .args(vars)
            .status()
            .expect("dbus-update-activation-environment (dbus) is installed");
        assert!(st.success());
    }

    /// The user already allowed `app_id` background activity (otherwise the Background
    /// portal asks in a dialog): the entry the permission store keeps for that answer.
    pub fn allow_background(&self, app_id: &str) {
        let st = self
            .command("busctl")
            .args([
                "--user",
                "call",
                "org.freedesktop.impl.portal.PermissionStore",
                "/org/freedesktop/impl/portal/PermissionStore",
                "org.freedesktop.impl.portal.PermissionStore",
                "SetPermission",
                "sbssas",
                "background",
                "true",
                "background",
                app_id,
                "1",
                "yes",
            ])
            .status()
            .expect("busctl (systemd) is installed");
        assert!(
            st.success(),
            "the permission store (xdg-desktop-portal) answers"
        );
    }

    /// Activates one of the application's actions over D-Bus (`org.gtk.Actions`), as a
    /// notification server or a desktop shell does.
    pub fn activate_action(&self, action: &str, target: Option<&str>) {
        let params = match target {
            Some(t) => format!("[<{t}>]"),
            None => "[]".to_string(),
        };
        let out = self
            .command("gdbus")
            .args([
                "call",
                "--session",
                "--dest",
                "io.github.vmoverlay.VMOverlay",
                "--object-path",
                "/io/github/vmoverlay/VMOverlay",
                "--method",
                "org.gtk.Actions.Activate",
                action,
                &params,
                "{}",
            ])
            .output()
            .expect("gdbus (libglib2.0-bin) is installed");
        assert!(
            out.status.success(),
            "activate app.{action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn busctl(&self, args: &[&str]) -> String {
        let out = self
            .command("busctl")
            .arg("--user")
            .args(args)
            .output()
            .expect("busctl (systemd) is installed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Registered StatusNotifierItems ("<bus name>/<path>").
    pub fn tray_items(&self) -> Vec<String> {
        let out = self.busctl(&[
            "--json=short",
            "get-property",
            "org.kde.StatusNotifierWatcher",
            "/StatusNotifierWatcher",
            "org.kde.StatusNotifierWatcher",
            "RegisteredStatusNotifierItems",
        ]);
        serde_json::from_str::<Value>(&out)
            .ok()
            .and_then(|v| v["data"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }

    /// The dbusmenu layout of a tray item's menu, as JSON.
    pub fn menu(&self, bus_name: &str) -> Value {
        let out = self.busctl(&[
            "--json=short",
            "call",
            bus_name,
            "/MenuBar",
            "com.canonical.dbusmenu",
            "GetLayout",
            "iias",
            "--",
            "0",
            "-1",
            "0",
        ]);
        serde_json::from_str(&out).unwrap_or(Value::Null)
    }

    /// Clicks the entry `label` (under `parent`) as it is in the menu right now. The menu is
    /// rebuilt whenever a VM's state changes (other tests' VMs share the test bed), so an id
    /// read a moment ago may be gone: read again and retry.
    pub fn click_item(&self, bus_name: &str, parent: &str, label: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let layout = self.menu(bus_name);
            if let Some(id) = find_item(&layout, parent, label) {
                if self.try_click(bus_name, id).is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no menu entry {label:?} under {parent:?} could be clicked: {:?}",
                labels(&layout)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks a dbusmenu item by id, as a tray host does.
    pub fn click(&self, bus_name: &str, id: i64) {
        if let Err(e) = self.try_click(bus_name, id) {
            panic!("dbusmenu click: {e}");
        }
    }

    fn try_click(&self, bus_name: &str, id: i64) -> Result<(), String> {
        let out = self
            .command("busctl")
            .args([
                "--user",
                "call",
                bus_name,
                "/MenuBar",
                "com.canonical.dbusmenu",
                "Event",
                "isvu",
            ])
            .arg(id.to_string())
            .args(["clicked", "s", "", "0"])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn screenshot(&self, name: &str) -> PathBuf {
        let path = artifacts().join(name);
        if self.kind.is_shell() {
            super::shells::screenshot(self, &path);
            return path;
        }
        let out = match self.kind {
            Kind::X11 | Kind::X11NoTray => self
                .command("import")
                .args(["-window", "root"])
                .arg(&path)
                .output(),
            _ => {
                let tmp = self.home.join("shot.png");
                let o = self.command("grim").arg(&tmp).output();
                if o.as_ref().is_ok_and(|o| o.status.success()) {
                    std::fs::copy(&tmp, &path).unwrap();
                }
                o
            }
        }
        .unwrap();
        assert!(
            out.status.success(),
            "screenshot: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        path
    }

    /// Chooses the button labelled `label` of the notification about `vm` in the
    /// notification server's own menu (`dunstctl context`): dunst sends `ActionInvoked`, as
    /// when a user clicks the button.
    pub fn notification_action(&self, label: &str, vm: &str) {
        std::fs::write(self.home.join("dunst-pick"), format!("{label}\n{vm}\n")).unwrap();
        if let Some((uid, gid)) = self.user {
            chown_r(&self.home.join("dunst-pick"), uid, gid);
        }
        let out = self
            .command("dunstctl")
            .arg("context")
            .output()
            .expect("dunstctl is installed");
        assert!(
            out.status.success(),
            "dunstctl context: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Invokes the default action of the newest notification shown (a click on its body).
    pub fn notification_default_action(&self) {
        let out = self
            .command("dunstctl")
            .args(["action", "0"])
            .output()
            .expect("dunstctl is installed");
        assert!(
            out.status.success(),
            "dunstctl action: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Records every message to and from the notification server (`busctl monitor`).
    pub fn monitor_notifications(&self) -> BusMonitor {
        let mut child = self
            .command("busctl")
            .args([
                "--user",
                "monitor",
                "--json=short",
                "org.freedesktop.Notifications",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("busctl (systemd) is installed");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (out, store) = (child.stdout.take().unwrap(), seen.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    store.lock().unwrap().push(v);
                }
            }
        });
        // Monitoring starts once busctl has said hello to the bus.
        std::thread::sleep(Duration::from_millis(300));
        BusMonitor { child, seen }
    }

    /// Text of the notifications the daemon has shown.
    pub fn notifications(&self) -> String {
        let _ = self.command("dunstctl").arg("close-all").output();
        let out = self.command("dunstctl").arg("history").output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The session's logs outlive a failed test, next to its screenshots.
            let keep = artifacts().join(format!("logs-{:?}", self.kind));
            let _ = std::fs::create_dir_all(&keep);
            for log in std::fs::read_dir(&self.home)
                .into_iter()
                .flatten()
                .flatten()
            {
                if log
                    .path()
                    .extension()
                    .is_some_and(|e| e == "log" || e == "jsonl")
                {
                    let _ = std::fs::copy(log.path(), keep.join(log.file_name()));
                }
            }
        }
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Everything else this session started (sway's children, services the bus
        // activated, the shells' helpers), found by the variable they all inherit; never
        // another session's processes, even when they run as the same user.
        let marker = format!(
            "VMOVERLAY_TEST_SESSION={}",
            self.var("VMOVERLAY_TEST_SESSION")
        );
        for _ in 0..3 {
            let pids = pids_with_env(&marker);
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                // SAFETY: kill(2) with a pid read from /proc just now; no memory involved.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Processes whose environment holds `entry` ("NAME=value").
fn pids_with_env(entry: &str) -> Vec<i32> {
    let own = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != own)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == entry.as_bytes()))
        })
        .collect()
}

/// PATH for the session: an unprivileged user gets none of root's own directories (a
/// `nobody` process that finds an unreadable directory first in PATH fails oddly).
fn session_path(unprivileged: bool) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    if !unprivileged {
        return path;
    }
    path.split(':')
        .filter(|d| !d.starts_with("/root"))
        .collect::<Vec<_>>()
        .join(":")
}

pub(super) fn chown_r(p: &Path, uid: u32, gid: u32) {
    let _ = std::os::unix::fs::lchown(p, Some(uid), Some(gid));
    if p.is_dir() && !p.is_symlink() {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            chown_r(&e.path(), uid, gid);
        }
    }
}

/// Finds a menu item id whose label contains `label`, below an item whose label contains
/// `parent` (or anywhere when `parent` is empty).
pub fn find_item(layout: &Value, parent: &str, label: &str) -> Option<i64> {
    fn walk(node: &Value, under: bool, parent: &str, label: &str) -> Option<i64> {
        // A dbusmenu node is [id, {props}, [children as variants]].
        let arr = node.as_array()?;
        let id = arr.first()?.as_i64()?;
        let props = arr.get(1)?;
        let text = props["label"]["data"].as_str().unwrap_or("");
        let here_under = under || (!parent.is_empty() && text.contains(parent));
        if (parent.is_empty() || under) && text.contains(label) {
            return Some(id);
        }
        for child in arr.get(2)?.as_array()? {
            let inner = child.get("data").unwrap_or(child);
            if let Some(found) = walk(inner, here_under, parent, label) {
                return Some(found);
            }
        }
        None
    }
    let root = layout["data"].get(1)?;
    walk(root, false, parent, label)
}

/// Every label in a dbusmenu layout.
pub fn labels(layout: &Value) -> Vec<String> {
    fn walk(node: &Value, out: &mut Vec<String>) {
        let Some(arr) = node.as_array() else { return };
        if let Some(t) = arr.get(1).and_then(|p| p["label"]["data"].as_str()) {
            out.push(t.to_string());
        }
        if let Some(children) = arr.get(2).and_then(|c| c.as_array()) {
            for c in children {
                walk(c.get("data").unwrap_or(c), out);
            }
        }
    }
    let mut out = Vec::new();
    if let Some(root) = layout["data"].get(1) {
        walk(root, &mut out);
    }
    out
}

/// The actions of a `Notify` call (as `BusMonitor::wait_notify` returns it): key, label, …
pub fn notify_actions(notify: &Value) -> Vec<String> {
    notify[5]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Messages of the notification server's D-Bus traffic, as `busctl monitor` decoded them.
pub struct BusMonitor {
    child: Child,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl BusMonitor {
    pub fn messages(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }

    /// Method calls of `member` (`Notify`, `CloseNotification`), their arguments as JSON.
    pub fn calls(&self, member: &str) -> Vec<Value> {
        self.messages()
            .into_iter()
            .filter(|m| m["type"] == "method_call" && m["member"] == member)
            .map(|m| m["payload"]["data"].clone())
            .collect()
    }

    /// Waits for a `Notify` call whose summary contains `summary`; returns its arguments
    /// (app name, replaces id, icon, summary, body, actions, hints, timeout).
    pub fn wait_notify(&self, what: &str, summary: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(n) = self
                .calls("Notify")
                .into_iter()
                .find(|n| n[3].as_str().is_some_and(|s| s.contains(summary)))
            {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the notification server saw: {:?}",
                self.calls("Notify")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for BusMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The app, killed when dropped.
pub struct App(pub Child);

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the app inside the session with a test hook; its log goes to `~/app.log`.
pub fn start_app(s: &Session, args: &[&str]) -> (App, Hook) {
    let hook = Hook(s.home.join("hook.jsonl"));
    let log = std::fs::File::create(s.home.join("app.log")).unwrap();
    let child = s
        .command(super::bin())
        .args(args)
        .env("VMOVERLAY_TEST_HOOK", &hook.0)
        .env("RUST_LOG", "vmoverlay=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    (App(child), hook)
}

/// The bus name of the one registered StatusNotifierItem, ours.
pub fn our_item(s: &Session) -> String {
    let items = s.tray_items();
    assert_eq!(items.len(), 1, "exactly our item is registered: {items:?}");
    items[0].split('/').next().unwrap().to_string()
}

/// Is this hook event `event` about VM `vm`?
pub fn is(v: &Value, event: &str, vm: &str) -> bool {
    v["event"] == event && v["vm"] == vm
}

/// Where `vmoverlay --demo` keeps its images in this session.
pub fn demo_dir(s: &Session) -> PathBuf {
    s.home.join(".cache/vmoverlay/demo")
}

/// The test hook file the app appends to, read back as JSON lines.
pub struct Hook(pub PathBuf);

impl Hook {
    pub fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.0)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn wait(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.events().into_iter().find(|v| pred(v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; hook saw: {:?}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until at least `n` events match.
    pub fn wait_count(
        &self,
        what: &str,
        timeout: Duration,
        n: usize,
        pred: impl Fn(&Value) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while self.count(&pred) < n {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what} ({n} events); hook saw: {:?}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn count(&self, pred: impl Fn(&Value) -> bool) -> usize {
        self.events().iter().filter(|v| pred(v)).count()
    }
}
