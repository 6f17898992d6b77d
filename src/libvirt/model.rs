//! A model of every domain on every connection, kept current by monitor events.
//!
//! Pure logic: it never talks to libvirt. Its one judgement is reconciliation: when a
//! connection comes back, a domain that was active before the loss and is shut off (or gone)
//! now stopped while we could not see it, and is reported once as stopped, flagged
//! `after_reconnect`, with the reason libvirt gives for its state. The listings the monitor
//! makes again a while after a reconnect ([`MonitorEvent::Resynced`]) are reconciled the same
//! way for the domains no event has spoken of since, and a stop found so is reported once.

use std::collections::{BTreeMap, BTreeSet};

use super::events::{DomainEvent, DomainSnapshot, DomainState, Lifecycle, StateKind, Stopped};
use super::monitor::MonitorEvent;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRecord {
    pub name: String,
    pub uuid: String,
    pub state: DomainState,
}

#[derive(Debug, Clone, Default)]
pub struct ConnectionRecord {
    pub connected: bool,
    /// Has this connection ever been up? (a later `Connected` is then a reconnect)
    pub seen: bool,
    /// Keyed by UUID, which survives renames.
    pub domains: BTreeMap<String, DomainRecord>,
    /// Domains an event has spoken of since the last (re)connect: a later listing says
    /// nothing new about them.
    touched: BTreeSet<String>,
    /// Domains whose stop a later listing reported: libvirt's own event for it, should one
    /// still come, is not reported again.
    stopped_by_resync: BTreeSet<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Model {
    pub connections: BTreeMap<String, ConnectionRecord>,
}

/// The state a lifecycle event leaves a domain in, if it says.
fn state_after(kind: &Lifecycle) -> Option<DomainState> {
    let s = |kind, reason| Some(DomainState { kind, reason });
    match kind {
        Lifecycle::Started(d) => s(
            StateKind::Running,
            match d {
                super::events::Started::Booted => 1,
                super::events::Started::Migrated => 2,
                super::events::Started::Restored => 3,
                super::events::Started::FromSnapshot => 4,
                super::events::Started::Wakeup => 8,
                super::events::Started::Other(_) => 0,
            },
        ),
        Lifecycle::Resumed(_) => s(StateKind::Running, 5),
        Lifecycle::Suspended(_) => s(StateKind::Paused, 0),
        Lifecycle::PmSuspended(_) => s(StateKind::PmSuspended, 0),
        Lifecycle::Crashed(_) => s(StateKind::Crashed, 1),
        Lifecycle::Stopped(d) => s(
            StateKind::Shutoff,
            match d {
                Stopped::Shutdown => 1,
                Stopped::Destroyed => 2,
                Stopped::Crashed => 3,
                Stopped::Migrated => 4,
                Stopped::Saved => 5,
                Stopped::Failed => 6,
                Stopped::FromSnapshot => 7,
                Stopped::Daemon => 8,
                Stopped::Unknown | Stopped::Other(_) => 0,
            },
        ),
        Lifecycle::Defined(_) => s(StateKind::Shutoff, 0),
        _ => None,
    }
}

impl Model {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn domain(&self, uri: &str, name: &str) -> Option<&DomainRecord> {
        self.connections
            .get(uri)?
            .domains
            .values()
            .find(|d| d.name == name)
    }

