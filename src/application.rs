//! The desktop application: a windowless `adw::Application` subclass (kept alive by a hold
//! guard) that owns the monitors, the state machine, the prompts, the tray and the status
//! window, each in its own cell. Everything runs on one glib main loop; blocking work (the
//! pipeline in [`crate::jobs`]) runs off it.
//!
//! User intents are actions with the VM's key as target (see [`VmKey::target`]):
//! `app.commit`, `app.discard`, `app.later`, `app.set-policy`, `app.undo`, `app.history`,
//! plus `app.show-status` and `app.quit`. A revision's actions (`app.rollback`, `app.pin`,
//! `app.label`) take `(uri, vm, revision, disk)`. The prompt, the tray, the status window,
//! the history window and notifications all use them.

use adw::prelude::*;
use adw::subclass::prelude::*;
use gtk::{gio, glib};

use crate::cli::Cli;
use crate::demo::Demo;
use crate::hook;
use crate::i18n::{tr, tr_f};
use crate::jobs::{self, Context, Event};
use crate::libvirt::{Monitor, MonitorConfig};
use crate::machine::{Choice, Effect, Input, InspectReason, Inspection, Policy, VmKey};
use crate::overlay::{OpError, Progress};
use crate::tray::{TrayAction, TrayState, TrayVm, VmTray};
use crate::ui::history::{HistoryWindow, View};
use crate::ui::{prompt, status};
use crate::{autostart, config, settings};

mod imp {
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    use super::*;
    use crate::libvirt::Model;
    use crate::machine::Machine;

    #[derive(Default)]
    pub struct Application {
        /// The command line this process was started with (the first launch's).
        pub cli: RefCell<Option<Cli>>,
        pub started: Cell<bool>,
        pub hold: RefCell<Option<gio::ApplicationHoldGuard>>,
        pub context: RefCell<Option<Context>>,
        pub machine: RefCell<Machine>,
        pub model: RefCell<Model>,
        pub monitors: RefCell<Vec<Monitor>>,
        pub uris: RefCell<Vec<String>>,
        pub prompts: RefCell<HashMap<VmKey, prompt::Prompt>>,
        pub status: RefCell<Option<status::StatusWindow>>,
        pub tray: RefCell<Option<ksni::Handle<VmTray>>>,
        pub tray_state: RefCell<TrayState>,
        pub demo: RefCell<Option<Demo>>,
        /// Open history windows, and what each lists.
        pub histories: RefCell<HashMap<VmKey, (HistoryWindow, View)>>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for Application {
        const NAME: &'static str = "VmoApplication";
        type Type = super::Application;
        type ParentType = adw::Application;
    }

    impl ObjectImpl for Application {}

    impl ApplicationImpl for Application {
        fn startup(&self) {
            self.parent_startup();
            crate::ui::register_resources();
            self.obj().install_actions();
        }

        fn command_line(&self, cmdline: &gio::ApplicationCommandLine) -> glib::ExitCode {
            let app = self.obj();
            // This process's own command line was parsed once, in `main`; a second launch's
            // arguments arrive here from that other process.
            let cli = if cmdline.is_remote() {
                let args: Vec<String> = cmdline
                    .arguments()
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                match Cli::try_parse_from_args(&args) {
                    Ok(cli) => cli,
                    Err(e) => {
                        eprintln!("{e}");
                        return glib::ExitCode::from(crate::cli::EXIT_USAGE as u8);
                    }
                }
            } else {
                match self.cli.borrow_mut().take() {
                    Some(cli) => cli,
                    None => return glib::ExitCode::FAILURE,
                }
            };
            if self.started.get() {
                // Launched again: the user is looking for it. (`--demo` again adds no
                // connection: the demo has its own.)
                if !cli.demo {
                    app.add_uris(cli.uris());
                }
                app.show_status();
                return glib::ExitCode::SUCCESS;
            }
            match app.start(&cli) {
                Ok(()) => glib::ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("vmoverlay: {message}");
                    glib::ExitCode::FAILURE
                }
            }
        }

        fn activate(&self) {
            self.obj().show_status();
        }
    }

    impl GtkApplicationImpl for Application {}
    impl AdwApplicationImpl for Application {}
}

