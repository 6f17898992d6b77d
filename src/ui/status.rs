//! The status window: every VM, its state, its changes, its pending decision and last result,
//! with the same Commit / Discard actions as the tray (`app.commit` / `app.discard`, the VM
//! as target). Its layout is `status.ui`; each VM is a [`VmRow`] that [`StatusWindow::update`]
//! adds, removes or changes in place, never rebuilds.

use std::cell::RefCell;
use std::collections::BTreeMap;

use adw::subclass::prelude::*;
use gtk::{gio, glib};

use super::vm_row::VmRow;
use crate::hook;
use crate::i18n::{tr, tr_f};
use crate::machine::{Vm, VmKey};
use crate::units::human_bytes;

/// What the status window and the tray show for one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: VmKey,
    pub subtitle: String,
    pub progress: Option<f64>,
    pub can_act: bool,
    /// Discard is offered (not when the firmware variables could not follow the disk).
    pub can_discard: bool,
    /// "Make disposable…" is offered (a VM that is not disposable yet, and could be).
    pub can_adopt: bool,
    /// "Stop being disposable…" is offered.
    pub can_release: bool,
    /// "Undo" is offered: the last commit, discard or rollback can be undone.
    pub can_undo: bool,
    /// "History…" is offered (a disposable VM).
    pub has_history: bool,
    /// The last operation's result (status window only; the tray keeps labels short).
    pub last: Option<String>,
    /// Why Commit and Discard are not offered (see [`Vm::blocked`]); `can_act` is then false.
    pub blocked: Option<String>,
}

impl Row {
    pub fn of(key: &VmKey, vm: &Vm) -> Row {
        let mut parts = Vec::new();
        if let Some(job) = &vm.job {
            let pct = format!("{:.0}", job.progress * 100.0);
            parts.push(match job.op {
                crate::overlay::OpKind::Commit => {
                    tr_f("committing {percent}%", &[("percent", &pct)])
                }
                crate::overlay::OpKind::Discard => {
                    tr_f("discarding {percent}%", &[("percent", &pct)])
                }
            });
        } else if vm.engine_run.is_some() {
            parts.push(tr("being worked on by VM Overlay"));
        } else if vm.active {
            parts.push(tr("running"));
        } else {
            parts.push(tr("shut off"));
        }
        match vm.changed {
            Some(0) => parts.push(tr("no changes")),
            Some(n) => parts.push(tr_f("{size} changed", &[("size", &human_bytes(n))])),
            None => {}
        }
        if let Some(d) = &vm.decision {
            parts.push(match &d.forced {
                Some(why) => tr_f("decision pending ({why})", &[("why", why)]),
                None => tr("decision pending"),
            });
        }
        if let Some(why) = &vm.keep_overlay {
            parts.push(tr_f("overlay kept: {why}", &[("why", why)]));
        }
        if let Some(why) = &vm.discard_blocked {
            parts.push(tr_f("no discard: {why}", &[("why", why)]));
        }
        let can_act = !vm.active
            && vm.job.is_none()
            && vm.engine_run.is_none()
            && vm.changed.is_some_and(|n| n > 0)
            && vm.keep_overlay.is_none()
            && vm.blocked.is_none();
        let idle =
            !vm.active && vm.job.is_none() && vm.changing.is_none() && vm.engine_run.is_none();
        Row {
            can_adopt: idle && vm.adoptable,
            can_release: idle && vm.changed.is_some() && vm.blocked.is_none(),
            can_undo: idle && vm.undo,
            has_history: vm.changed.is_some(),
            key: key.clone(),
            subtitle: parts.join(", "),
            progress: vm.job.as_ref().map(|j| j.progress),
            last: vm.last_result.as_ref().map(|n| n.summary()),
            blocked: vm.blocked.clone(),
            can_act,
            can_discard: can_act && vm.discard_blocked.is_none(),
        }
    }
}

mod imp {
    use super::*;

    #[derive(Debug, Default, gtk::CompositeTemplate)]
    #[template(resource = "/io/github/vmoverlay/VMOverlay/ui/status.ui")]
    pub struct StatusWindow {
        #[template_child]
        pub list: TemplateChild<gtk::ListBox>,
        /// The rows in the list, in the list's order.
        pub rows: RefCell<BTreeMap<VmKey, VmRow>>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for StatusWindow {
        const NAME: &str = "VmoStatusWindow";
        type Type = super::StatusWindow;
        type ParentType = adw::ApplicationWindow;

        fn class_init(klass: &mut Self::Class) {
            klass.bind_template();
        }

        fn instance_init(obj: &glib::subclass::InitializingObject<Self>) {
            obj.init_template();
        }
    }

