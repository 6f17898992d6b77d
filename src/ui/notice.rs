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
}

fn about(vm: &VmKey) -> Option<String> {
    Some(format!("vm:{}:{}", vm.uri, vm.name))
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
        Notice::Done { key, op, changed } => {
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
            Notification {
                id: about(key),
                title,
                body,
                error: false,
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
        },
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
    }
}

pub fn autostart_failed(error: &impl std::fmt::Display) -> Notification {
    Notification {
        id: Some("autostart".into()),
        title: tr("Could not change start at login"),
        body: error.to_string(),
        error: true,
    }
}

pub fn setting_not_saved(error: &impl std::fmt::Display) -> Notification {
    Notification {
        id: Some("settings".into()),
        title: tr("Could not save the setting"),
        body: error.to_string(),
        error: true,
    }
}
