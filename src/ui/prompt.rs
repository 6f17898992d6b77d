//! The question asked the moment a VM shuts down: Commit, Discard or Later. Its answers are
//! the application's actions (`app.commit`, `app.discard`, `app.later`, and
//! `app.set-policy` when "Remember" is ticked), as the tray's and the status window's are.

use adw::prelude::*;
use gtk::glib;

use crate::hook;
use crate::i18n::{tr, tr_f};
use crate::machine::{Decision, Policy, VmKey};
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

/// An open prompt. Closed by the user, it answers; closed from code (the VM started again,
/// a choice came from the tray), it answers nothing.
pub struct Prompt {
    dialog: adw::MessageDialog,
    response: Option<glib::SignalHandlerId>,
}

impl Prompt {
    /// Closes the dialog without answering: its response handler is disconnected first, so
    /// its close response ("later") is never sent.
    pub fn close_quietly(mut self) {
        if let Some(id) = self.response.take() {
            self.dialog.disconnect(id);
        }
        self.dialog.close();
    }
}

pub fn show(app: &adw::Application, key: &VmKey, decision: &Decision) -> Prompt {
    let heading = heading(key, decision);
    let dialog = adw::MessageDialog::builder()
        .heading(&heading)
        .body(body(decision))
        .title(&heading)
        .modal(false)
        .application(app)
        .build();
    super::destroy_after_hiding(&dialog);
    // No transient parent: this is a windowless app, and a dialog made transient for a hidden
    // window is kept off screen by window managers (seen with openbox). libadwaita only logs
    // that this is "discouraged".
    let (discard, later, commit) = (tr("_Discard"), tr("_Later"), tr("_Commit"));
    match (&decision.no_discard, &decision.forced) {
        (Some(why), _) => {
            // What would be refused is not offered; the body says why.
            dialog.set_body(&format!("{}\n\n{why}", body(decision)));
            dialog.add_responses(&[("later", &later), ("commit", &commit)]);
            dialog.set_response_appearance("commit", adw::ResponseAppearance::Suggested);
            dialog.set_default_response(Some("commit"));
        }
        (None, forced) => {
            dialog.add_responses(&[
                ("discard", &discard),
                ("later", &later),
                ("commit", &commit),
            ]);
            if forced.is_some() {
                dialog.set_response_appearance("discard", adw::ResponseAppearance::Suggested);
                dialog.set_default_response(Some("discard"));
            } else {
                dialog.set_response_appearance("discard", adw::ResponseAppearance::Destructive);
                dialog.set_response_appearance("commit", adw::ResponseAppearance::Suggested);
                dialog.set_default_response(Some("commit"));
            }
        }
    }
    dialog.set_close_response("later");
    let remember = gtk::CheckButton::with_label(&tr("Remember for this VM"));
    dialog.set_extra_child(Some(&remember));

    let (app_weak, k) = (app.downgrade(), key.clone());
    let response = dialog.connect_response(None, move |_, response| {
        hook::emit("prompt-response", &k, serde_json::json!(response));
        let Some(app) = app_weak.upgrade() else {
            return;
        };
        let (action, policy) = match response {
            "commit" => ("commit", Policy::AlwaysCommit),
            "discard" => ("discard", Policy::AlwaysDiscard),
            _ => ("later", Policy::Ask),
        };
        if remember.is_active() && action != "later" {
            let target = (k.uri.as_str(), k.name.as_str(), policy.word()).to_variant();
            app.activate_action("set-policy", Some(&target));
        }
        app.activate_action(action, Some(&k.target()));
    });
    let (k, forced) = (key.clone(), decision.forced.clone());
    dialog.connect_map(move |d| {
        // Nothing focused: Enter answers with the default response instead of toggling
        // "Remember" (which Tab still reaches).
        GtkWindowExt::set_focus(d, None::<&gtk::Widget>);
        hook::emit("prompt-mapped", &k, serde_json::json!({"forced": forced}));
    });
    dialog.present();
    Prompt {
        dialog,
        response: Some(response),
    }
}