glib::wrapper! {
    pub struct Application(ObjectSubclass<imp::Application>)
        @extends adw::Application, gtk::Application, gio::Application,
        @implements gio::ActionGroup, gio::ActionMap;
}

/// Runs the desktop application for the parsed command line `cli` (`argv` is the process's
/// own, handed to GApplication); returns the exit code.
pub fn run(cli: Cli, argv: Vec<String>) -> i32 {
    let app: Application = glib::Object::builder()
        .property("application-id", config::APP_ID)
        .property("flags", gio::ApplicationFlags::HANDLES_COMMAND_LINE)
        .build();
    app.imp().cli.replace(Some(cli));
    i32::from(app.run_with_args(&argv))
}

/// The monitor's connection to `uri` if it has one, else a new read-only one (blocking).
fn connection(
    monitors: Option<virt::connect::Connect>,
    uri: &str,
) -> Result<virt::connect::Connect, crate::overlay::OpError> {
    match monitors {
        Some(c) => Ok(c),
        None => crate::libvirt::open(uri, true).map_err(|e| crate::overlay::OpError::NotFound {
            what: e.message().to_string(),
        }),
    }
}

/// What `key`'s history window lists (blocking).
fn history_view(ctx: &Context, conn: Option<virt::connect::Connect>, key: &VmKey) -> View {
    let read = connection(conn, &key.uri)
        .and_then(|conn| jobs::vm_history(ctx, &conn, &key.uri, &key.name, None));
    let h = match read {
        Ok(h) => h,
        Err(e) => {
            return View {
                error: Some(e.to_string()),
                ..Default::default()
            }
        }
    };
    let entries = h
        .entries
        .iter()
        .map(|e| crate::ui::history::Entry {
            disk: e.disk.clone(),
            id: e.revision.id,
            time: e.revision.time.clone(),
            kind: e.revision.kind.word(),
            label: e.revision.label.clone(),
            pinned: e.revision.pinned,
            bytes: e.revision.held_bytes(),
            restorable: e.restorable,
        })
        .collect();
    let summary = h
        .disks
        .iter()
        .map(|(t, d)| {
            tr_f(
                "{disk}: {count} revisions hold {size}; the newest {keep} are kept, and pinned ones",
                &[
                    ("disk", t),
                    ("count", &d.ready().count().to_string()),
                    ("size", &crate::units::human_bytes(d.held_bytes())),
                    ("keep", &d.keep.to_string()),
                ],
            )
        })
        .collect();
    View {
        entries,
        summary,
        undo: h.undo,
        error: None,
    }
}

impl Application {
    /// Sets everything up for the first launch.
    fn start(&self, cli: &Cli) -> Result<(), String> {
        let imp = self.imp();
        let mut uris = cli.uris();
        if cli.demo {
            let demo = Demo::create().map_err(|e| {
                tr_f(
                    "cannot set up the demo: {error}. Nothing was changed.",
                    &[("error", &e)],
                )
            })?;
            uris = vec![demo.uri.clone()];
            imp.demo.replace(Some(demo));
            imp.tray_state.borrow_mut().demo = Some(true);
            self.schedule_demo_shutdown();
        }
        imp.started.set(true);
        imp.hold.replace(Some(self.hold()));
        imp.context.replace(Some(cli.context()));
        imp.machine
            .replace(crate::machine::Machine::new(settings::load_policies()));
        imp.tray_state.borrow_mut().autostart = autostart::enabled();
        // Interrupted operations are finished before anything else happens to their VMs.
        let journal = self.context().journal;
        glib::spawn_future_local(glib::clone!(
            #[weak(rename_to = app)]
            self,
            async move {
                let done = gio::spawn_blocking(move || jobs::recover(&journal)).await;
                for (rec, result) in done.unwrap_or_default() {
                    let vm = VmKey::new(&rec.uri, &rec.domain);
                    app.notify(crate::ui::notice::recovered(&vm, rec.op, &result));
                }
                app.add_uris(uris);
            }
        ));
        self.spawn_tray();
        self.refresh();
        Ok(())
    }

