//! The questions before a VM is made disposable or ordinary again. Each explains in one
//! sentence what will happen; its answer is an application action (`app.make-disposable`,
//! `app.stop-disposable`) with the VM as target.

use adw::prelude::*;
use gtk::glib;

use crate::hook;
use crate::i18n::{tr, tr_f};
use crate::machine::VmKey;
use crate::units::human_bytes;

fn dialog(app: &adw::Application, heading: &str, body: &str) -> adw::MessageDialog {
    let dialog = adw::MessageDialog::builder()
        .heading(heading)
        .body(body)
        .title(heading)
        .modal(false)
        .application(app)
        .build();
    super::destroy_after_hiding(&dialog);
    dialog
}

fn answer(dialog: &adw::MessageDialog, app: &adw::Application, key: &VmKey, action: &str) {
    let (app, k, action) = (app.downgrade(), key.clone(), action.to_string());
    let mapped = action.clone();
    dialog.connect_response(None, move |_, response| {
        let key = &k;
        hook::emit("confirm-response", key, serde_json::json!(response));
        let Some(app) = app.upgrade() else { return };
        let target = match (action.as_str(), response) {
            ("make-disposable", "adopt") => key.target(),
            ("stop-disposable", "commit" | "discard" | "release") => {
                (key.uri.as_str(), key.name.as_str(), response).to_variant()
            }
            _ => return,
        };
        app.activate_action(&action, Some(&target));
    });
    let key = key.clone();
    dialog.connect_map(move |_| hook::emit("confirm-mapped", &key, serde_json::json!(mapped)));
}

/// "Make disposable…": what adopting does, then Cancel or Make Disposable.
pub fn adopt(app: &adw::Application, key: &VmKey) {
    let d = dialog(
        app,
        &tr_f("Make {vm} disposable?", &[("vm", &key.name)]),
        &tr("Its disks keep everything they hold as their base, a new overlay beside each takes the changes of every session, and when it shuts down you are asked whether to commit or discard them."),
    );
    d.add_responses(&[
        ("cancel", &tr("_Cancel")),
        ("adopt", &tr("_Make Disposable")),
    ]);
    d.set_response_appearance("adopt", adw::ResponseAppearance::Suggested);
    d.set_default_response(Some("adopt"));
    d.set_close_response("cancel");
    answer(&d, app, key, "make-disposable");
    d.present();
}

/// "Stop being disposable…": what happens to pending changes first, then the release.
pub fn release(app: &adw::Application, key: &VmKey, changed: u64) {
    let heading = tr_f("Stop making {vm} disposable?", &[("vm", &key.name)]);
    let history = tr("Its history (the earlier states kept for Undo and Roll Back) is deleted.");
    let d = if changed > 0 {
        let d = dialog(
            app,
            &heading,
            &format!(
                "{} {history}",
                tr_f(
                    "It has {size} of changes that are neither committed nor discarded. Afterwards its disks use their base images directly, and their overlays are removed.",
                    &[("size", &human_bytes(changed))],
                )
            ),
        );
        d.add_responses(&[
            ("cancel", &tr("_Cancel")),
            ("discard", &tr("_Discard and Stop")),
            ("commit", &tr("C_ommit and Stop")),
        ]);
        d.set_response_appearance("discard", adw::ResponseAppearance::Destructive);
        d
    } else {
        let d = dialog(
            app,
            &heading,
            &format!(
                "{} {history}",
                tr("Its disks will use their base images directly, and their empty overlays are removed.")
            ),
        );
        d.add_responses(&[
            ("cancel", &tr("_Cancel")),
            ("release", &tr("_Stop Being Disposable")),
        ]);
        d
    };
    d.set_default_response(Some("cancel"));
    d.set_close_response("cancel");
    answer(&d, app, key, "stop-disposable");
    d.present();
}

/// Emits the `confirm-*` hooks of `dialog` about `key`, and on `yes` activates `action` with
/// `target`.
fn answer_with(
    dialog: &adw::MessageDialog,
    app: &adw::Application,
    key: &VmKey,
    yes: &'static str,
    action: &'static str,
    target: impl Fn(&adw::MessageDialog) -> Option<glib::Variant> + 'static,
) {
    let (app, k) = (app.downgrade(), key.clone());
    dialog.connect_response(None, move |d, response| {
        hook::emit("confirm-response", &k, serde_json::json!(response));
        if let (Some(app), true) = (app.upgrade(), response == yes) {
            if let Some(t) = target(d) {
                app.activate_action(action, Some(&t));
            }
        }
    });
    let key = key.clone();
    dialog.connect_map(move |_| hook::emit("confirm-mapped", &key, serde_json::json!(action)));
}

/// "Roll Back…": what a rollback does, then Cancel or Roll Back (`app.rollback-now`).
pub fn rollback(app: &adw::Application, key: &VmKey, id: u64, disk: &str) {
    let d = dialog(
        app,
        &tr_f(
            "Roll {vm} back to revision {revision}?",
            &[("vm", &key.name), ("revision", &id.to_string())],
        ),
        &tr_f(
            "Its disk {disk} (base image and overlay) returns to exactly what it held then. What it holds now is kept as a new revision, so this can be undone.",
            &[("disk", disk)],
        ),
    );
    d.add_responses(&[("cancel", &tr("_Cancel")), ("rollback", &tr("_Roll Back"))]);
    d.set_response_appearance("rollback", adw::ResponseAppearance::Suggested);
    d.set_default_response(Some("cancel"));
    d.set_close_response("cancel");
    let target = super::history::target(key, id, disk);
    answer_with(&d, app, key, "rollback", "rollback-now", move |_| {
        Some(target.clone())
    });
    d.present();
}

/// "Label…": the revision's label in an entry, then Cancel or Save (`app.set-label`; an empty
/// label removes it).
pub fn label(app: &adw::Application, key: &VmKey, id: u64, disk: &str, current: &str) {
    let d = dialog(
        app,
        &tr_f("Label revision {revision}", &[("revision", &id.to_string())]),
        &tr("A few words to find it again by; a labelled revision is not kept any longer than others unless it is pinned."),
    );
    let entry = gtk::Entry::builder()
        .text(current)
        .activates_default(true)
        .build();
    d.set_extra_child(Some(&entry));
    d.add_responses(&[("cancel", &tr("_Cancel")), ("save", &tr("_Save"))]);
    d.set_response_appearance("save", adw::ResponseAppearance::Suggested);
    d.set_default_response(Some("save"));
    d.set_close_response("cancel");
    let (uri, name, disk) = (key.uri.clone(), key.name.clone(), disk.to_string());
    answer_with(&d, app, key, "save", "set-label", move |_| {
        Some(
            (
                uri.as_str(),
                name.as_str(),
                id,
                disk.as_str(),
                entry.text().as_str(),
            )
                .to_variant(),
        )
    });
    d.present();
}
