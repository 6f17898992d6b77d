//! The status window: every VM, its state, its changes, its pending decision and last result,
//! with the same Commit / Discard actions as the tray.

use adw::prelude::*;

use crate::i18n::{tr, tr_f};
use crate::machine::Vm;
use crate::machine::VmKey;
use crate::units::human_bytes;

/// What the status window and the tray show for one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: VmKey,
    pub subtitle: String,
    pub progress: Option<f64>,
    pub can_act: bool,
    /// The last operation's result (status window only; the tray keeps labels short).
    pub last: Option<String>,
    /// Why Commit and Discard are not offered.
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
        Row {
            key: key.clone(),
            subtitle: parts.join(", "),
            progress: vm.job.as_ref().map(|j| j.progress),
            last: vm.last_result.as_ref().map(|n| n.summary()),
            blocked: vm.blocked.clone(),
            can_act: vm.blocked.is_none()
                && !vm.active
                && vm.job.is_none()
                && vm.engine_run.is_none()
                && vm.changed.is_some_and(|n| n > 0)
                && vm.keep_overlay.is_none(),
        }
    }
}

#[derive(Clone)]
pub struct StatusWindow {
    pub window: adw::ApplicationWindow,
    list: gtk::ListBox,
    last: std::rc::Rc<std::cell::RefCell<Vec<Row>>>,
}

impl StatusWindow {
    pub fn present(&self) {
        self.window.present();
    }

    pub fn new(app: &adw::Application) -> StatusWindow {
        let list = gtk::ListBox::builder()
            .selection_mode(gtk::SelectionMode::None)
            .css_classes(["boxed-list"])
            .build();
        let clamp = adw::Clamp::builder()
            .maximum_size(720)
            .margin_top(18)
            .margin_bottom(18)
            .margin_start(12)
            .margin_end(12)
            .child(&list)
            .build();
        let content = gtk::Box::new(gtk::Orientation::Vertical, 0);
        content.append(&adw::HeaderBar::new());
        content.append(
            &gtk::ScrolledWindow::builder()
                .vexpand(true)
                .child(&clamp)
                .build(),
        );
        let window = adw::ApplicationWindow::builder()
            .application(app)
            .title("VM Overlay")
            .default_width(640)
            .default_height(420)
            .content(&content)
            .hide_on_close(true)
            .build();
        StatusWindow {
            window,
            list,
            last: Default::default(),
        }
    }

    pub fn update(&self, rows: &[Row]) {
        if *self.last.borrow() == rows {
            return;
        }
        *self.last.borrow_mut() = rows.to_vec();
        while let Some(child) = self.list.first_child() {
            self.list.remove(&child);
        }
        if rows.is_empty() {
            self.list.append(
                &adw::ActionRow::builder()
                    .title(tr("No virtual machines"))
                    .subtitle(tr("Waiting for libvirt"))
                    .build(),
            );
        }
        for r in rows {
            let row = adw::ActionRow::builder()
                .title(&r.key.name)
                .subtitle(match &r.last {
                    Some(last) => format!(
                        "{}\n{}\n{}",
                        r.subtitle,
                        tr_f("Last: {result}", &[("result", last)]),
                        r.key.uri
                    ),
                    None => format!("{}\n{}", r.subtitle, r.key.uri),
                })
                .build();
            if let Some(p) = r.progress {
                let bar = gtk::ProgressBar::builder()
                    .fraction(p)
                    .valign(gtk::Align::Center)
                    .width_request(120)
                    .build();
                row.add_suffix(&bar);
            }
            for (label, action, class) in [
                (tr("Discard"), "app.discard", "destructive-action"),
                (tr("Commit"), "app.commit", "suggested-action"),
            ] {
                let b = gtk::Button::builder()
                    .label(&label)
                    .valign(gtk::Align::Center)
                    .css_classes([class])
                    .build();
                if r.can_act {
                    b.set_action_name(Some(action));
                    b.set_action_target_value(Some(&r.key.target()));
                } else {
                    b.set_sensitive(false);
                }
                row.add_suffix(&b);
            }
            self.list.append(&row);
        }
    }
}
