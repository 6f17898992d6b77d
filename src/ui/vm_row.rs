//! One VM in the status window: an `AdwActionRow` (template `vm_row.ui`) with a progress bar
//! and Discard / Commit buttons. [`VmRow::show`] changes what it shows in place (subtitle,
//! progress, the buttons' sensitivity), so focus and what a screen reader has announced
//! survive every progress tick; the row is never rebuilt.

use std::cell::RefCell;

use adw::prelude::*;
use adw::subclass::prelude::*;
use gtk::glib;

use super::status::Row;
use crate::hook;
use crate::i18n::tr_f;
use crate::machine::VmKey;

/// What a row currently shows; a change of any of it is one `status-row` hook event.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    pub subtitle: String,
    pub progress: Option<f64>,
    pub can_act: bool,
    pub can_discard: bool,
    pub can_adopt: bool,
    pub can_release: bool,
    pub can_undo: bool,
    pub has_history: bool,
    pub blocked: Option<String>,
    pub last: Option<String>,
}

impl Shown {
    pub fn of(row: &Row) -> Shown {
        Shown {
            subtitle: subtitle(row),
            progress: row.progress,
            can_act: row.can_act && row.blocked.is_none(),
            can_discard: row.can_discard && row.can_act && row.blocked.is_none(),
            can_adopt: row.can_adopt,
            can_release: row.can_release,
            can_undo: row.can_undo,
            has_history: row.has_history,
            blocked: row.blocked.clone(),
            last: row.last.clone(),
        }
    }
}

/// The row's subtitle: the state, why Commit and Discard are not offered, the last result,
/// then the connection, one per line.
pub fn subtitle(row: &Row) -> String {
    let mut lines = vec![row.subtitle.clone()];
    if let Some(reason) = &row.blocked {
        lines.push(tr_f("Not offered: {reason}", &[("reason", reason)]));
    }
    if let Some(last) = &row.last {
        lines.push(tr_f("Last: {result}", &[("result", last)]));
    }
    lines.push(row.key.uri.clone());
    lines.join("\n")
}

mod imp {
    use super::*;

    #[derive(Debug, Default, gtk::CompositeTemplate)]
    #[template(resource = "/io/github/vmoverlay/VMOverlay/ui/vm_row.ui")]
    pub struct VmRow {
        #[template_child]
        pub progress: TemplateChild<gtk::ProgressBar>,
        #[template_child]
        pub history: TemplateChild<gtk::Button>,
        #[template_child]
        pub undo: TemplateChild<gtk::Button>,
        #[template_child]
        pub adopt: TemplateChild<gtk::Button>,
        #[template_child]
        pub release: TemplateChild<gtk::Button>,
        #[template_child]
        pub discard: TemplateChild<gtk::Button>,
        #[template_child]
        pub commit: TemplateChild<gtk::Button>,
        pub shown: RefCell<Option<Shown>>,
    }

    #[glib::object_subclass]
    impl ObjectSubclass for VmRow {
        const NAME: &str = "VmoVmRow";
        type Type = super::VmRow;
        type ParentType = adw::ActionRow;

        fn class_init(klass: &mut Self::Class) {
            klass.bind_template();
        }

        fn instance_init(obj: &glib::subclass::InitializingObject<Self>) {
            obj.init_template();
        }
    }

    impl ObjectImpl for VmRow {}
    impl WidgetImpl for VmRow {}
    impl ListBoxRowImpl for VmRow {}
    impl PreferencesRowImpl for VmRow {}
    impl ActionRowImpl for VmRow {}
}

glib::wrapper! {
    pub struct VmRow(ObjectSubclass<imp::VmRow>)
        @extends adw::ActionRow, adw::PreferencesRow, gtk::ListBoxRow, gtk::Widget,
        @implements gtk::Actionable, gtk::Buildable, gtk::ConstraintTarget;
}

impl VmRow {
    /// A row for `key`; it shows nothing else until the first [`VmRow::show`].
    pub fn new(key: &VmKey) -> VmRow {
        super::register_resources();
        let row: VmRow = glib::Object::new();
        row.set_title(&key.name);
        let imp = row.imp();
        for button in [
            &*imp.discard,
            &*imp.commit,
            &*imp.adopt,
            &*imp.release,
            &*imp.undo,
            &*imp.history,
        ] {
            // The target first: the action helper checks it against the action's parameter
            // type when the name is set.
            button.set_action_target_value(Some(&key.target()));
        }
        row
    }

    /// Shows `row`, changing only what differs from what is shown; emits the `status-row`
    /// hook when anything did. Returns whether anything changed.
    pub fn show(&self, row: &Row) -> bool {
        let imp = self.imp();
        let new = Shown::of(row);
        let old = imp.shown.borrow().clone();
        if old.as_ref() == Some(&new) {
            return false;
        }
        if old.as_ref().map(|o| &o.subtitle) != Some(&new.subtitle) {
            self.set_subtitle(&new.subtitle);
        }
        // Shown only where they apply: an ordinary VM is not offered Commit, a disposable one
        // not "Make disposable".
        imp.adopt.set_visible(new.can_adopt);
        imp.release.set_visible(new.can_release);
        imp.undo.set_visible(new.can_undo);
        imp.history.set_visible(new.has_history);
        if old.as_ref().map(|o| o.progress) != Some(new.progress) {
            match new.progress {
                Some(f) => {
                    imp.progress.set_fraction(f.clamp(0.0, 1.0));
                    imp.progress.set_visible(true);
                }
                None => imp.progress.set_visible(false),
            }
        }
        if old.as_ref().map(|o| (o.can_act, o.can_discard)) != Some((new.can_act, new.can_discard))
        {
            self.set_can_act(new.can_act, new.can_discard);
        }
        hook::emit(
            "status-row",
            &row.key,
            serde_json::json!({
                "subtitle": new.subtitle,
                "blocked": new.blocked,
                "can_act": new.can_act,
                "can_discard": new.can_discard,
                "can_adopt": new.can_adopt,
                "can_release": new.can_release,
                "can_undo": new.can_undo,
                "has_history": new.has_history,
                "progress": new.progress,
                "last": new.last,
            }),
        );
        imp.shown.replace(Some(new));
        true
    }

    /// The buttons are actionable (`app.discard` / `app.commit` with the VM as target). GTK's
    /// action helper sets an actionable widget's sensitivity from its action's enabled state
    /// whenever that changes, so a plain `set_sensitive(false)` would not last: a row that
    /// cannot act has no action name (the helper then makes the button insensitive, and so
    /// do we, for a button whose action was never found), and gets it back when it can.
    fn set_can_act(&self, can_commit: bool, can_discard: bool) {
        let imp = self.imp();
        for (button, action, can_act) in [
            (&*imp.discard, "app.discard", can_discard),
            (&*imp.commit, "app.commit", can_commit),
        ] {
            if can_act {
                button.set_action_name(Some(action));
            } else {
                button.set_action_name(None);
                button.set_sensitive(false);
            }
        }
    }
}
