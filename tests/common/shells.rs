//! The real shells as hosts of the app in tests: GNOME Shell 43 (Wayland, headless, with or
//! without the AppIndicator extension) and KDE Plasma 5.27 (X11 under Xvfb, or Wayland with a
//! virtual kwin), each inside a `desktop::Session` (unprivileged user, private bus and HOME).
//!
//! How the tests see and touch them:
//! - GNOME: a test-only shell extension (tests/shells/gnome-extension) exports Eval,
//!   Screenshot and a Clutter virtual pointer on the session bus (GNOME 43 locks its own Eval
//!   and Screenshot). Clicks go through the shell's real input path.
//! - Plasma: AT-SPI (tests/shells/atspi.py) finds what Plasma draws (tray icons are push
//!   buttons named after the item's Title, notifications have the role "notification");
//!   xdotool clicks and types on X11; KWin's ScreenShot2 takes screenshots.
//! - Both: the app's own widgets through AT-SPI (GTK 4 reports window-relative positions).
//!
//! The app is installed for the session's user as `meson install` would (desktop file and
//! icons under ~/.local/share): GNOME drops notifications of apps it has no desktop file for.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::desktop::{chown_r, wait_for, Kind, Session};

const TEST_EXTENSION: &str = "vmoverlay-test@local";
const APPINDICATOR: &str = "ubuntu-appindicators@ubuntu.com";
const SHELL_BUS: [&str; 3] = [
    "org.vmoverlay.TestShell",
    "/org/vmoverlay/TestShell",
    "org.vmoverlay.TestShell",
];

const SYSTEM_BUS_CONF: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=@SOCKET@</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
"#;

/// A rectangle on the screen, in logical pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl Rect {
    fn from_json(v: &Value) -> Option<Rect> {
        let n = |i: usize| v.get(i)?.as_f64();
        Some(Rect {
            x: n(0)?,
            y: n(1)?,
            w: n(2)?,
            h: n(3)?,
        })
    }

    pub fn centre(&self) -> (f64, f64) {
        (self.x + self.w / 2.0, self.y + self.h / 2.0)
    }

    /// A rectangle given relative to this one's origin, on the screen.
    pub fn offset(&self, inner: Rect) -> Rect {
        Rect {
            x: self.x + inner.x,
            y: self.y + inner.y,
            ..inner
        }
    }
}

pub(super) fn start(s: &mut Session) {
    install_app_for_user(s);
    match s.kind {
        Kind::Gnome => start_gnome(s, true),
        Kind::GnomeNoTray => start_gnome(s, false),
        Kind::PlasmaX11 => start_plasma(s, false),
        Kind::PlasmaWayland => start_plasma(s, true),
        other => unreachable!("{other:?} is not a shell"),
    }
}

fn share(s: &Session) -> std::path::PathBuf {
    s.home.join(".local/share")
}

/// The desktop file and the icons, where a per-user install puts them.
fn install_app_for_user(s: &mut Session) {
    let app_id = vmoverlay::config::APP_ID;
    let data = super::manifest_dir().join("data");
    let apps = share(s).join("applications");
    std::fs::create_dir_all(&apps).unwrap();
    let desktop = std::fs::read_to_string(data.join(format!("{app_id}.desktop.in")))
        .unwrap()
        .replace("@APP_ID@", app_id)
        .replace("Exec=vmoverlay", &format!("Exec={}", super::bin()));
    std::fs::write(apps.join(format!("{app_id}.desktop")), desktop).unwrap();
    for kind in ["scalable", "symbolic"] {
        let from = data.join("icons/hicolor").join(kind).join("apps");
        let to = share(s).join("icons/hicolor").join(kind).join("apps");
        std::fs::create_dir_all(&to).unwrap();
        for icon in std::fs::read_dir(&from).unwrap().flatten() {
            std::fs::copy(icon.path(), to.join(icon.file_name())).unwrap();
        }
    }
    chown_r(&s.home, 65534, 65534);
    let share = share(s).display().to_string();
    s.set_var("XDG_DATA_HOME", &share);
}

