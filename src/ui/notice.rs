//! The sentences of notifications: chosen here, at the edge, from typed notices and errors.
//! One translatable sentence per operation and outcome; named placeholders only.

use crate::i18n::{tr, tr_f};
use crate::machine::{Notice, VmKey};
use crate::overlay::disposable::Change;
use crate::overlay::{OpError, OpKind, Outcome};
use crate::units::human_bytes;

/// A notification ready to send. `id` keeps one notification per subject (a VM).
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub id: Option<String>,
    pub title: String,
    pub body: String,
    pub error: bool,
    pub buttons: Vec<Button>,
}

/// A notification's button: the application's action it activates, with the VM as target.
#[derive(Debug, Clone, PartialEq)]
pub struct Button {
    pub label: String,
    /// `app.commit`, `app.discard`, `app.later` or `app.undo`.
    pub action: &'static str,
    pub vm: VmKey,
}

/// The ID of a VM's notification: one per VM, replaced as its state changes.
pub fn id(vm: &VmKey) -> String {
    format!("vm:{}:{}", vm.uri, vm.name)
}

fn about(vm: &VmKey) -> Option<String> {
    Some(id(vm))
}

impl Notice {
    /// The one-line result shown in the status window ("Last: …").
    pub fn summary(&self) -> String {
        of(self).body
    }
}

/// The notification for a notice of the state machine.
pub fn of(notice: &Notice) -> Notification {
    match notice {
        Notice::Done {
            key,
            op,
            changed,
            undo,
        } => {
            let size = human_bytes(*changed);
            let (title, body) = match op {
                OpKind::Commit => (
                    tr_f("{vm}: changes committed", &[("vm", &key.name)]),
                    tr_f("Committed {size} into the base image.", &[("size", &size)]),
                ),
                OpKind::Discard => (
                    tr_f("{vm}: changes discarded", &[("vm", &key.name)]),
                    tr_f(
                        "Discarded {size}; the base image is untouched.",
                        &[("size", &size)],
                    ),
                ),
            };
            // For as long as it is possible: the notification is replaced or withdrawn when
            // the VM's state changes, and the action checks again.
            let buttons = if *undo {
                vec![Button {
                    label: tr("Undo"),
                    action: "app.undo",
                    vm: key.clone(),
                }]
            } else {
                Vec::new()
            };
            Notification {
                id: about(key),
                title,
                body,
                error: false,
                buttons,
            }
        }
        Notice::Failed { key, op, error } => Notification {
            id: about(key),
            title: match op {
                OpKind::Commit => tr_f("{vm}: commit failed", &[("vm", &key.name)]),
                OpKind::Discard => tr_f("{vm}: discard failed", &[("vm", &key.name)]),
            },
            body: error.to_string(),
            error: true,
            buttons: Vec::new(),
        },
        Notice::Changed {
            key,
            change,
            result,
        } => {
            let name = key.name.as_str();
            let (title, body, error) = match (change, result) {
                (Change::Adopt, Ok(())) => (
                    tr_f("{vm} is disposable", &[("vm", name)]),
                    tr("From now on you are asked after each session whether to commit or discard its changes."),
                    false,
                ),
                (Change::Release, Ok(())) => (
                    tr_f("{vm} is no longer disposable", &[("vm", name)]),
                    tr("Its disks use their base images directly."),
                    false,
                ),
                (Change::Adopt, Err(e)) => (
                    tr_f("{vm} could not be made disposable", &[("vm", name)]),
                    e.to_string(),
                    true,
                ),
                (Change::Release, Err(e)) => (
                    tr_f("{vm} could not stop being disposable", &[("vm", name)]),
                    e.to_string(),
                    true,
                ),
            };
            Notification {
                id: about(key),
                title,
                body,
                error,
                buttons: Vec::new(),
            }
        }
        Notice::Blocked { key, error } => Notification {
            id: about(key),
            title: tr_f(
                "{vm}: its changes cannot be committed or discarded now",
                &[("vm", &key.name)],
            ),
            body: error.to_string(),
            error: false,
            buttons: Vec::new(),
        },
        Notice::Pending { key, decision } => {
            let button = |label: String, action| Button {
                label,
                action,
                vm: key.clone(),
            };
            let mut buttons = vec![button(tr("Commit"), "app.commit")];
            if decision.no_discard.is_none() {
                buttons.push(button(tr("Discard"), "app.discard"));
            }
            buttons.push(button(tr("Later"), "app.later"));
            let mut body = crate::ui::prompt::body(decision);
            if let Some(why) = &decision.no_discard {
                body = format!("{body}\n\n{why}");
            }
            Notification {
                id: about(key),
                title: tr_f(
                    "{vm} is waiting for a decision about its changes",
                    &[("vm", &key.name)],
                ),
                body,
                error: false,
                buttons,
            }
        }
    }
}