    fn install_actions(&self) {
        let vm_action = |name: &str, choice: Choice| {
            gio::ActionEntry::builder(name)
                .parameter_type(Some(VmKey::target_type()))
                .activate(move |app: &Self, _, target| {
                    if let Some(key) = target.and_then(VmKey::from_target) {
                        app.input(Input::Choice {
                            key,
                            choice,
                            remember: false,
                        });
                    }
                })
                .build()
        };
        let set_policy = gio::ActionEntry::builder("set-policy")
            .parameter_type(Some(glib::VariantTy::new("(sss)").expect("a type string")))
            .activate(|app: &Self, _, target| {
                let Some((uri, name, word)) =
                    target.and_then(|t| t.get::<(String, String, String)>())
                else {
                    return;
                };
                if let Some(policy) = Policy::from_word(&word) {
                    let effects = app
                        .imp()
                        .machine
                        .borrow_mut()
                        .set_policy(&VmKey::new(&uri, &name), policy);
                    app.effects(effects);
                }
            })
            .build();
        // "Make disposable…" and "Stop being disposable…" ask first; their answers act.
        // An action with the VM as target.
        let key_action = |name: &str, f: fn(&Self, VmKey)| {
            gio::ActionEntry::builder(name)
                .parameter_type(Some(VmKey::target_type()))
                .activate(move |app: &Self, _, target| {
                    if let Some(key) = target.and_then(VmKey::from_target) {
                        f(app, key);
                    }
                })
                .build()
        };
        let adopt = key_action("adopt", |app, key| {
            crate::ui::confirm::adopt(app.upcast_ref(), &key)
        });
        let release = key_action("release", |app, key| {
            let changed = app
                .imp()
                .machine
                .borrow()
                .vms
                .get(&key)
                .and_then(|vm| vm.changed)
                .unwrap_or(0);
            crate::ui::confirm::release(app.upcast_ref(), &key, changed);
        });
        let make_disposable = key_action("make-disposable", |app, key| {
            app.input(Input::ChangeChosen {
                key,
                change: crate::overlay::disposable::Change::Adopt,
                changes: None,
            })
        });
        let stop_disposable = gio::ActionEntry::builder("stop-disposable")
            .parameter_type(Some(glib::VariantTy::new("(sss)").expect("a type string")))
            .activate(|app: &Self, _, target| {
                let Some((uri, name, first)) =
                    target.and_then(|t| t.get::<(String, String, String)>())
                else {
                    return;
                };
                let changes = match first.as_str() {
                    "commit" => Some(crate::overlay::OpKind::Commit),
                    "discard" => Some(crate::overlay::OpKind::Discard),
                    _ => None,
                };
                app.input(Input::ChangeChosen {
                    key: VmKey::new(&uri, &name),
                    change: crate::overlay::disposable::Change::Release,
                    changes,
                });
            })
            .build();
        let undo = key_action("undo", |app, key| app.undo(key));
        let history = key_action("history", |app, key| app.show_history(&key));
        let revision = |name: &str, ty: &str, f: fn(&Self, &glib::Variant)| {
            gio::ActionEntry::builder(name)
                .parameter_type(Some(glib::VariantTy::new(ty).expect("a type string")))
                .activate(move |app: &Self, _, target| {
                    if let Some(t) = target {
                        f(app, t);
                    }
                })
                .build()
        };
        let show_status = gio::ActionEntry::builder("show-status")
            .activate(|app: &Self, _, _| app.show_status())
            .build();
        let quit = gio::ActionEntry::builder("quit")
            .activate(|app: &Self, _, _| app.quit())
            .build();
        self.add_action_entries([
            vm_action("commit", Choice::Commit),
            vm_action("discard", Choice::Discard),
            vm_action("later", Choice::Later),
            set_policy,
            adopt,
            release,
            make_disposable,
            stop_disposable,
            undo,
            history,
            revision("rollback", "(ssts)", |app, t| {
                if let Some((uri, name, id, disk)) = t.get::<(String, String, u64, String)>() {
                    crate::ui::confirm::rollback(
                        app.upcast_ref(),
                        &VmKey::new(&uri, &name),
                        id,
                        &disk,
                    );
                }
            }),
            revision("rollback-now", "(ssts)", |app, t| {
                if let Some((uri, name, id, disk)) = t.get::<(String, String, u64, String)>() {
                    app.rollback(VmKey::new(&uri, &name), id, disk);
                }
            }),
            revision("pin", "(sstsb)", |app, t| {
                if let Some((uri, name, id, disk, pinned)) =
                    t.get::<(String, String, u64, String, bool)>()
                {
                    app.edit_revision(VmKey::new(&uri, &name), id, disk, Some(pinned), None);
                }
            }),
            revision("label", "(ssts)", |app, t| {
                if let Some((uri, name, id, disk)) = t.get::<(String, String, u64, String)>() {
                    let key = VmKey::new(&uri, &name);
                    let current = app
                        .imp()
                        .histories
                        .borrow()
                        .get(&key)
                        .and_then(|(_, v)| {
                            v.entries
                                .iter()
                                .find(|e| e.id == id && e.disk == disk)
                                .and_then(|e| e.label.clone())
                        })
                        .unwrap_or_default();
                    crate::ui::confirm::label(app.upcast_ref(), &key, id, &disk, &current);
                }
            }),
            revision("set-label", "(sstss)", |app, t| {
                if let Some((uri, name, id, disk, label)) =
                    t.get::<(String, String, u64, String, String)>()
                {
                    app.edit_revision(VmKey::new(&uri, &name), id, disk, None, Some(label));
                }
            }),
            show_status,
            quit,
        ]);
    }