    /// Applies one monitor event and returns what to report, in order: the event itself,
    /// preceded (for a reconnect) by the stops that happened while disconnected.
    pub fn apply(&mut self, event: MonitorEvent) -> Vec<MonitorEvent> {
        match &event {
            MonitorEvent::Connected {
                uri, time, domains, ..
            } => {
                let conn = self.connections.entry(uri.clone()).or_default();
                let mut out = Vec::new();
                if conn.seen {
                    out = reconcile(uri, *time, &conn.domains, domains);
                }
                conn.domains = domains
                    .iter()
                    .map(|d| (d.uuid.clone(), record(d)))
                    .collect();
                conn.connected = true;
                conn.seen = true;
                conn.touched.clear();
                conn.stopped_by_resync.clear();
                out.insert(0, event);
                out
            }
            MonitorEvent::Resynced { uri, time, domains } => {
                let conn = self.connections.entry(uri.clone()).or_default();
                if !conn.connected {
                    return Vec::new();
                }
                let quiet: BTreeMap<String, DomainRecord> = conn
                    .domains
                    .iter()
                    .filter(|(uuid, _)| !conn.touched.contains(*uuid))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let out = reconcile(uri, *time, &quiet, domains);
                for e in &out {
                    if let MonitorEvent::Domain(ev) = e {
                        let now = domains.iter().find(|d| d.uuid == ev.uuid);
                        match now {
                            Some(d) => {
                                if let Some(rec) = conn.domains.get_mut(&ev.uuid) {
                                    rec.state = d.state;
                                }
                            }
                            None => {
                                conn.domains.remove(&ev.uuid);
                            }
                        }
                        conn.stopped_by_resync.insert(ev.uuid.clone());
                    }
                }
                out
            }
            MonitorEvent::Disconnected { uri, .. } => {
                // Domain states are left as they were: losing the connection says nothing
                // about the VMs.
                self.connections.entry(uri.clone()).or_default().connected = false;
                vec![event]
            }
            MonitorEvent::ConnectFailed { .. } => vec![event],
            MonitorEvent::Domain(ev) => {
                let conn = self.connections.entry(ev.uri.clone()).or_default();
                conn.touched.insert(ev.uuid.clone());
                if conn.stopped_by_resync.remove(&ev.uuid)
                    && matches!(ev.kind, Lifecycle::Stopped(_))
                {
                    return Vec::new(); // reported already
                }
                if let Lifecycle::Undefined(_) = ev.kind {
                    conn.domains.remove(&ev.uuid);
                } else if let Some(state) = state_after(&ev.kind) {
                    let rec = conn
                        .domains
                        .entry(ev.uuid.clone())
                        .or_insert_with(|| DomainRecord {
                            name: ev.domain.clone(),
                            uuid: ev.uuid.clone(),
                            state,
                        });
                    // A (re)definition of an existing domain does not change its run state.
                    if !matches!(ev.kind, Lifecycle::Defined(_)) {
                        rec.state = state;
                    }
                    rec.name = ev.domain.clone();
                }
                vec![event]
            }
        }
    }
}

fn record(d: &DomainSnapshot) -> DomainRecord {
    DomainRecord {
        name: d.name.clone(),
        uuid: d.uuid.clone(),
        state: d.state,
    }
}

fn reconcile(
    uri: &str,
    time: std::time::SystemTime,
    before: &BTreeMap<String, DomainRecord>,
    now: &[DomainSnapshot],
) -> Vec<MonitorEvent> {
    let mut out = Vec::new();
    for old in before.values().filter(|d| d.state.kind.is_active()) {
        let detail = match now.iter().find(|d| d.uuid == old.uuid) {
            Some(cur) if cur.state.kind == StateKind::Shutoff => {
                Stopped::from_shutoff_reason(cur.state.reason)
            }
            Some(_) => continue, // still active: nothing happened that we missed
            None => Stopped::Unknown, // a transient domain that is gone
        };
        out.push(MonitorEvent::Domain(DomainEvent {
            time,
            uri: uri.to_string(),
            domain: old.name.clone(),
            uuid: old.uuid.clone(),
            kind: Lifecycle::Stopped(detail),
            after_reconnect: true,
            engine_job: None,
            ended_before_asked: false,
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn snap(name: &str, state: i32, reason: i32) -> DomainSnapshot {
        DomainSnapshot {
            name: name.into(),
            uuid: format!("uuid-{name}"),
            state: DomainState::from_raw(state, reason),
            engine_job: None,
        }
    }

    fn connected(domains: Vec<DomainSnapshot>) -> MonitorEvent {
        MonitorEvent::Connected {
            uri: "qemu:///system".into(),
            time: SystemTime::UNIX_EPOCH,
            domains,
        }
    }

    fn disconnected() -> MonitorEvent {
        MonitorEvent::Disconnected {
            uri: "qemu:///system".into(),
            time: SystemTime::UNIX_EPOCH,
            reason: "eof".into(),
        }
    }

    fn stops(out: &[MonitorEvent]) -> Vec<(String, String, bool)> {
        out.iter()
            .filter_map(|e| match e {
                MonitorEvent::Domain(d) => {
                    Some((d.domain.clone(), d.kind.detail_word(), d.after_reconnect))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn first_connect_reports_no_stops() {
        let mut m = Model::new();
        let out = m.apply(connected(vec![snap("a", 5, 1), snap("b", 1, 1)]));
        assert_eq!(out.len(), 1);
        assert!(stops(&out).is_empty());
        assert_eq!(
            m.domain("qemu:///system", "b").unwrap().state.kind,
            StateKind::Running
        );
    }

    #[test]
    fn disconnect_never_reads_as_stop() {
        let mut m = Model::new();
        m.apply(connected(vec![snap("a", 1, 1)]));
        let out = m.apply(disconnected());
        assert_eq!(out, vec![disconnected()]);
        assert_eq!(
            m.domain("qemu:///system", "a").unwrap().state.kind,
            StateKind::Running
        );
        assert!(!m.connections["qemu:///system"].connected);
    }

    #[test]
    fn reconnect_reports_missed_stops_once_with_reason() {
        let mut m = Model::new();
        m.apply(connected(vec![
            snap("kept", 1, 1),
            snap("killed", 1, 1),
            snap("off", 5, 1),
            snap("transient", 1, 1),
        ]));
        m.apply(disconnected());
        // "killed" shut off as crashed; "transient" vanished; "off" was already off.
        let out = m.apply(connected(vec![
            snap("kept", 1, 1),
            snap("killed", 5, 3),
            snap("off", 5, 1),
        ]));
        assert!(matches!(out[0], MonitorEvent::Connected { .. }));
        let mut got = stops(&out);
        got.sort();
        assert_eq!(
            got,
            vec![
                ("killed".into(), "crashed".into(), true),
                ("transient".into(), "unknown".into(), true),
            ]
        );
        // Once: a second reconnect with the same states reports nothing new.
        m.apply(disconnected());
        let out = m.apply(connected(vec![snap("kept", 1, 1), snap("killed", 5, 3)]));
        assert!(stops(&out).is_empty());
    }

    #[test]
    fn events_keep_the_model_current() {
        let mut m = Model::new();
        m.apply(connected(vec![snap("a", 5, 1)]));
        let ev = |event, detail| {
            MonitorEvent::Domain(DomainEvent {
                time: SystemTime::UNIX_EPOCH + Duration::from_secs(1),
                uri: "qemu:///system".into(),
                domain: "a".into(),
                uuid: "uuid-a".into(),
                kind: Lifecycle::from_raw(event, detail),
                after_reconnect: false,
                engine_job: None,
                ended_before_asked: false,
            })
        };
        m.apply(ev(2, 0));
        assert_eq!(
            m.domain("qemu:///system", "a").unwrap().state.kind,
            StateKind::Running
        );
        m.apply(ev(5, 1));
        let st = m.domain("qemu:///system", "a").unwrap().state;
        assert_eq!(
            (st.kind, st.reason_word().as_str()),
            (StateKind::Shutoff, "destroyed")
        );
        // A domain that is running when the connection drops and is found running again
        // after a restart of libvirtd yields no stop.
        m.apply(ev(2, 0));
        m.apply(disconnected());
        let out = m.apply(connected(vec![snap("a", 1, 1)]));
        assert!(stops(&out).is_empty());
        m.apply(ev(1, 0));
        assert!(m.domain("qemu:///system", "a").is_none());
    }

    fn resynced(domains: Vec<DomainSnapshot>) -> MonitorEvent {
        MonitorEvent::Resynced {
            uri: "qemu:///system".into(),
            time: SystemTime::UNIX_EPOCH,
            domains,
        }
    }

    fn stopped(name: &str, detail: i32) -> MonitorEvent {
        MonitorEvent::Domain(DomainEvent {
            time: SystemTime::UNIX_EPOCH,
            uri: "qemu:///system".into(),
            domain: name.into(),
            uuid: format!("uuid-{name}"),
            kind: Lifecycle::from_raw(5, detail),
            after_reconnect: false,
            engine_job: None,
            ended_before_asked: false,
        })
    }

    /// libvirtd still reconnecting when the monitor lists: a domain whose QEMU died while it
    /// was down looks running, and libvirt later marks it shut off without any event. The
    /// listing made again finds it, once; libvirt's own event, should it come, is not
    /// reported twice; a domain an event spoke of since the reconnect is left to the events.
    #[test]
    fn a_later_listing_reports_a_stop_libvirt_found_after_the_reconnect_once() {
        let mut m = Model::new();
        m.apply(connected(vec![snap("killed", 1, 1), snap("busy", 1, 1)]));
        m.apply(disconnected());
        let out = m.apply(connected(vec![snap("killed", 1, 1), snap("busy", 1, 1)]));
        assert!(stops(&out).is_empty(), "both still look running");
        // "busy" is shut down normally meanwhile: its own event reports it.
        let out = m.apply(stopped("busy", 0));
        assert_eq!(stops(&out), vec![("busy".into(), "shutdown".into(), false)]);
        let later = vec![snap("killed", 5, 3), snap("busy", 5, 1)];
        let out = m.apply(resynced(later.clone()));
        assert_eq!(stops(&out), vec![("killed".into(), "crashed".into(), true)]);
        assert!(!out
            .iter()
            .any(|e| matches!(e, MonitorEvent::Resynced { .. })));
        assert_eq!(
            m.domain("qemu:///system", "killed").unwrap().state.kind,
            StateKind::Shutoff
        );
        assert!(stops(&m.apply(resynced(later))).is_empty(), "once");
        assert!(
            stops(&m.apply(stopped("killed", 3))).is_empty(),
            "not twice"
        );
        // Not while disconnected.
        m.apply(disconnected());
        assert!(m.apply(resynced(vec![])).is_empty());
    }
}
