//! A VM's history window: its revisions, newest first (time, kind, label, pinned, the space
//! each holds), each with Roll Back…, Pin / Unpin and Label… — the application's actions
//! `app.rollback`, `app.pin` and `app.label` with `(uri, vm, revision, disk)` as target —
//! and "Undo" (`app.undo`) while the last operation can be undone. It is given plain
//! [`Entry`]s and knows nothing of the images; [`HistoryWindow::show`] replaces what it lists.

use adw::prelude::*;
use gtk::glib;

use crate::hook;
use crate::i18n::{tr, tr_f};
use crate::machine::VmKey;
use crate::units::human_bytes;

/// One revision as the window shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub disk: String,
    pub id: u64,
    /// RFC 3339.
    pub time: String,
    pub kind: &'static str,
    pub label: Option<String>,
    pub pinned: bool,
    pub bytes: Option<u64>,
    pub restorable: bool,
}

/// What the window shows for one VM.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct View {
    pub entries: Vec<Entry>,
    /// One line per disk: how many revisions it keeps and the space they hold.
    pub summary: Vec<String>,
    /// "Undo" is offered.
    pub undo: bool,
    /// Why there is no history (the libvirt engine, no such VM).
    pub error: Option<String>,
}

/// The `(ssts)` target of a revision's actions.
pub fn target(key: &VmKey, id: u64, disk: &str) -> glib::Variant {
    (key.uri.as_str(), key.name.as_str(), id, disk).to_variant()
}

/// The kind of a revision, in words.
fn kind_words(kind: &str) -> String {
    match kind {
        "commit" => tr("Before a commit"),
        "discard" => tr("Discarded changes"),
        "rollback" => tr("Before a rollback"),
        _ => tr("When it was made disposable"),
    }
}

/// "2026-11-23 21:50" in local time, or the RFC 3339 text as it is.
fn local_time(rfc3339: &str) -> String {
    humantime::parse_rfc3339(rfc3339)
        .ok()
        .and_then(|t| {
            let secs = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
            let dt = glib::DateTime::from_unix_local(i64::try_from(secs).ok()?).ok()?;
            dt.format("%Y-%m-%d %H:%M").ok()
        })
        .map(|s| s.to_string())
        .unwrap_or_else(|| rfc3339.to_string())
}

#[derive(Clone)]
pub struct HistoryWindow {
    pub window: adw::Window,
    key: VmKey,
    list: gtk::ListBox,
    summary: gtk::Label,
    undo: gtk::Button,
}

impl HistoryWindow {
    pub fn new(app: &adw::Application, key: &VmKey) -> HistoryWindow {
        let title = tr_f("{vm} — History", &[("vm", &key.name)]);
        let undo = gtk::Button::builder()
            .label(tr("Undo"))
            .tooltip_text(tr("Undo the last commit, discard or rollback"))
            .action_name("app.undo")
            .action_target(&key.target())
            .visible(false)
            .build();
        let header = adw::HeaderBar::new();
        header.pack_start(&undo);
        let list = gtk::ListBox::builder()
            .selection_mode(gtk::SelectionMode::None)
            .css_classes(["boxed-list"])
            .build();
        let summary = gtk::Label::builder()
            .wrap(true)
            .xalign(0.0)
            .css_classes(["dim-label"])
            .build();
        let content = gtk::Box::builder()
            .orientation(gtk::Orientation::Vertical)
            .spacing(12)
            .margin_top(18)
            .margin_bottom(18)
            .margin_start(12)
            .margin_end(12)
            .build();
        content.append(&list);
        content.append(&summary);
        let clamp = adw::Clamp::builder().child(&content).build();
        let scrolled = gtk::ScrolledWindow::builder()
            .hscrollbar_policy(gtk::PolicyType::Never)
            .vexpand(true)
            .child(&clamp)
            .build();
        let body = gtk::Box::new(gtk::Orientation::Vertical, 0);
        body.append(&header);
        body.append(&scrolled);
        let window = adw::Window::builder()
            .application(app)
            .title(&title)
            .default_width(640)
            .default_height(480)
            .hide_on_close(true)
            .content(&body)
            .build();
        HistoryWindow {
            window,
            key: key.clone(),
            list,
            summary,
            undo,
        }
    }

    /// Lists `view` (the rows are made anew: the list changes only after an action).
    pub fn show(&self, view: &View) {
        while let Some(child) = self.list.first_child() {
            self.list.remove(&child);
        }
        self.undo.set_visible(view.undo);
        if let Some(error) = &view.error {
            let row = adw::ActionRow::builder()
                .title(tr("No history"))
                .subtitle(error)
                .use_markup(false)
                .build();
            self.list.append(&row);
        } else if view.entries.is_empty() {
            let row = adw::ActionRow::builder()
                .title(tr("No revisions yet"))
                .subtitle(tr(
                    "A revision is kept before each commit and of the changes each discard throws away.",
                ))
                .use_markup(false)
                .build();
            self.list.append(&row);
        }
        for e in &view.entries {
            self.list.append(&self.row(e));
        }
        self.summary.set_text(&view.summary.join("\n"));
        hook::emit(
            "history-shown",
            &self.key,
            serde_json::json!({
                "undo": view.undo,
                "error": view.error,
                "revisions": view.entries.iter().map(|e| serde_json::json!({
                    "id": e.id, "disk": e.disk, "kind": e.kind, "label": e.label,
                    "pinned": e.pinned, "restorable": e.restorable,
                })).collect::<Vec<_>>(),
            }),
        );
    }

    fn row(&self, e: &Entry) -> adw::ActionRow {
        let mut details = vec![tr_f(
            "revision {id} of {disk}",
            &[("id", &e.id.to_string()), ("disk", &e.disk)],
        )];
        if let Some(label) = &e.label {
            details.insert(0, label.clone());
        }
        if e.pinned {
            details.push(tr("pinned"));
        }
        if let Some(n) = e.bytes {
            details.push(tr_f("holds {size}", &[("size", &human_bytes(n))]));
        }
        if !e.restorable {
            details.push(tr("not restorable: its base has changed"));
        }
        let row = adw::ActionRow::builder()
            .title(format!("{} — {}", local_time(&e.time), kind_words(e.kind)))
            .subtitle(details.join(" · "))
            .use_markup(false)
            .build();
        let target = target(&self.key, e.id, &e.disk);
        let button = |label: String, action: &str| {
            gtk::Button::builder()
                .label(label)
                .valign(gtk::Align::Center)
                .action_name(action)
                .action_target(&target)
                .build()
        };
        let label = button(tr("Label…"), "app.label");
        let pin = gtk::Button::builder()
            .label(if e.pinned { tr("Unpin") } else { tr("Pin") })
            .valign(gtk::Align::Center)
            .action_name("app.pin")
            .action_target(&(&self.key.uri, &self.key.name, e.id, &e.disk, !e.pinned).to_variant())
            .build();
        let rollback = button(tr("Roll Back…"), "app.rollback");
        rollback.set_sensitive(e.restorable);
        if !e.restorable {
            rollback.set_action_name(None);
        }
        row.add_suffix(&label);
        row.add_suffix(&pin);
        row.add_suffix(&rollback);
        row
    }
}