    /// Opens (or raises) `key`'s history window and lists its revisions.
    fn show_history(&self, key: &VmKey) {
        let existing = self
            .imp()
            .histories
            .borrow()
            .get(key)
            .map(|(w, _)| w.clone());
        let window = existing.unwrap_or_else(|| {
            let w = HistoryWindow::new(self.upcast_ref(), key);
            self.imp()
                .histories
                .borrow_mut()
                .insert(key.clone(), (w.clone(), View::default()));
            w
        });
        window.window.present();
        self.reload_history(key);
    }

    /// Reads `key`'s history again (off the main loop) into its window, if one is open.
    fn reload_history(&self, key: &VmKey) {
        if !self.imp().histories.borrow().contains_key(key) {
            return;
        }
        let (ctx, conn) = (self.context(), self.connection_for(&key.uri));
        let k = key.clone();
        glib::spawn_future_local(glib::clone!(
            #[weak(rename_to = app)]
            self,
            async move {
                let key = k.clone();
                let view = gio::spawn_blocking(move || history_view(&ctx, conn, &k))
                    .await
                    .unwrap_or_default();
                let active = app
                    .imp()
                    .machine
                    .borrow()
                    .vms
                    .get(&key)
                    .is_some_and(|vm| vm.active || vm.job.is_some());
                let view = View {
                    undo: view.undo && !active,
                    ..view
                };
                let window = {
                    let mut open = app.imp().histories.borrow_mut();
                    open.get_mut(&key).map(|(w, shown)| {
                        *shown = view.clone();
                        w.clone()
                    })
                };
                if let Some(w) = window {
                    w.show(&view);
                }
            }
        ));
    }

    /// Undo: `key` goes back to before its last commit, discard or rollback.
    fn undo(&self, key: VmKey) {
        self.history_job(key, "undo", |ctx, conn, key| {
            jobs::undo(ctx, conn, &key.uri, &key.name)
        });
    }

    fn rollback(&self, key: VmKey, id: u64, disk: String) {
        self.history_job(key, "rollback", move |ctx, conn, key| {
            let (found, disks) = jobs::history_disks(ctx, conn, &key.uri, &key.name, Some(&disk))?;
            let d = jobs::disk_with_revision(ctx, &key.name, &disks, id)?;
            let left = jobs::rollback(ctx, &found, &key.uri, &key.name, &d, id)?;
            Ok(vec![jobs::Undone {
                disk,
                revision: id,
                left,
            }])
        });
    }