/// An interrupted operation finished (or still pending) at start.
pub fn recovered(vm: &VmKey, op: OpKind, result: &Result<Outcome, OpError>) -> Notification {
    let name = vm.name.as_str();
    let (body, error) = match (op, result) {
        (OpKind::Commit, Ok(o)) => (
            tr_f(
                "Finished the interrupted commit of {vm} ({disk}).",
                &[("vm", name), ("disk", &o.target)],
            ),
            false,
        ),
        (OpKind::Discard, Ok(o)) => (
            tr_f(
                "Finished the interrupted discard of {vm} ({disk}).",
                &[("vm", name), ("disk", &o.target)],
            ),
            false,
        ),
        (OpKind::Commit, Err(e)) => (
            tr_f(
                "The interrupted commit of {vm} is still pending: {error}",
                &[("vm", name), ("error", &e.to_string())],
            ),
            true,
        ),
        (OpKind::Discard, Err(e)) => (
            tr_f(
                "The interrupted discard of {vm} is still pending: {error}",
                &[("vm", name), ("error", &e.to_string())],
            ),
            true,
        ),
    };
    Notification {
        id: about(vm),
        title: "VM Overlay".into(),
        body,
        error,
        buttons: Vec::new(),
    }
}

/// The result of an undo or a rollback: each disk's revision, and the revision that keeps
/// the state left.
pub fn rolled_back(vm: &VmKey, result: &Result<Vec<crate::jobs::Undone>, OpError>) -> Notification {
    match result {
        Ok(undone) => Notification {
            id: about(vm),
            title: tr_f("{vm}: rolled back", &[("vm", &vm.name)]),
            body: undone
                .iter()
                .map(|u| {
                    tr_f(
                        "{disk} is back at revision {revision}; what it held is kept as revision {left}.",
                        &[
                            ("disk", &u.disk),
                            ("revision", &u.revision.to_string()),
                            ("left", &u.left.to_string()),
                        ],
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
            error: false,
            buttons: Vec::new(),
        },
        Err(e) => Notification {
            id: about(vm),
            title: tr_f("{vm}: rollback failed", &[("vm", &vm.name)]),
            body: e.to_string(),
            error: true,
            buttons: Vec::new(),
        },
    }
}

/// A pin or a label could not be saved.
pub fn revision_not_changed(error: &OpError) -> Notification {
    Notification {
        id: Some("revision".into()),
        title: tr("The revision was not changed"),
        body: error.to_string(),
        error: true,
        buttons: Vec::new(),
    }
}

pub fn no_tray(error: &str) -> Notification {
    let body = tr_f(
        "No system tray is available ({error}). VM Overlay keeps running and still asks when a VM shuts down. On GNOME, install the \"AppIndicator and KStatusNotifierItem Support\" extension to get its tray icon.",
        &[("error", error)],
    );
    log::warn!("{body}");
    Notification {
        id: Some("tray".into()),
        title: tr("No system tray"),
        body,
        error: false,
        buttons: Vec::new(),
    }
}

pub fn autostart_failed(error: &impl std::fmt::Display) -> Notification {
    Notification {
        id: Some("autostart".into()),
        title: tr("Could not change start at login"),
        body: error.to_string(),
        error: true,
        buttons: Vec::new(),
    }
}

pub fn setting_not_saved(error: &impl std::fmt::Display) -> Notification {
    Notification {
        id: Some("settings".into()),
        title: tr("Could not save the setting"),
        body: error.to_string(),
        error: true,
        buttons: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::Decision;

    fn pending(no_discard: Option<&str>) -> Notification {
        of(&Notice::Pending {
            key: VmKey::new("qemu:///system", "web"),
            decision: Decision {
                changed: 3 << 20,
                forced: None,
                no_discard: no_discard.map(str::to_string),
            },
        })
    }

    #[test]
    fn a_pending_decision_is_asked_with_the_vms_own_actions() {
        let n = pending(None);
        assert_eq!(n.id.as_deref(), Some("vm:qemu:///system:web"));
        let actions: Vec<_> = n.buttons.iter().map(|b| b.action).collect();
        assert_eq!(actions, ["app.commit", "app.discard", "app.later"]);
        assert!(n
            .buttons
            .iter()
            .all(|b| b.vm == VmKey::new("qemu:///system", "web")));
        assert!(n.body.contains("3.0 MiB"), "{}", n.body);
        // Discard is not offered when it would be refused; the body says why.
        let n = pending(Some("the firmware cannot follow"));
        let actions: Vec<_> = n.buttons.iter().map(|b| b.action).collect();
        assert_eq!(actions, ["app.commit", "app.later"]);
        assert!(n.body.ends_with("the firmware cannot follow"), "{}", n.body);
    }
}