fn run_ok(s: &Session, program: &str, args: &[&str]) -> String {
    let out = super::run_ok(s.command(program).args(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn runtime_dir(s: &Session) -> std::path::PathBuf {
    std::path::PathBuf::from(s.var("XDG_RUNTIME_DIR"))
}

/// The shells' helpers read the whole session's environment when the bus activates them.
fn share_env_with_bus(s: &Session) {
    run_ok(s, "dbus-update-activation-environment", &["--all"]);
}

// ---------------------------------------------------------------------------------------
// GNOME Shell

fn start_gnome(s: &mut Session, appindicator: bool) {
    // No system bus here, while /run/systemd/seats exists: gnome-shell would take
    // systemd-logind for granted and die. A private, empty system bus answers for it.
    let socket = runtime_dir(s).join("system_bus_socket");
    let conf = s.home.join("system-bus.conf");
    std::fs::write(
        &conf,
        SYSTEM_BUS_CONF.replace("@SOCKET@", &socket.display().to_string()),
    )
    .unwrap();
    let mut bus = s.command("dbus-daemon");
    bus.arg(format!("--config-file={}", conf.display()))
        .arg("--nofork");
    s.spawn(bus, "system-bus.log");
    wait_for("the private system bus", Duration::from_secs(10), || {
        socket.exists()
    });
    s.set_var(
        "DBUS_SYSTEM_BUS_ADDRESS",
        &format!("unix:path={}", socket.display()),
    );
    s.set_var("XDG_CURRENT_DESKTOP", "GNOME");
    s.set_var("XDG_SESSION_TYPE", "wayland");
    s.set_var("WAYLAND_DISPLAY", "wayland-0");
    s.set_var("GDK_BACKEND", "wayland");

    let ext = share(s).join("gnome-shell/extensions").join(TEST_EXTENSION);
    std::fs::create_dir_all(&ext).unwrap();
    let src = super::manifest_dir().join("tests/shells/gnome-extension");
    for f in ["extension.js", "metadata.json"] {
        std::fs::copy(src.join(f), ext.join(f)).unwrap();
    }
    // The first start of a shell without GDM says "Screen Lock disabled" once; it has been said.
    std::fs::write(share(s).join("gnome-shell/lock-warning-shown"), "").unwrap();
    chown_r(&s.home, 65534, 65534);
    share_env_with_bus(s);

    let mut extensions = vec![format!("'{TEST_EXTENSION}'")];
    if appindicator {
        extensions.push(format!("'{APPINDICATOR}'"));
    }
    for (schema, key, value) in [
        (
            "org.gnome.shell",
            "enabled-extensions",
            format!("[{}]", extensions.join(", ")),
        ),
        ("org.gnome.shell", "disable-user-extensions", "false".into()),
        (
            "org.gnome.shell",
            "welcome-dialog-last-shown-version",
            "'999'".into(),
        ),
        (
            "org.gnome.desktop.interface",
            "enable-animations",
            "false".into(),
        ),
        (
            "org.gnome.desktop.screensaver",
            "lock-enabled",
            "false".into(),
        ),
        ("org.gnome.desktop.session", "idle-delay", "uint32 0".into()),
    ] {
        run_ok(s, "gsettings", &["set", schema, key, &value]);
    }
    let mut shell = s.command("gnome-shell");
    shell.args([
        "--headless",
        "--wayland",
        "--no-x11",
        "--wayland-display",
        "wayland-0",
        "--virtual-monitor",
        "1280x800",
    ]);
    s.spawn(shell, "gnome-shell.log");
    let log = s.home.join("gnome-shell.log");
    let started = Instant::now();
    wait_for(
        "gnome-shell with the test extension (see gnome-shell.log)",
        Duration::from_secs(60),
        || {
            assert!(
                s.children
                    .iter_mut()
                    .all(|c| c.try_wait().ok().flatten().is_none()),
                "gnome-shell exited: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            s.has_name(SHELL_BUS[0])
        },
    );
    wait_for("the shell's start-up", Duration::from_secs(60), || {
        gnome_eval(s, "Main.layoutManager._startingUp") == Value::Bool(false)
    });
    // A session starts in the overview; a user's desktop is what the tests look at.
    gnome_eval(s, "Main.overview.hide()");
    wait_for("the overview to close", Duration::from_secs(10), || {
        gnome_eval(s, "Main.overview.visible") == Value::Bool(false)
    });
    eprintln!("gnome-shell ready in {:?}", started.elapsed());
}

/// Evaluates JavaScript inside gnome-shell; the value comes back as JSON.
pub fn gnome_eval(s: &Session, js: &str) -> Value {
    let out = s
        .command("busctl")
        .args(["--user", "--json=short", "call"])
        .args(SHELL_BUS)
        .args(["Eval", "s", js])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gnome-shell eval of {js}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    serde_json::from_str(reply["data"][0].as_str().unwrap()).unwrap()
}

/// A real click (press and release of the primary button) at a point of the screen.
pub fn gnome_click(s: &Session, (x, y): (f64, f64)) {
    gnome_pointer(s, &["Click", "ddu", &x.to_string(), &y.to_string(), "1"]);
}

/// The pointer moves to a point of the screen, without a click (a hover).
pub fn gnome_hover(s: &Session, (x, y): (f64, f64)) {
    gnome_pointer(s, &["Move", "dd", &x.to_string(), &y.to_string()]);
}

fn gnome_pointer(s: &Session, call: &[&str]) {
    let out = s
        .command("busctl")
        .args(["--user", "call"])
        .args(SHELL_BUS)
        .args(call)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pointer {call:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Our tray icon in GNOME's top bar (the AppIndicator extension's panel button): its place
/// and the accessible name the extension gave it.
pub fn gnome_tray_icon(s: &Session) -> Option<(Rect, String)> {
    let v = gnome_eval(
        s,
        r#"(() => {
            const b = Object.entries(Main.panel.statusArea)
                .find(([k, v]) => k.startsWith("appindicator-") && v)?.[1];
            if (!b || !b.visible) return null;
            const [x, y] = b.get_transformed_position();
            const [w, h] = b.get_transformed_size();
            return [[x, y, w, h], b.accessible_name];
        })()"#,
    );
    Some((Rect::from_json(&v[0])?, v[1].as_str()?.to_string()))
}

/// One entry of the shell's open tray menu.
#[derive(Clone, Debug)]
pub struct ShellMenuItem {
    pub label: String,
    pub rect: Rect,
    pub submenu: bool,
}

/// The entries of our tray icon's menu as GNOME shows them (with those of an open submenu),
/// or None while it is closed.
pub fn gnome_tray_menu(s: &Session) -> Option<Vec<ShellMenuItem>> {
    let v = gnome_eval(
        s,
        r#"(() => {
            const b = Object.entries(Main.panel.statusArea)
                .find(([k, v]) => k.startsWith("appindicator-") && v)?.[1];
            if (!b || !b.menu.isOpen) return null;
            const out = [];
            const add = menu => menu._getMenuItems().forEach(i => {
                if (!i.visible || !i.label) return;
                const [x, y] = i.get_transformed_position();
                const [w, h] = i.get_transformed_size();
                out.push([i.label.text, [x, y, w, h], !!i.menu]);
                if (i.menu && i.menu.isOpen) add(i.menu);
            });
            add(b.menu);
            return out;
        })()"#,
    );
    Some(
        v.as_array()?
            .iter()
            .filter_map(|i| {
                Some(ShellMenuItem {
                    label: i[0].as_str()?.to_string(),
                    rect: Rect::from_json(&i[1])?,
                    submenu: i[2].as_bool()?,
                })
            })
            .collect(),
    )
}

/// Waits until the open tray menu has an entry whose label starts with `label` and is on
/// screen, and returns it.
pub fn gnome_wait_menu_item(s: &Session, label: &str) -> ShellMenuItem {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let menu = gnome_tray_menu(s);
        if let Some(item) = menu
            .iter()
            .flatten()
            .find(|i| i.label.starts_with(label) && i.rect.w > 0.0 && i.rect.h > 0.0)
        {
            return item.clone();
        }
        assert!(
            Instant::now() < deadline,
            "GNOME's tray menu never showed {label:?}: {menu:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Application windows on the screen: title and frame (the window without its shadow).
pub fn gnome_windows(s: &Session) -> Vec<(String, Rect)> {
    let v = gnome_eval(
        s,
        r#"global.get_window_actors().filter(a => a.visible).map(a => {
            const w = a.meta_window, r = w.get_frame_rect();
            return [w.title, [r.x, r.y, r.width, r.height]];
        })"#,
    );
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| Some((w[0].as_str()?.to_string(), Rect::from_json(&w[1])?)))
        .collect()
}