    /// Runs `work` on `key`'s connection off the main loop, then `done` with its result on
    /// it (a panic in `work` becomes an error that says what was being done).
    fn on_vm<T: Send + 'static>(
        &self,
        key: VmKey,
        what: &'static str,
        work: impl FnOnce(&Context, &virt::connect::Connect, &VmKey) -> Result<T, OpError>
            + Send
            + 'static,
        done: impl FnOnce(&Self, VmKey, Result<T, OpError>) + 'static,
    ) {
        let (ctx, conn) = (self.context(), self.connection_for(&key.uri));
        glib::spawn_future_local(glib::clone!(
            #[weak(rename_to = app)]
            self,
            async move {
                let k = key.clone();
                let result = gio::spawn_blocking(move || {
                    let conn = connection(conn, &k.uri)?;
                    work(&ctx, &conn, &k)
                })
                .await
                .unwrap_or_else(|_| {
                    Err(OpError::NotFound {
                        what: format!("{what} panicked"),
                    })
                });
                done(&app, key, result);
            }
        ));
    }

    /// Runs an undo or a rollback off the main loop; its result is a notification, and the
    /// VM and its history are looked at again.
    fn history_job(
        &self,
        key: VmKey,
        what: &'static str,
        work: impl FnOnce(&Context, &virt::connect::Connect, &VmKey) -> Result<Vec<jobs::Undone>, OpError>
            + Send
            + 'static,
    ) {
        self.on_vm(key, what, work, move |app, key, result| {
            hook::emit(
                "history-done",
                &key,
                serde_json::json!({
                    "action": what,
                    "ok": result.is_ok(),
                    "result": match &result {
                        Ok(u) => u.iter().map(|u| serde_json::json!({
                            "disk": u.disk, "revision": u.revision, "left": u.left,
                        })).collect(),
                        Err(e) => serde_json::json!(e.to_string()),
                    },
                }),
            );
            app.notify(crate::ui::notice::rolled_back(&key, &result));
            app.effect(Effect::Inspect {
                key: key.clone(),
                reason: InspectReason::Refresh,
            });
            app.reload_history(&key);
        });
    }

    /// Pins or unpins a revision, or sets its label; the history window shows it.
    fn edit_revision(
        &self,
        key: VmKey,
        id: u64,
        disk: String,
        pinned: Option<bool>,
        label: Option<String>,
    ) {
        let work = move |ctx: &Context, conn: &virt::connect::Connect, k: &VmKey| {
            let (_, disks) = jobs::history_disks(ctx, conn, &k.uri, &k.name, Some(&disk))?;
            let d = jobs::disk_with_revision(ctx, &k.name, &disks, id)?;
            crate::overlay::history::edit(&ctx.journal, &d, id, pinned, label.as_deref()).map_err(
                |e| OpError::NotWritable {
                    what: crate::overlay::history::Store::beside(&ctx.journal)
                        .path_for(&d.overlay)
                        .display()
                        .to_string(),
                    reason: e.to_string(),
                },
            )
        };
        self.on_vm(key, "editing the revision", work, |app, key, result| {
            if let Err(e) = &result {
                app.notify(crate::ui::notice::revision_not_changed(e));
            }
            app.reload_history(&key);
        });
    }

    /// The pipeline's context, knowing every connection the monitors hold.
    fn context(&self) -> Context {
        let mut ctx = self
            .imp()
            .context
            .borrow()
            .clone()
            .unwrap_or_else(|| Context::new(Default::default()));
        ctx.others = self
            .imp()
            .uris
            .borrow()
            .iter()
            .filter_map(|u| self.connection_for(u).map(|c| (u.clone(), c)))
            .collect();
        ctx
    }

    fn spawn_tray(&self) {
        let (tx, rx) = async_channel::unbounded();
        let tray = VmTray {
            state: self.imp().tray_state.borrow().clone(),
            tx,
        };
        glib::spawn_future_local(glib::clone!(
            #[weak(rename_to = app)]
            self,
            async move {
                use ksni::TrayMethods;
                match tray
                    .disable_dbus_name(autostart::in_flatpak())
                    .spawn()
                    .await
                {
                    Ok(handle) => {
                        app.imp().tray.replace(Some(handle));
                        hook::emit_global("tray-ready", serde_json::Value::Null);
                        app.refresh();
                    }
                    Err(e) => {
                        hook::emit_global("tray-unavailable", serde_json::json!(e.to_string()));
                        app.notify(crate::ui::notice::no_tray(&e.to_string()));
                    }
                }
            }
        ));
        // Menu clicks run on ksni's thread; they become this application's actions here.
        glib::spawn_future_local(glib::clone!(
            #[weak(rename_to = app)]
            self,
            async move {
                while let Ok(action) = rx.recv().await {
                    app.on_tray(action);
                }
            }
        ));
    }

    fn on_tray(&self, action: TrayAction) {
        match action {
            TrayAction::Commit(key) => self.activate_action("commit", Some(&key.target())),
            TrayAction::Discard(key) => self.activate_action("discard", Some(&key.target())),
            TrayAction::ShowStatus => self.activate_action("show-status", None),
            TrayAction::Adopt(key) => self.activate_action("adopt", Some(&key.target())),
            TrayAction::Release(key) => self.activate_action("release", Some(&key.target())),
            TrayAction::Quit => self.activate_action("quit", None),
            TrayAction::ToggleAutostart => self.toggle_autostart(),
            TrayAction::DemoPower(on) => self.demo_power(on),
        }
    }

    fn toggle_autostart(&self) {
        let enable = !self.imp().tray_state.borrow().autostart;
        let uris = self.imp().uris.borrow().clone();
        glib::spawn_future_local(glib::clone!(
            #[weak(rename_to = app)]
            self,
            async move {
                let now = match autostart::set(enable, &uris).await {
                    Ok(now) => now,
                    Err(e) => {
                        app.notify(crate::ui::notice::autostart_failed(&e));
                        autostart::enabled()
                    }
                };
                app.imp().tray_state.borrow_mut().autostart = now;
                app.push_tray();
            }
        ));
    }

    fn add_uris(&self, uris: Vec<String>) {
        let imp = self.imp();
        let new: Vec<String> = {
            let known = imp.uris.borrow();
            uris.into_iter().filter(|u| !known.contains(u)).collect()
        };
        if new.is_empty() {
            self.show_status();
            return;
        }
        let mut config = MonitorConfig::new(new.clone());
        // The test driver keeps its state per connection: the demo acts through this one.
        config.read_only = imp.demo.borrow().is_none();
        let monitor = Monitor::start(config);
        let rx = monitor.receiver();
        imp.uris.borrow_mut().extend(new);
        imp.monitors.borrow_mut().push(monitor);
        glib::spawn_future_local(glib::clone!(
            #[weak(rename_to = app)]
            self,
            async move {
                while let Ok(event) = rx.recv().await {
                    let events = app.imp().model.borrow_mut().apply(event);
                    for e in events {
                        app.input(Input::Monitor(e));
                    }
                }
            }
        ));
    }

    /// The monitor's live connection to `uri`, shared by the pipeline and the demo.
    fn connection_for(&self, uri: &str) -> Option<virt::connect::Connect> {
        self.imp()
            .monitors
            .borrow()
            .iter()
            .find_map(|m| m.connection(uri))
    }

    /// The demo guest shuts itself down a few seconds after it starts, like a short session.
    fn schedule_demo_shutdown(&self) {
        glib::timeout_add_seconds_local_once(
            8,
            glib::clone!(
                #[weak(rename_to = app)]
                self,
                move || app.demo_power(false)
            ),
        );
    }

    fn demo_power(&self, on: bool) {
        let Some(uri) = self.imp().demo.borrow().as_ref().map(|d| d.uri.clone()) else {
            return;
        };
        let Some(conn) = self.connection_for(&uri) else {
            let what = if on { "started" } else { "shut down" };
            log::warn!("demo guest: no connection to {uri} yet; it was not {what}");
            return;
        };
        let started = match self.imp().demo.borrow().as_ref() {
            Some(demo) => demo.power(&conn, on),
            None => return,
        };
        match started {
            Ok(true) if on => self.schedule_demo_shutdown(),
            Ok(_) => {}
            Err(e) => log::warn!("demo guest: {e}"),
        }
    }

    /// Feeds the state machine and carries out what it decides.
    fn input(&self, input: Input) {
        let effects = self.imp().machine.borrow_mut().handle(input);
        self.effects(effects);
    }

    fn effects(&self, effects: Vec<Effect>) {
        for e in effects {
            self.effect(e);
        }
        self.refresh();
    }

    fn effect(&self, effect: Effect) {
        let imp = self.imp();
        match effect {
            Effect::Inspect { key, reason } => self.inspect(key, reason),
            Effect::ShowPrompt { key, decision } => {
                let new = prompt::show(self.upcast_ref(), &key, &decision);
                // The borrow ends before the old prompt is closed.
                let old = imp.prompts.borrow_mut().insert(key, new);
                if let Some(old) = old {
                    old.close_quietly();
                }
            }
            Effect::ClosePrompt { key } => {
                let open = imp.prompts.borrow_mut().remove(&key);
                if let Some(p) = open {
                    p.close_quietly();
                    hook::emit("prompt-closed", &key, serde_json::Value::Null);
                }
            }
            Effect::StartJob { key, op } => self.start_job(key, op),
            Effect::StartChange {
                key,
                change,
                changes,
            } => self.start_change(key, change, changes),
            Effect::SavePolicy { key, policy } => {
                if let Err(e) = settings::save_policy(&key, policy) {
                    self.notify(crate::ui::notice::setting_not_saved(&e));
                }
            }
            Effect::Notify(notice) => self.notify(crate::ui::notice::of(&notice)),
            Effect::Withdraw { key } => {
                self.withdraw_notification(&crate::ui::notice::id(&key));
                hook::emit("notification-withdrawn", &key, serde_json::Value::Null);
            }
        }
    }

    fn inspect(&self, key: VmKey, reason: InspectReason) {
        let work = |ctx: &Context, conn: &virt::connect::Connect, k: &VmKey| {
            let a = jobs::assess(ctx, conn, &k.uri, &k.name);
            Ok(Inspection {
                changed: a.changed,
                blocked: a.blocked,
                discard_blocked: a.discard_blocked,
                adoptable: a.adoptable,
                undo: a.undo,
            })
        };
        self.on_vm(key, "inspecting the VM", work, move |app, key, found| {
            let found = found.unwrap_or_else(|e| Inspection {
                blocked: Some(e),
                ..Default::default()
            });
            app.input(Input::Inspected { key, reason, found });
        });
    }

    fn start_change(
        &self,
        key: VmKey,
        change: crate::overlay::disposable::Change,
        changes: Option<crate::overlay::OpKind>,
    ) {
        use crate::overlay::disposable::Change;
        let work = move |ctx: &Context, conn: &virt::connect::Connect, k: &VmKey| match change {
            Change::Adopt => jobs::plan_adopt(ctx, conn, &k.uri, &k.name, None)
                .and_then(|plan| jobs::adopt(&plan, ctx)),
            Change::Release => jobs::plan_release(ctx, conn, &k.uri, &k.name, None, changes)
                .and_then(|plan| jobs::release(plan, ctx))
                .map(|_| ()),
        };
        self.on_vm(key, "the change", work, move |app, key, result| {
            hook::emit(
                "change-done",
                &key,
                serde_json::json!({"change": change.word(), "ok": result.is_ok(),
                    "result": result.as_ref().err().map(|e| e.to_string())}),
            );
            app.input(Input::ChangeDone {
                key,
                change,
                result,
            });
        });
    }

    fn start_job(&self, key: VmKey, op: crate::overlay::OpKind) {
        let (ctx, conn) = (self.context(), self.connection_for(&key.uri));
        glib::spawn_future_local(glib::clone!(
            #[weak(rename_to = app)]
            self,
            async move {
                let (k, plan_ctx) = (key.clone(), ctx.clone());
                let plan = gio::spawn_blocking(move || {
                    let conn = connection(conn, &k.uri)?;
                    jobs::plan(
                        &plan_ctx,
                        &conn,
                        &k.uri,
                        &k.name,
                        op,
                        None,
                        jobs::Firmware::FollowDisk,
                    )
                })
                .await
                .unwrap_or_else(|_| {
                    Err(crate::overlay::OpError::NotFound {
                        what: "planning the operation panicked".into(),
                    })
                });
                let result = match plan {
                    Err(e) => Err(e),
                    Ok(plan) => {
                        let events = jobs::spawn(plan, &ctx);
                        let mut result = None;
                        while let Ok(ev) = events.recv().await {
                            match ev {
                                Event::Progress {
                                    progress: Progress::Committing(f),
                                    ..
                                } => app.input(Input::JobProgress {
                                    key: key.clone(),
                                    progress: f,
                                }),
                                Event::Progress { .. } => {}
                                Event::Done(r) => result = Some(r),
                            }
                        }
                        result.unwrap_or_else(|| {
                            Err(crate::overlay::OpError::NotFound {
                                what: "the operation's worker stopped unexpectedly".into(),
                            })
                        })
                    }
                };
                let undo = result.as_ref().is_ok_and(|done| done.undo);
                let result = result.map(|done| done.changed_bytes());
                hook::emit(
                    "job-done",
                    &key,
                    serde_json::json!({
                        "op": op.word(),
                        "ok": result.is_ok(),
                        "result": match &result {
                            Ok(n) => format!("{n}"),
                            Err(e) => e.to_string(),
                        },
                        "exit_code": result.as_ref().err().map(|e| e.exit_code()),
                        "undo": undo,
                    }),
                );
                app.input(Input::JobDone {
                    key,
                    op,
                    result,
                    undo,
                });
            }
        ));
    }

    /// Sends a notification (one per subject: a newer one about the same VM replaces it).
    fn notify(&self, n: crate::ui::notice::Notification) {
        if n.error {
            log::error!("{}: {}", n.title, n.body);
        }
        let note = gio::Notification::new(&n.title);
        note.set_body(Some(&n.body));
        note.set_default_action("app.show-status");
        if n.error {
            note.set_priority(gio::NotificationPriority::High);
        }
        for b in &n.buttons {
            note.add_button_with_target_value(&b.label, b.action, Some(&b.vm.target()));
        }
        self.send_notification(n.id.as_deref(), &note);
    }

    fn show_status(&self) {
        let existing = self.imp().status.borrow().clone();
        let window = match existing {
            Some(w) => w,
            None => {
                let w = status::StatusWindow::new(self.upcast_ref());
                self.imp().status.replace(Some(w.clone()));
                self.refresh();
                w
            }
        };
        window.present();
    }

    /// Renders the machine's state into the tray and the status window.
    fn refresh(&self) {
        let imp = self.imp();
        let (rows, summary, tooltip, demo_running) = {
            let machine = imp.machine.borrow();
            let rows: Vec<status::Row> = machine
                .vms
                .iter()
                .map(|(k, vm)| status::Row::of(k, vm))
                .collect();
            let count = |f: &dyn Fn(&crate::machine::Vm) -> bool| {
                machine.vms.values().filter(|v| f(v)).count().to_string()
            };
            let mut tip = tr_f("{count} running", &[("count", &count(&|v| v.active))]);
            let pending = count(&|v| v.decision.is_some());
            if pending != "0" {
                tip.push_str(&tr_f(
                    ", {count} waiting for a decision",
                    &[("count", &pending)],
                ));
            }
            let busy = count(&|v| v.job.is_some());
            if busy != "0" {
                tip.push_str(&tr_f(", {count} busy", &[("count", &busy)]));
            }
            if machine.connected.values().any(|c| !c) {
                tip.push_str(&tr(" (reconnecting to libvirt)"));
            }
            // A running job's progress, where the user looks: one line per VM, as its row.
            for r in rows.iter().filter(|r| r.progress.is_some()) {
                tip.push_str(&format!("\n{} — {}", r.key.name, r.subtitle));
            }
            let demo_running = imp.demo.borrow().as_ref().map(|_| {
                machine
                    .vms
                    .iter()
                    .any(|(k, vm)| k.name == crate::demo::DOMAIN && vm.active)
            });
            (rows, machine.summary(), tip, demo_running)
        };
        let window = imp.status.borrow().clone();
        if let Some(w) = window {
            w.update(&rows);
        }
        {
            let mut st = imp.tray_state.borrow_mut();
            st.demo = demo_running;
            st.summary = summary;
            st.tooltip = tooltip;
            st.vms = rows
                .iter()
                .map(|r| TrayVm {
                    key: r.key.clone(),
                    label: format!("{} — {}", r.key.name, r.subtitle),
                    can_act: r.can_act,
                    can_discard: r.can_discard,
                    can_adopt: r.can_adopt,
                    can_release: r.can_release,
                })
                .collect();
        }
        self.push_tray();
    }

    /// Sends the tray state to ksni, only when it changed.
    fn push_tray(&self) {
        let Some(handle) = self.imp().tray.borrow().clone() else {
            return;
        };
        let new = self.imp().tray_state.borrow().clone();
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
}