    impl ObjectImpl for StatusWindow {}
    impl WidgetImpl for StatusWindow {}
    impl WindowImpl for StatusWindow {}
    impl ApplicationWindowImpl for StatusWindow {}
    impl AdwApplicationWindowImpl for StatusWindow {}
}

glib::wrapper! {
    pub struct StatusWindow(ObjectSubclass<imp::StatusWindow>)
        @extends adw::ApplicationWindow, gtk::ApplicationWindow, gtk::Window, gtk::Widget,
        @implements gio::ActionGroup, gio::ActionMap, gtk::Buildable,
            gtk::ConstraintTarget, gtk::Native, gtk::Root, gtk::ShortcutManager;
}

impl StatusWindow {
    /// The window (hidden on close, so it can be presented again), empty until `update`.
    pub fn new(app: &adw::Application) -> StatusWindow {
        super::register_resources();
        glib::Object::builder().property("application", app).build()
    }

    /// Shows `rows`: adds a row for each new VM, removes the rows of VMs that are gone and
    /// changes the others in place (nothing at all when they show the same). The list is kept
    /// in `VmKey` order.
    pub fn update(&self, rows: &[Row]) {
        let imp = self.imp();
        let wanted: BTreeMap<&VmKey, &Row> = rows.iter().map(|r| (&r.key, r)).collect();
        let mut shown = imp.rows.borrow_mut();
        shown.retain(|key, widget| {
            let keep = wanted.contains_key(key);
            if !keep {
                imp.list.remove(widget);
                hook::emit("status-row-removed", key, serde_json::Value::Null);
            }
            keep
        });
        for (key, row) in wanted {
            let widget = match shown.get(key) {
                Some(w) => w.clone(),
                None => {
                    let w = VmRow::new(key);
                    let position = shown.range(..key).count();
                    imp.list
                        .insert(&w, i32::try_from(position).unwrap_or(i32::MAX));
                    shown.insert(key.clone(), w.clone());
                    hook::emit("status-row-added", key, serde_json::Value::Null);
                    w
                }
            };
            widget.show(row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Job;
    use crate::overlay::OpKind;

    fn key() -> VmKey {
        VmKey::new("qemu:///system", "tiny")
    }

    fn shut_off_with_changes() -> Vm {
        Vm {
            changed: Some(4096),
            ..Default::default()
        }
    }

    #[test]
    fn a_shut_off_vm_with_changes_can_act() {
        let r = Row::of(&key(), &shut_off_with_changes());
        assert!(r.can_act);
        assert_eq!(r.blocked, None);
        assert_eq!(r.progress, None);
        assert!(r.subtitle.starts_with("shut off, "), "{}", r.subtitle);
    }

    #[test]
    fn a_blocked_vm_cannot_act_and_says_why() {
        let why = "its overlay is also the base of another domain".to_string();
        let vm = Vm {
            blocked: Some(why.clone()),
            ..shut_off_with_changes()
        };
        let r = Row::of(&key(), &vm);
        assert!(!r.can_act);
        assert_eq!(r.blocked.as_deref(), Some(why.as_str()));
        let shown = super::super::vm_row::subtitle(&r);
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines[0], r.subtitle);
        assert_eq!(lines[1], format!("Not offered: {why}"));
        assert_eq!(*lines.last().unwrap(), "qemu:///system");
    }

    #[test]
    fn a_job_shows_progress_and_cannot_act() {
        let vm = Vm {
            job: Some(Job {
                op: OpKind::Commit,
                progress: 0.25,
            }),
            ..shut_off_with_changes()
        };
        let r = Row::of(&key(), &vm);
        assert!(!r.can_act);
        assert_eq!(r.progress, Some(0.25));
        assert!(r.subtitle.starts_with("committing 25%"), "{}", r.subtitle);
    }

    #[test]
    fn the_subtitle_lists_state_last_result_and_connection() {
        let vm = Vm {
            last_result: Some(crate::machine::Notice::Done {
                key: key(),
                op: crate::overlay::OpKind::Commit,
                changed: 4096,
                undo: false,
            }),
            ..shut_off_with_changes()
        };
        let r = Row::of(&key(), &vm);
        let shown = super::super::vm_row::subtitle(&r);
        assert_eq!(
            shown,
            format!(
                "{}\nLast: Committed 4.0 KiB into the base image.\nqemu:///system",
                r.subtitle
            )
        );
    }
}