/// Waits for a window titled `title` and returns its frame.
pub fn gnome_wait_window(s: &Session, title: &str) -> Rect {
    let mut found = None;
    wait_for(
        &format!("a window titled {title:?}"),
        Duration::from_secs(30),
        || {
            found = gnome_windows(s)
                .into_iter()
                .find(|(t, _)| t == title)
                .map(|(_, r)| r);
            found.is_some()
        },
    );
    found.unwrap()
}

/// A real click on a button of one of the app's windows: the window's frame from the shell,
/// the button's place in it from GTK's accessibility tree.
pub fn gnome_click_button(s: &Session, window: &str, button: &str) {
    let frame = gnome_wait_window(s, window);
    let inner = atspi_wait(s, &format!("vmoverlay/{window}"), "push button", button);
    gnome_click(s, frame.offset(inner).centre());
}

/// The notifications in GNOME's message tray: title, body and button labels.
pub fn gnome_notifications(s: &Session) -> Vec<Value> {
    let v = gnome_eval(
        s,
        r#"Main.messageTray.getSources().flatMap(src => src.notifications.map(n => ({
            source: src.title, title: n.title, body: n.bannerBodyText,
            actions: (n.actions || []).map(a => a.label),
        })))"#,
    );
    v.as_array().cloned().unwrap_or_default()
}

