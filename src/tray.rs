//! The StatusNotifierItem tray (ksni). It holds only plain state and a sender: menu clicks run
//! on ksni's own thread and travel to the glib main loop over a channel. The main loop updates
//! the tray only when the state it shows changes.

use crate::i18n::tr;
use crate::machine::{Summary, VmKey};

#[derive(Debug, Clone, PartialEq)]
pub enum TrayAction {
    Commit(VmKey),
    Discard(VmKey),
    ShowStatus,
    /// "Make disposable…" / "Stop being disposable…": they ask first.
    Adopt(VmKey),
    Release(VmKey),
    ToggleAutostart,
    /// `--demo` only: start (true) or shut down the demo guest.
    DemoPower(bool),
    Quit,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrayVm {
    pub key: VmKey,
    /// e.g. "tiny — shut off, 1.2 GiB changed (decision pending)"
    pub label: String,
    pub can_act: bool,
    pub can_discard: bool,
    pub can_adopt: bool,
    pub can_release: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrayState {
    pub summary: Summary,
    pub tooltip: String,
    pub vms: Vec<TrayVm>,
    pub autostart: bool,
    /// `--demo` only: is the demo guest running?
    pub demo: Option<bool>,
}

impl Default for TrayState {
    fn default() -> Self {
        TrayState {
            summary: Summary::Idle,
            tooltip: String::new(),
            vms: Vec::new(),
            autostart: false,
            demo: None,
        }
    }
}

pub struct VmTray {
    pub state: TrayState,
    pub tx: async_channel::Sender<TrayAction>,
}

/// Theme icon names shipped in data/icons (hicolor, symbolic), one per summary state.
pub fn icon_name(summary: Summary) -> String {
    let state = match summary {
        Summary::Idle => "idle",
        Summary::Running => "running",
        Summary::Pending => "pending",
        Summary::Busy => "busy",
    };
    format!("{}-{state}-symbolic", crate::config::APP_ID)
}

/// A drawn fallback for hosts without our icons installed: a ring in the state's colour.
pub fn pixmap(summary: Summary, size: i32) -> ksni::Icon {
    let (r, g, b) = match summary {
        Summary::Idle => (0x9a, 0x99, 0x96),
        Summary::Running => (0x33, 0xd1, 0x7a),
        Summary::Pending => (0xf6, 0xd3, 0x2d),
        Summary::Busy => (0x35, 0x84, 0xe4),
    };
    let c = (size as f64 - 1.0) / 2.0;
    let mut data = Vec::with_capacity((size * size * 4) as usize);
    for y in 0..size {
        for x in 0..size {
            let d = ((x as f64 - c).powi(2) + (y as f64 - c).powi(2)).sqrt();
            let inside = d <= c && (d >= c * 0.55 || summary != Summary::Idle);
            let a = if inside { 0xff } else { 0 };
            data.extend_from_slice(&[a, r, g, b]); // ARGB32, network byte order
        }
    }
    ksni::Icon {
        width: size,
        height: size,
        data,
    }
}

/// "Make disposable…" for a VM that could be, "Stop being disposable…" for one that is.
fn disposable_items(vm: &TrayVm) -> Vec<ksni::MenuItem<VmTray>> {
    use ksni::menu::StandardItem;
    let key = vm.key.clone();
    let item = |label: String, action: fn(VmKey) -> TrayAction| {
        let key = key.clone();
        StandardItem {
            label,
            activate: Box::new(move |t: &mut VmTray| {
                let _ = t.tx.try_send(action(key.clone()));
            }),
            ..Default::default()
        }
        .into()
    };
    let mut items = Vec::new();
    if vm.can_adopt {
        items.push(item(tr("Make disposable…"), TrayAction::Adopt));
    }
    if vm.can_release {
        items.push(item(tr("Stop being disposable…"), TrayAction::Release));
    }
    items
}

impl ksni::Tray for VmTray {
    fn id(&self) -> String {
        "vmoverlay".into()
    }

    fn title(&self) -> String {
        "VM Overlay".into()
    }

    fn category(&self) -> ksni::Category {
        ksni::Category::SystemServices
    }

    fn status(&self) -> ksni::Status {
        match self.state.summary {
            Summary::Pending => ksni::Status::NeedsAttention,
            _ => ksni::Status::Active,
        }
    }

    fn icon_name(&self) -> String {
        icon_name(self.state.summary)
    }

    fn attention_icon_name(&self) -> String {
        icon_name(Summary::Pending)
    }

    /// Hosts without our icons installed draw this while a decision is pending (GNOME's
    /// AppIndicator extension showed "•••" without it).
    fn attention_icon_pixmap(&self) -> Vec<ksni::Icon> {
        vec![pixmap(Summary::Pending, 22), pixmap(Summary::Pending, 44)]
    }

    fn icon_pixmap(&self) -> Vec<ksni::Icon> {
        vec![
            pixmap(self.state.summary, 22),
            pixmap(self.state.summary, 44),
        ]
    }

    fn tool_tip(&self) -> ksni::ToolTip {
        ksni::ToolTip {
            title: "VM Overlay".into(),
            description: self.state.tooltip.clone(),
            ..Default::default()
        }
    }

    fn activate(&mut self, _x: i32, _y: i32) {
        let _ = self.tx.try_send(TrayAction::ShowStatus);
    }

    fn menu(&self) -> Vec<ksni::MenuItem<Self>> {
        use ksni::menu::{CheckmarkItem, MenuItem, StandardItem, SubMenu};
        let mut items: Vec<MenuItem<Self>> = Vec::new();
        if self.state.vms.is_empty() {
            items.push(
                StandardItem {
                    label: tr("No virtual machines"),
                    enabled: false,
                    ..Default::default()
                }
                .into(),
            );
        }
        for vm in &self.state.vms {
            let (commit_key, discard_key) = (vm.key.clone(), vm.key.clone());
            items.push(
                SubMenu {
                    label: vm.label.clone(),
                    submenu: vec![
                        StandardItem {
                            label: tr("Commit now"),
                            enabled: vm.can_act,
                            activate: Box::new(move |t: &mut Self| {
                                let _ = t.tx.try_send(TrayAction::Commit(commit_key.clone()));
                            }),
                            ..Default::default()
                        }
                        .into(),
                        StandardItem {
                            label: tr("Discard now"),
                            enabled: vm.can_discard,
                            activate: Box::new(move |t: &mut Self| {
                                let _ = t.tx.try_send(TrayAction::Discard(discard_key.clone()));
                            }),
                            ..Default::default()
                        }
                        .into(),
                    ]
                    .into_iter()
                    .chain(disposable_items(vm))
                    .collect(),
                    ..Default::default()
                }
                .into(),
            );
        }
        items.push(MenuItem::Separator);
        if let Some(running) = self.state.demo {
            items.push(
                StandardItem {
                    label: if running {
                        tr("Shut down the demo guest")
                    } else {
                        tr("Start the demo guest")
                    },
                    activate: Box::new(move |t: &mut Self| {
                        let _ = t.tx.try_send(TrayAction::DemoPower(!running));
                    }),
                    ..Default::default()
                }
                .into(),
            );
        }
        items.push(
            StandardItem {
                label: tr("Show status"),
                activate: Box::new(|t: &mut Self| {
                    let _ = t.tx.try_send(TrayAction::ShowStatus);
                }),
                ..Default::default()
            }
            .into(),
        );
        items.push(
            CheckmarkItem {
                label: tr("Start at login"),
                checked: self.state.autostart,
                activate: Box::new(|t: &mut Self| {
                    let _ = t.tx.try_send(TrayAction::ToggleAutostart);
                }),
                ..Default::default()
            }
            .into(),
        );
        items.push(
            StandardItem {
                label: tr("Quit"),
                icon_name: "application-exit".into(),
                activate: Box::new(|t: &mut Self| {
                    let _ = t.tx.try_send(TrayAction::Quit);
                }),
                ..Default::default()
            }
            .into(),
        );
        items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixmaps_are_argb_squares() {
        for s in [
            Summary::Idle,
            Summary::Running,
            Summary::Pending,
            Summary::Busy,
        ] {
            let icon = pixmap(s, 22);
            assert_eq!(icon.data.len(), 22 * 22 * 4);
            // The centre is transparent only for the idle ring.
            let centre = ((11 * 22 + 11) * 4) as usize;
            assert_eq!(icon.data[centre] == 0, s == Summary::Idle);
        }
        assert_eq!(
            icon_name(Summary::Pending),
            "io.github.vmoverlay.VMOverlay-pending-symbolic"
        );
    }
}
