//! The desktop application: a windowless `adw::Application` (kept alive by a hold guard) that
//! runs the monitor, the state machine, the prompt, the status window and the tray on one glib
//! main loop. Blocking work (discovery, qemu-img) runs off the loop.

mod autostart;
mod prompt;
mod status;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use adw::prelude::*;
use gtk::{gio, glib};

use crate::machine::{Effect, Input, InspectReason, Machine, Summary, VmKey};
use crate::i18n::{tr, tr_f};
use crate::libvirt::{self, domains::LibvirtCheck, Model, Monitor, MonitorConfig};
use crate::overlay::{self, EngineChoice, JobEvent, Journal, OpKind, Progress, Request};
use crate::tray::{TrayAction, TrayState, TrayVm, VmTray};
use crate::units::human_bytes;
use crate::{config, settings};

/// Appends one JSON line to `$VMOVERLAY_TEST_HOOK`, if set: how tests and benchmarks see when
/// a prompt was mapped or a job finished, without scraping the screen.
pub fn test_hook(event: &str, vm: &VmKey, extra: serde_json::Value) {
    let Some(path) = std::env::var_os("VMOVERLAY_TEST_HOOK") else {
        return;
    };
    let line = serde_json::json!({
        "event": event,
        "uri": vm.uri,
        "vm": vm.name,
        "time": humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
        "extra": extra,
    });
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

struct State {
    machine: Machine,
    model: Model,
    monitors: Vec<Monitor>,
    uris: Vec<String>,
    prompts: HashMap<VmKey, adw::MessageDialog>,
    status: Option<status::StatusWindow>,
    tray: Option<ksni::Handle<VmTray>>,
    tray_state: TrayState,
    journal: Journal,
    demo: Option<crate::demo::Demo>,
    engine: EngineChoice,
}

pub struct Controller {
    app: adw::Application,
    state: RefCell<State>,
    _hold: gio::ApplicationHoldGuard,
}

/// Runs the desktop app with the process's arguments; returns the exit code.
pub fn run(argv: Vec<String>) -> i32 {
    let app = adw::Application::builder()
        .application_id(config::APP_ID)
        .flags(gio::ApplicationFlags::HANDLES_COMMAND_LINE)
        .build();
    let controller: Rc<RefCell<Option<Rc<Controller>>>> = Rc::default();
    app.connect_command_line(move |app, cmdline| {
        let args: Vec<String> = cmdline
            .arguments()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let cli = match crate::cli::Cli::try_parse_from_args(&args) {
            Ok(cli) => cli,
            Err(e) => {
                eprintln!("{e}");
                return glib::ExitCode::from(crate::cli::EXIT_USAGE as u8);
            }
        };
        let mut slot = controller.borrow_mut();
        match slot.as_ref() {
            // A second launch hands its arguments to the running instance.
            Some(c) => c.add_uris(cli.uris()),
            None if cli.demo => match crate::demo::Demo::create() {
                Ok(demo) => {
                    *slot = Some(Controller::start(
                        app,
                        Vec::new(),
                        Some(demo),
                        cli.engine.choice(),
                    ))
                }
                Err(e) => {
                    eprintln!("vmoverlay: cannot set up the demo: {e}. Nothing was changed.");
                    return glib::ExitCode::FAILURE;
                }
            },
            None => {
                *slot = Some(Controller::start(
                    app,
                    cli.uris(),
                    None,
                    cli.engine.choice(),
                ))
            }
        }
        glib::ExitCode::SUCCESS
    });
    i32::from(app.run_with_args(&argv))
}

impl Controller {
    fn start(
        app: &adw::Application,
        mut uris: Vec<String>,
        demo: Option<crate::demo::Demo>,
        engine: EngineChoice,
    ) -> Rc<Controller> {
        if let Some(d) = &demo {
            uris = vec![d.uri.clone()];
        }
        let (tray_tx, tray_rx) = async_channel::unbounded();
        let ctl = Rc::new(Controller {
            app: app.clone(),
            _hold: app.hold(),
            state: RefCell::new(State {
                machine: Machine::new(settings::load_policies()),
                model: Model::new(),
                monitors: Vec::new(),
                uris: Vec::new(),
                prompts: HashMap::new(),
                status: None,
                tray: None,
                tray_state: TrayState {
                    autostart: autostart::enabled(),
                    demo: demo.as_ref().map(|_| true),
                    ..Default::default()
                },
                journal: Journal::default_location(),
                demo,
                engine,
            }),
        });
        if ctl.state.borrow().demo.is_some() {
            ctl.schedule_demo_shutdown();
        }
        ctl.install_actions();
        // Interrupted operations are finished before anything else happens to their VMs.
        let c = ctl.clone();
        glib::spawn_future_local(async move {
            let journal = c.state.borrow().journal.clone();
            let done = gio::spawn_blocking(move || recover(&journal)).await;
            for line in done.unwrap_or_default() {
                c.notify("VM Overlay", &line, false);
            }
            c.add_uris(uris);
        });
        Self::spawn_tray(&ctl, tray_tx);
        let c = ctl.clone();
        glib::spawn_future_local(async move {
            while let Ok(action) = tray_rx.recv().await {
                c.on_tray(action);
            }
        });
        ctl.refresh();
        ctl
    }

    fn install_actions(self: &Rc<Self>) {
        let show = gio::SimpleAction::new("show-status", None);
        let c = Rc::downgrade(self);
        show.connect_activate(move |_, _| {
            if let Some(c) = c.upgrade() {
                c.show_status();
            }
        });
        self.app.add_action(&show);
        let quit = gio::SimpleAction::new("quit", None);
        let app = self.app.clone();
        quit.connect_activate(move |_, _| app.quit());
        self.app.add_action(&quit);
    }

    fn spawn_tray(ctl: &Rc<Controller>, tx: async_channel::Sender<TrayAction>) {
        let c = ctl.clone();
        glib::spawn_future_local(async move {
            use ksni::TrayMethods;
            let tray = VmTray {
                state: c.state.borrow().tray_state.clone(),
                tx,
            };
            match tray
                .disable_dbus_name(autostart::in_flatpak())
                .spawn()
                .await
            {
                Ok(handle) => {
                    c.state.borrow_mut().tray = Some(handle);
                    test_hook("tray-ready", &VmKey::new("", ""), serde_json::Value::Null);
                    c.refresh();
                }
                Err(e) => {
                    let msg = tr_f(
                        "No system tray is available ({error}). VM Overlay keeps running and still asks when a VM shuts down. On GNOME, install the \"AppIndicator and KStatusNotifierItem Support\" extension to get its tray icon.",
                        &[("error", &e.to_string())],
                    );
                    log::warn!("{msg}");
                    test_hook(
                        "tray-unavailable",
                        &VmKey::new("", ""),
                        serde_json::json!(e.to_string()),
                    );
                    c.notify(&tr("No system tray"), &msg, false);
                }
            }
        });
    }

    fn add_uris(self: &Rc<Self>, uris: Vec<String>) {
        let new: Vec<String> = {
            let st = self.state.borrow();
            uris.into_iter().filter(|u| !st.uris.contains(u)).collect()
        };
        if new.is_empty() {
            self.show_status();
            return;
        }
        let mut config = MonitorConfig::new(new.clone());
        // The test driver keeps its state per connection: the demo acts through this one.
        config.read_only = self.state.borrow().demo.is_none();
        let monitor = Monitor::start(config);
        let rx = monitor.receiver();
        {
            let mut st = self.state.borrow_mut();
            st.uris.extend(new);
            st.monitors.push(monitor);
        }
        let c = self.clone();
        glib::spawn_future_local(async move {
            while let Ok(event) = rx.recv().await {
                let events = c.state.borrow_mut().model.apply(event);
                for e in events {
                    c.input(Input::Monitor(e));
                }
            }
        });
    }

    /// The monitor's live connection to `uri`, shared by discovery and the engine's checks.
    fn connection_for(&self, uri: &str) -> Option<virt::connect::Connect> {
        self.state
            .borrow()
            .monitors
            .iter()
            .find_map(|m| m.connection(uri))
    }

    /// The demo guest shuts itself down a few seconds after it starts, like a short session.
    fn schedule_demo_shutdown(self: &Rc<Self>) {
        let c = Rc::downgrade(self);
        glib::timeout_add_seconds_local_once(8, move || {
            if let Some(c) = c.upgrade() {
                c.demo_power(false);
            }
        });
    }

    /// Starts (`true`) or shuts down the demo guest, through the monitor's connection.
    fn demo_power(self: &Rc<Self>, on: bool) {
        let Some(uri) = self.state.borrow().demo.as_ref().map(|d| d.uri.clone()) else {
            return;
        };
        let Some(conn) = self.connection_for(&uri) else {
            return;
        };
        let Ok(dom) = conn.lookup_domain_by_name(crate::demo::DOMAIN) else {
            return;
        };
        let active = dom.is_active().unwrap_or(false);
        if on && !active {
            if let Some(d) = self.state.borrow().demo.as_ref() {
                if let Err(e) = d.guest_writes(crate::demo::LATER_WRITE) {
                    log::warn!("demo guest could not write: {e}");
                }
            }
            if dom.create().is_ok() {
                self.schedule_demo_shutdown();
            }
        } else if !on && active {
            let _ = dom.shutdown();
        }
    }

    /// Feeds the state machine and carries out what it decides.
    fn input(self: &Rc<Self>, input: Input) {
        let effects = self.state.borrow_mut().machine.handle(input);
        for e in effects {
            self.effect(e);
        }
        self.refresh();
    }

    fn effect(self: &Rc<Self>, effect: Effect) {
        match effect {
            Effect::Inspect { key, reason } => self.inspect(key, reason),
            Effect::ShowPrompt { key, decision } => {
                let dialog = prompt::show(self, &key, &decision);
                if let Some(old) = self.state.borrow_mut().prompts.insert(key, dialog) {
                    old.close();
                }
            }
            Effect::ClosePrompt { key } => {
                let dialog = self.state.borrow_mut().prompts.remove(&key);
                if let Some(d) = dialog {
                    d.close();
                    test_hook("prompt-closed", &key, serde_json::Value::Null);
                }
            }
            Effect::StartJob { key, op } => self.start_job(key, op),
            Effect::SavePolicy { key, policy } => {
                if let Err(e) = settings::save_policy(&key, policy) {
                    self.notify(&tr("Could not save the setting"), &e, true);
                }
            }
            Effect::Notify { title, body, error } => self.notify(&title, &body, error),
        }
    }

    /// A choice from the prompt, the tray or the status window; the state machine closes an
    /// open prompt for that VM whichever way the choice came.
    pub fn choose(self: &Rc<Self>, key: VmKey, choice: crate::machine::Choice, remember: bool) {
        self.input(Input::Choice {
            key,
            choice,
            remember,
        });
    }

    fn inspect(self: &Rc<Self>, key: VmKey, reason: InspectReason) {
        let c = self.clone();
        glib::spawn_future_local(async move {
            let (k, conn) = (key.clone(), c.connection_for(&key.uri));
            let engine = c.state.borrow().engine;
            let changed = gio::spawn_blocking(move || inspect_vm(&k, conn, engine))
                .await
                .unwrap_or_else(|_| Err("inspection panicked".into()));
            c.input(Input::Inspected {
                key,
                reason,
                changed,
            });
        });
    }

    fn start_job(self: &Rc<Self>, key: VmKey, op: OpKind) {
        let c = self.clone();
        let journal = self.state.borrow().journal.clone();
        glib::spawn_future_local(async move {
            let (k, conn) = (key.clone(), c.connection_for(&key.uri));
            let engine = c.state.borrow().engine;
            let plan = gio::spawn_blocking(move || plan_job(&k, op, conn, engine))
                .await
                .unwrap_or_else(|_| Err("planning panicked".into()));
            let result = match plan {
                Err(e) => Err(e),
                Ok((conn, requests)) => {
                    let mut total = 0;
                    let mut error = None;
                    for req in requests {
                        let check = Box::new(LibvirtCheck::new(conn.clone(), &key.uri, &key.name));
                        let rx = overlay::spawn(req, check, journal.clone());
                        while let Ok(ev) = rx.recv().await {
                            match ev {
                                JobEvent::Progress(Progress::Committing(f)) => {
                                    c.input(Input::JobProgress {
                                        key: key.clone(),
                                        progress: f,
                                    })
                                }
                                JobEvent::Progress(_) => {}
                                JobEvent::Done(Ok(o)) => {
                                    total += o.changed_bytes;
                                    journal.set_last(
                                        &o.overlay,
                                        &format!("{} {}", op.word(), human_bytes(o.changed_bytes)),
                                    );
                                }
                                JobEvent::Done(Err(e)) => error = Some(e.to_string()),
                            }
                        }
                        if error.is_some() {
                            break;
                        }
                    }
                    match error {
                        Some(e) => Err(e),
                        None => Ok(match op {
                            OpKind::Commit => tr_f(
                                "Committed {size} into the base image.",
                                &[("size", &human_bytes(total))],
                            ),
                            OpKind::Discard => tr_f(
                                "Discarded {size}; the base image is untouched.",
                                &[("size", &human_bytes(total))],
                            ),
                        }),
                    }
                }
            };
            test_hook(
                "job-done",
                &key,
                serde_json::json!({"op": op.word(), "ok": result.is_ok(), "result": format!("{result:?}")}),
            );
            c.input(Input::JobDone { key, op, result });
        });
    }

    fn on_tray(self: &Rc<Self>, action: TrayAction) {
        match action {
            TrayAction::Commit(key) => self.choose(key, crate::machine::Choice::Commit, false),
            TrayAction::Discard(key) => self.choose(key, crate::machine::Choice::Discard, false),
            TrayAction::ShowStatus => self.show_status(),
            TrayAction::ToggleAutostart => {
                let (enable, uris) = {
                    let st = self.state.borrow();
                    (!st.tray_state.autostart, st.uris.clone())
                };
                let c = self.clone();
                glib::spawn_future_local(async move {
                    let now = match autostart::set(enable, &uris).await {
                        Ok(now) => now,
                        Err(e) => {
                            c.notify(&tr("Could not change start at login"), &e, true);
                            autostart::enabled()
                        }
                    };
                    c.state.borrow_mut().tray_state.autostart = now;
                    c.push_tray();
                });
            }
            TrayAction::DemoPower(on) => self.demo_power(on),
            TrayAction::Quit => self.app.quit(),
        }
    }

    pub fn notify(&self, title: &str, body: &str, error: bool) {
        let n = gio::Notification::new(title);
        n.set_body(Some(body));
        if error {
            n.set_priority(gio::NotificationPriority::High);
            log::error!("{title}: {body}");
        }
        self.app.send_notification(None, &n);
    }

    /// The status window, created on first use.
    fn status_window(self: &Rc<Self>) -> adw::ApplicationWindow {
        if let Some(w) = self.state.borrow().status.as_ref() {
            return w.window.clone();
        }
        let w = status::StatusWindow::new(self);
        let window = w.window.clone();
        self.state.borrow_mut().status = Some(w);
        self.refresh();
        window
    }

    fn show_status(self: &Rc<Self>) {
        self.status_window().present();
    }

    pub fn app(&self) -> &adw::Application {
        &self.app
    }

    /// Renders the machine's state into the tray and the status window.
    fn refresh(self: &Rc<Self>) {
        let (rows, summary, tooltip) = {
            let st = self.state.borrow();
            let rows: Vec<status::Row> = st
                .machine
                .vms
                .iter()
                .map(|(k, vm)| status::Row::of(k, vm))
                .collect();
            let running = st.machine.vms.values().filter(|v| v.active).count();
            let pending = st
                .machine
                .vms
                .values()
                .filter(|v| v.decision.is_some())
                .count();
            let busy = st.machine.vms.values().filter(|v| v.job.is_some()).count();
            let mut tip = tr_f("{count} running", &[("count", &running.to_string())]);
            if pending > 0 {
                tip.push_str(&tr_f(
                    ", {count} waiting for a decision",
                    &[("count", &pending.to_string())],
                ));
            }
            if busy > 0 {
                tip.push_str(&tr_f(", {count} busy", &[("count", &busy.to_string())]));
            }
            if st.machine.connected.values().any(|c| !c) {
                tip.push_str(&tr(" (reconnecting to libvirt)"));
            }
            (rows, st.machine.summary(), tip)
        };
        if let Some(w) = self.state.borrow().status.as_ref() {
            w.update(&rows);
        }
        {
            let mut st = self.state.borrow_mut();
            let demo_running = st.demo.as_ref().map(|_| {
                st.machine
                    .vms
                    .iter()
                    .any(|(k, vm)| k.name == crate::demo::DOMAIN && vm.active)
            });
            st.tray_state.demo = demo_running;
            st.tray_state.summary = summary;
            st.tray_state.tooltip = tooltip;
            st.tray_state.vms = rows
                .iter()
                .map(|r| TrayVm {
                    key: r.key.clone(),
                    label: format!("{} — {}", r.key.name, r.subtitle),
                    can_act: r.can_act,
                })
                .collect();
        }
        self.push_tray();
    }

    /// Sends the tray state to ksni, only when it changed.
    fn push_tray(&self) {
        let st = self.state.borrow();
        let Some(handle) = st.tray.clone() else {
            return;
        };
        let new = st.tray_state.clone();
        drop(st);
        glib::spawn_future_local(async move {
            handle
                .update(move |t| {
                    if t.state != new {
                        t.state = new;
                    }
                })
                .await;
        });
    }

    pub fn summary(&self) -> Summary {
        self.state.borrow().machine.summary()
    }
}

/// Total changed bytes of a VM's managed disks (blocking: libvirt + qemu-img).
fn inspect_vm(
    key: &VmKey,
    conn: Option<virt::connect::Connect>,
    engine: EngineChoice,
) -> Result<u64, String> {
    let (check, found) = discover_vm(key, conn, engine)?;
    if found.managed.is_empty() {
        return Err("no managed disk".into());
    }
    found
        .managed
        .iter()
        .map(|d| overlay::ops::changed_bytes(d, &check))
        .sum()
}

fn discover_vm(
    key: &VmKey,
    conn: Option<virt::connect::Connect>,
    engine: EngineChoice,
) -> Result<(LibvirtCheck, overlay::DomainDisks), String> {
    let conn = match conn {
        Some(c) => c,
        None => libvirt::open(&key.uri, true).map_err(|e| e.message().to_string())?,
    };
    let check = LibvirtCheck::new(conn, &key.uri, &key.name);
    let found = libvirt::domains::domain_disks(&check, engine)?;
    Ok((check, found))
}

fn plan_job(
    key: &VmKey,
    op: OpKind,
    conn: Option<virt::connect::Connect>,
    engine: EngineChoice,
) -> Result<(virt::connect::Connect, Vec<Request>), String> {
    let (check, found) = discover_vm(key, conn, engine)?;
    if found.managed.is_empty() {
        return Err(format!("{} has no managed disk", key.name));
    }
    let requests = found
        .managed
        .into_iter()
        .map(|disk| Request {
            op,
            uri: key.uri.clone(),
            domain: key.name.clone(),
            disk,
        })
        .collect();
    Ok((check.connection().clone(), requests))
}

/// Finishes what the journal holds; returns a line per operation for notifications.
fn recover(journal: &Journal) -> Vec<String> {
    overlay::recover(journal, &libvirt::domains::check_for_record, &mut |_, _| {})
        .into_iter()
        .map(|(rec, r)| match r {
            Ok(_) => tr_f(
                "Finished the interrupted {operation} of {vm} ({disk}).",
                &[
                    ("operation", rec.op.word()),
                    ("vm", &rec.domain),
                    ("disk", &rec.disk.target),
                ],
            ),
            Err(e) => tr_f(
                "The interrupted {operation} of {vm} is still pending: {error}",
                &[
                    ("operation", rec.op.word()),
                    ("vm", &rec.domain),
                    ("error", &e.to_string()),
                ],
            ),
        })
        .collect()
}