/// GNOME's banner: the one notification shown at the top of the screen, once it is fully
/// there. GNOME 43 shows a notification's buttons only here, in the expanded banner (its
/// calendar list has none).
#[derive(Clone, Debug)]
pub struct ShellBanner {
    pub title: String,
    pub body: String,
    pub expanded: bool,
    pub rect: Rect,
    /// The buttons on screen: label and place.
    pub buttons: Vec<(String, Rect)>,
}

impl ShellBanner {
    pub fn labels(&self) -> Vec<&str> {
        self.buttons.iter().map(|(l, _)| l.as_str()).collect()
    }

    pub fn button(&self, label: &str) -> Rect {
        self.buttons
            .iter()
            .find(|(l, _)| l == label)
            .unwrap_or_else(|| panic!("no button {label:?} in the banner: {self:?}"))
            .1
    }
}

/// The banner as it is now, or None while none is fully shown.
pub fn gnome_banner(s: &Session) -> Option<ShellBanner> {
    let v = gnome_eval(
        s,
        r#"(() => {
            const tray = Main.messageTray, b = tray._banner;
            if (!b || tray._notificationState !== imports.ui.messageTray.State.SHOWN)
                return null;
            const rect = a => {
                const [x, y] = a.get_transformed_position();
                const [w, h] = a.get_transformed_size();
                return [x, y, w, h];
            };
            const buttons = (b._buttonBox?.get_children() ?? [])
                .filter(c => c.mapped)
                .map(c => [c.label, rect(c)]);
            return [b.notification.title, b.notification.bannerBodyText ?? "",
                b.expanded, rect(b), buttons];
        })()"#,
    );
    Some(ShellBanner {
        title: v.get(0)?.as_str()?.to_string(),
        body: v[1].as_str().unwrap_or_default().to_string(),
        expanded: v[2].as_bool()?,
        rect: Rect::from_json(&v[3])?,
        buttons: v[4]
            .as_array()?
            .iter()
            .filter_map(|b| Some((b[0].as_str()?.to_string(), Rect::from_json(&b[1])?)))
            .collect(),
    })
}

/// Dismisses (as its close button does) the banner and every notification queued for it
/// whose title does not contain `keep`; returns their titles.
pub fn gnome_dismiss_banners_except(s: &Session, keep: &str) -> Vec<String> {
    let v = gnome_eval(
        s,
        &format!(
            r#"(() => {{
                const tray = Main.messageTray, keep = {};
                const gone = [tray._banner?.notification, ...tray._notificationQueue]
                    .filter(n => n && !n.title.includes(keep));
                gone.forEach(n => n.destroy(
                    imports.ui.messageTray.NotificationDestroyedReason.DISMISSED));
                return gone.map(n => n.title);
            }})()"#,
            Value::String(keep.into())
        ),
    );
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some(t.as_str()?.to_string()))
        .collect()
}

/// GNOME 43 gives a new notification a banner only while fewer than three notifications are
/// shown or waiting for one; the others go straight to the message list, which has no
/// buttons. When other notifications (other VMs on the shared test bed with pending
/// decisions) would take that place, dismisses those whose title does not contain `keep`.
pub fn gnome_make_room_for_banner(s: &Session, keep: &str) {
    let waiting = gnome_eval(
        s,
        "Main.messageTray.queueCount + (Main.messageTray._banner ? 1 : 0)",
    );
    if waiting.as_u64().unwrap_or(0) >= 2 {
        let gone = gnome_dismiss_banners_except(s, keep);
        eprintln!(
            "dismissed {} notifications waiting for a banner: {:?}…",
            gone.len(),
            &gone[..gone.len().min(3)]
        );
    }
}

