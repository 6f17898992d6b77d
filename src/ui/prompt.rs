//! The question asked the moment a VM shuts down: Commit, Discard or Later.

use std::rc::Rc;

use adw::prelude::*;

use super::{test_hook, Controller};
use crate::machine::{Choice, Decision, VmKey};
use crate::i18n::{tr, tr_f};
use crate::units::human_bytes;

pub fn heading(key: &VmKey, decision: &Decision) -> String {
    match decision.forced {
        None => tr_f("{vm} has shut down", &[("vm", &key.name)]),
        Some(_) => tr_f("{vm} was forced off", &[("vm", &key.name)]),
    }
}

pub fn body(decision: &Decision) -> String {
    let wrote = human_bytes(decision.changed);
    match &decision.forced {
        None => tr_f(
            "It wrote {size} to its overlay. Commit these changes into the base image, or discard them?",
            &[("size", &wrote)],
        ),
        Some(why) => tr_f(
            "It did not shut down cleanly ({why}), so its disk may be inconsistent. It wrote {size} to its overlay. Discarding the changes is suggested.",
            &[("why", why), ("size", &wrote)],
        ),
    }
}

pub fn show(ctl: &Rc<Controller>, key: &VmKey, decision: &Decision) -> adw::MessageDialog {
    let heading = heading(key, decision);
    let dialog = adw::MessageDialog::builder()
        .heading(&heading)
        .body(body(decision))
        .title(&heading)
        .modal(false)
        .application(ctl.app())
        .build();
    // No transient parent: this is a windowless app, and a dialog made transient for a hidden
    // window is kept off screen by window managers (seen with openbox). libadwaita only logs
    // that this is "discouraged".
    let (discard, later, commit) = (tr("_Discard"), tr("_Later"), tr("_Commit"));
    dialog.add_responses(&[
        ("discard", &discard),
        ("later", &later),
        ("commit", &commit),
    ]);
    if decision.forced.is_some() {
        dialog.set_response_appearance("discard", adw::ResponseAppearance::Suggested);
        dialog.set_default_response(Some("discard"));
    } else {
        dialog.set_response_appearance("discard", adw::ResponseAppearance::Destructive);
        dialog.set_response_appearance("commit", adw::ResponseAppearance::Suggested);
        dialog.set_default_response(Some("commit"));
    }
    dialog.set_close_response("later");
    let remember = gtk::CheckButton::with_label(&tr("Remember for this VM"));
    dialog.set_extra_child(Some(&remember));

    let (c, k) = (Rc::downgrade(ctl), key.clone());
    dialog.connect_response(None, move |_, response| {
        let choice = match response {
            "commit" => Choice::Commit,
            "discard" => Choice::Discard,
            _ => Choice::Later,
        };
        test_hook("prompt-response", &k, serde_json::json!(response));
        if let Some(c) = c.upgrade() {
            c.choose(k.clone(), choice, remember.is_active());
        }
    });
    let (k, forced) = (key.clone(), decision.forced.clone());
    dialog.connect_map(move |d| {
        // Nothing focused: Enter answers with the default response instead of toggling
        // "Remember" (which Tab still reaches).
        GtkWindowExt::set_focus(d, None::<&gtk::Widget>);
        test_hook("prompt-mapped", &k, serde_json::json!({"forced": forced}));
    });
    dialog.present();
    dialog
}
