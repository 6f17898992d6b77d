//! The questions before a VM is made disposable or ordinary again. Each explains in one
//! sentence what will happen; its answer is an application action (`app.make-disposable`,
//! `app.stop-disposable`) with the VM as target.

use adw::prelude::*;

use crate::hook;
use crate::i18n::{tr, tr_f};
use crate::machine::VmKey;
use crate::units::human_bytes;

fn dialog(app: &adw::Application, heading: &str, body: &str) -> adw::MessageDialog {
    adw::MessageDialog::builder()
        .heading(heading)
        .body(body)
        .title(heading)
        .modal(false)
        .application(app)
        .build()
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
    let d = if changed > 0 {
        let d = dialog(
            app,
            &heading,
            &tr_f(
                "It has {size} of changes that are neither committed nor discarded. Afterwards its disks use their base images directly, and their overlays are removed.",
                &[("size", &human_bytes(changed))],
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
            &tr("Its disks will use their base images directly, and their empty overlays are removed."),
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