/// Waits until the banner shows the notification whose title contains `title`, moves the
/// pointer onto it (GNOME expands a banner the pointer enters, and keeps it while the pointer
/// stays), and returns it once its buttons are on screen and stay put.
///
/// GNOME shows one banner at a time, the others wait in its queue. One the user has not
/// touched stays until they do, then for 2 s more: a banner about something else that is
/// still there after 3 s means a queue (other VMs on the shared test bed with pending
/// decisions, each with its notification), and those are dismissed.
pub fn gnome_expand_banner(s: &Session, title: &str) -> ShellBanner {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(30);
    let mut last: Option<ShellBanner> = None;
    let mut hovered: Option<Instant> = None;
    loop {
        let shown = gnome_banner(s);
        if shown.as_ref().is_some_and(|b| !b.title.contains(title))
            && start.elapsed() > Duration::from_secs(3)
        {
            let gone = gnome_dismiss_banners_except(s, title);
            eprintln!(
                "dismissed {} notifications queued before {title:?}: {:?}…",
                gone.len(),
                &gone[..gone.len().min(3)]
            );
        }
        let banner = shown.filter(|b| b.title.contains(title));
        match &banner {
            // A banner that popped up under the pointer expands only once the pointer has
            // left it and come back: so does this one, if a second is not enough.
            Some(b) if !b.expanded => match hovered {
                None => {
                    gnome_hover(s, b.rect.centre());
                    hovered = Some(Instant::now());
                }
                Some(t) if t.elapsed() > Duration::from_secs(1) => {
                    let (x, y) = b.rect.centre();
                    gnome_hover(s, (x, y + b.rect.h + 200.0));
                    hovered = None;
                }
                Some(_) => {}
            },
            Some(b) => {
                let on_screen = |r: &Rect| r.w > 0.0 && r.h > 0.0;
                let settled = last
                    .as_ref()
                    .is_some_and(|l| l.expanded && l.rect == b.rect && l.buttons == b.buttons);
                if settled && !b.buttons.is_empty() && b.buttons.iter().all(|(_, r)| on_screen(r)) {
                    return b.clone();
                }
            }
            None => {}
        }
        assert!(
            Instant::now() < deadline,
            "GNOME never showed the banner {title:?} with its buttons; now: {:?}; \
             the message tray: {:?}",
            gnome_banner(s),
            gnome_notifications(s)
        );
        last = banner;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for a notification whose title or body contains `text`.
pub fn gnome_wait_notification(s: &Session, text: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    let has = |n: &Value, k: &str| n[k].as_str().is_some_and(|t| t.contains(text));
    loop {
        let all = gnome_notifications(s);
        if let Some(n) = all.iter().find(|n| has(n, "title") || has(n, "body")) {
            return n.clone();
        }
        assert!(
            Instant::now() < deadline,
            "GNOME never showed a notification with {text:?}; it has: {all:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------
// KDE Plasma

fn start_plasma(s: &mut Session, wayland: bool) {
    for (k, v) in [
        ("XDG_CURRENT_DESKTOP", "KDE"),
        ("KDE_FULL_SESSION", "true"),
        ("KDE_SESSION_VERSION", "5"),
        ("KWIN_SCREENSHOT_NO_PERMISSION_CHECKS", "1"),
        // Plasma's tray icons and notifications are read through AT-SPI.
        ("QT_ACCESSIBILITY", "1"),
        ("QT_LINUX_ACCESSIBILITY_ALWAYS_ON", "1"),
    ] {
        s.set_var(k, v);
    }
    let started = Instant::now();
    let kwin = if wayland {
        for (k, v) in [
            ("XDG_SESSION_TYPE", "wayland"),
            ("QT_QPA_PLATFORM", "wayland"),
            ("WAYLAND_DISPLAY", "wayland-0"),
            ("GDK_BACKEND", "wayland"),
        ] {
            s.set_var(k, v);
        }
        // /usr/bin/kwin_wayland carries the file capability cap_sys_resource, which this
        // sandbox's bounding set lacks ("Operation not permitted"); a plain copy runs.
        let copy = s.home.join("kwin_wayland");
        std::fs::copy("/usr/bin/kwin_wayland", &copy)
            .expect("kwin_wayland is installed (kwin-wayland)");
        chown_r(&copy, 65534, 65534);
        let mut kwin = s.command(copy.to_str().unwrap());
        // Lets tests/shells/fakeinput.py bind org_kde_kwin_fake_input (real pointer and
        // keyboard input; no synthetic X11 input reaches a Wayland compositor).
        kwin.env("KWIN_WAYLAND_NO_PERMISSION_CHECKS", "1");
        kwin.args([
            "--virtual",
            "--no-lockscreen",
            "--socket",
            "wayland-0",
            "--width",
            "1280",
            "--height",
            "800",
        ]);
        kwin
    } else {
        s.start_xvfb();
        s.set_var("XDG_SESSION_TYPE", "x11");
        s.set_var("QT_QPA_PLATFORM", "xcb");
        s.command("kwin_x11")
    };
    // kglobalaccel (activated) aborts without the display, and plasmashell gives up.
    share_env_with_bus(s);
    s.spawn(kwin, "kwin.log");
    wait_for("kwin (see kwin.log)", Duration::from_secs(60), || {
        s.has_name("org.kde.KWin")
    });
    let shell = s.command("plasmashell");
    s.spawn(shell, "plasmashell.log");
    // kded5 owns the watcher, activated when the system tray applet loads.
    wait_for(
        "kded5's StatusNotifierWatcher",
        Duration::from_secs(90),
        || s.has_name("org.kde.StatusNotifierWatcher"),
    );
    wait_for("Plasma's tray as the host", Duration::from_secs(60), || {
        s.busctl(&[
            "get-property",
            "org.kde.StatusNotifierWatcher",
            "/StatusNotifierWatcher",
            "org.kde.StatusNotifierWatcher",
            "IsStatusNotifierHostRegistered",
        ])
        .trim()
            == "b true"
    });
    // The first AT-SPI query of a session only wakes the accessibility bus.
    let _ = atspi(s, &["find", "plasmashell", "push button", "(wake up)"]);
    eprintln!("plasma ready in {:?}", started.elapsed());
}

fn atspi(s: &Session, args: &[&str]) -> Result<Value, String> {
    let script = super::manifest_dir().join("tests/shells/atspi.py");
    let out = s
        .command("python3")
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("python3 is installed");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Accessibles of application `app` (its AT-SPI name: "plasmashell", "vmoverlay"; or
/// "vmoverlay/TITLE" for one of its windows) with this role whose name contains `name`:
/// role, name, extents, actions, showing.
pub fn atspi_find(s: &Session, app: &str, role: &str, name: &str) -> Vec<Value> {
    match atspi(s, &["find", app, role, name]) {
        Ok(v) => v.as_array().cloned().unwrap_or_default(),
        Err(e) => panic!("AT-SPI (python3-gi, gir1.2-atspi-2.0): {e}"),
    }
}

/// Waits for an accessible with a size and returns its extents. (GTK 4.8 does not report
/// the state "showing"; libadwaita keeps a hidden, sizeless second row of dialog buttons.)
pub fn atspi_wait(s: &Session, app: &str, role: &str, name: &str) -> Rect {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let all = atspi_find(s, app, role, name);
        if let Some(r) = all
            .iter()
            .filter_map(|a| Rect::from_json(&a["extents"]))
            .find(|r| r.w > 0.0 && r.h > 0.0)
        {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{app} never showed a {role} named {name:?} (AT-SPI); matches: {all:?}; \
             windows: {}",
            atspi_windows(s)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What AT-SPI sees: each application's windows (for failure messages).
pub fn atspi_windows(s: &Session) -> Value {
    atspi(s, &["windows"]).unwrap_or_else(Value::String)
}

/// Performs an AT-SPI action ("Press", "click") on the first match.
pub fn atspi_act(s: &Session, app: &str, role: &str, name: &str, action: &str) {
    if let Err(e) = atspi(s, &["act", app, role, name, action]) {
        panic!("AT-SPI {action} on {role} {name:?} of {app}: {e}");
    }
}

/// Waits for Plasma's notification server to show a notification whose text contains `text`.
pub fn plasma_wait_notification(s: &Session, text: &str) -> Rect {
    atspi_wait(s, "plasmashell", "notification", text)
}

/// Real input into Plasma, as a user's pointer and keyboard give it: xdotool on X11, KWin's
/// fake-input protocol on Wayland (tests/shells/fakeinput.py). The steps are fakeinput.py's:
/// `move X Y`, `click left|right`, `key down|up|left|right|return|escape`, `sleep MS`.
pub fn plasma_input(s: &Session, steps: &[&str]) {
    match s.kind {
        Kind::PlasmaWayland => {
            let script = super::manifest_dir().join("tests/shells/fakeinput.py");
            let mut args = vec![script.to_str().unwrap()];
            args.extend(steps);
            run_ok(s, "python3", &args);
        }
        Kind::PlasmaX11 => {
            let mut args = Vec::new();
            let mut it = steps.iter();
            while let Some(step) = it.next() {
                let mut arg = || it.next().expect("the step's argument").to_string();
                match *step {
                    "move" => args.extend(["mousemove".to_string(), arg(), arg()]),
                    "click" => {
                        let button = match arg().as_str() {
                            "left" => "1",
                            "middle" => "2",
                            _ => "3",
                        };
                        args.extend(["click".to_string(), button.to_string()]);
                    }
                    "key" => {
                        let mut name = arg();
                        name[..1].make_ascii_uppercase();
                        args.extend(["key".to_string(), name]);
                    }
                    "sleep" => {
                        let ms: f64 = arg().parse().unwrap();
                        args.extend(["sleep".to_string(), format!("{}", ms / 1000.0)]);
                    }
                    other => panic!("unknown input step {other:?}"),
                }
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_ok(s, "xdotool", &args);
        }
        other => panic!("plasma_input on {other:?}"),
    }
}

pub(super) fn screenshot(s: &Session, path: &Path) {
    let tmp = s.home.join("screenshot.png");
    let _ = std::fs::remove_file(&tmp);
    match s.kind {
        Kind::Gnome | Kind::GnomeNoTray => {
            let out = s
                .command("busctl")
                .args(["--user", "call"])
                .args(SHELL_BUS)
                .args(["Screenshot", "s", tmp.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "GNOME screenshot: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        _ => {
            if let Err(e) = atspi(s, &["kwin-screenshot", tmp.to_str().unwrap()]) {
                panic!("KWin ScreenShot2: {e}");
            }
        }
    }
    std::fs::copy(&tmp, path).unwrap();
}

/// Runs `program` in the session and waits for it (a second launch of the app, …).
pub fn run_in_session(s: &Session, program: &str, args: &[&str]) -> std::process::Output {
    let mut c: Command = s.command(program);
    c.args(args).stdin(Stdio::null()).output().unwrap()
}

/// What a tray host asks of our dbusmenu, seen on the session bus (`dbus-monitor`): Plasma
/// does not expose its tray menus to AT-SPI, but it tells the item each (sub)menu it opens.
pub struct MenuEvents {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl MenuEvents {
    pub fn watch(s: &Session) -> MenuEvents {
        let log = s.home.join("dbusmenu-events.log");
        let child = s
            .command("dbus-monitor")
            .args([
                "--session",
                "type='method_call',interface='com.canonical.dbusmenu',member='Event'",
            ])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-monitor is installed (dbus)");
        let events = MenuEvents { child, log };
        // dbus-monitor prints the bus's greeting once it is listening.
        wait_for("dbus-monitor", Duration::from_secs(10), || {
            std::fs::read_to_string(&events.log).is_ok_and(|l| !l.is_empty())
        });
        events
    }

    /// How often the menu item `id` (0: the whole menu) was reported "opened".
    pub fn opened(&self, id: i64) -> usize {
        self.count(id, "opened")
    }

    /// How many times the host said item `id` was clicked (activated, by pointer or keyboard).
    pub fn clicked(&self, id: i64) -> usize {
        self.count(id, "clicked")
    }

    fn count(&self, id: i64, event: &str) -> usize {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.split("method call ")
            .filter(|call| {
                let mut args = call.lines().skip(1).map(str::trim);
                args.next() == Some(&format!("int32 {id}"))
                    && args.next() == Some(&format!("string \"{event}\""))
            })
            .count()
    }

    /// Waits until item `id` has been opened `n` times in all.
    pub fn wait_opened(&self, id: i64, n: usize, what: &str) {
        wait_for(what, Duration::from_secs(15), || self.opened(id) >= n);
    }
}

impl Drop for MenuEvents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
