//! The event monitor: one worker thread per connection URI.
//!
//! Each worker opens its connection, registers the lifecycle and close callbacks, lists every
//! domain, then waits. When libvirtd goes away the close callback wakes it: it reports
//! `Disconnected` (never "the VMs stopped"), drops the dead connection and reconnects with
//! backoff; the new snapshot lets [`super::model::Model`] reconcile what happened meanwhile.
//! Everything reaches the consumer over one `async_channel`, in the order it happened.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use virt::connect::Connect;

use super::events::{DomainEvent, DomainSnapshot, Lifecycle};
use super::ffi;

/// What the monitor tells its consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorEvent {
    /// Connected (or reconnected): every domain on the connection, as listed right after the
    /// lifecycle callback was registered.
    Connected {
        uri: String,
        time: SystemTime,
        domains: Vec<DomainSnapshot>,
    },
    /// The connection to libvirtd was lost. Says nothing about the domains.
    Disconnected {
        uri: String,
        time: SystemTime,
        reason: String,
    },
    /// The domains listed again a while after a reconnect. libvirtd accepts clients while it is
    /// still reconnecting to its running domains, and one whose QEMU died while it was down is
    /// then marked shut off without any event: listed at the reconnect it still looked
    /// running. [`super::model::Model`] turns this into the stops it shows, once; consumers of
    /// the model never see it.
    Resynced {
        uri: String,
        time: SystemTime,
        domains: Vec<DomainSnapshot>,
    },
    /// Opening the connection failed; the monitor retries after `retry_in`.
    ConnectFailed {
        uri: String,
        time: SystemTime,
        error: String,
        retry_in: Duration,
    },
    Domain(DomainEvent),
}

/// How the monitor connects.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    pub uris: Vec<String>,
    /// Open read-only (any local user may watch). The test driver and the engine need write.
    pub read_only: bool,
    /// Keepalive interval (s) and missed-reply count before the connection is declared dead.
    pub keepalive: (i32, u32),
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl MonitorConfig {
    pub fn new(uris: Vec<String>) -> Self {
        Self {
            uris,
            read_only: true,
            keepalive: (5, 3),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(5),
        }
    }
}

enum Control {
    Closed(i32),
    Stop,
}

struct Worker {
    control: mpsc::Sender<Control>,
    conn: Arc<Mutex<Option<Connect>>>,
    thread: Option<JoinHandle<()>>,
}

/// A running monitor. Dropping it stops the workers and closes their connections.
pub struct Monitor {
    receiver: async_channel::Receiver<MonitorEvent>,
    workers: HashMap<String, Worker>,
}

impl Monitor {
    pub fn start(config: MonitorConfig) -> Monitor {
        let (tx, rx) = async_channel::unbounded();
        let mut workers = HashMap::new();
        for uri in &config.uris {
            if workers.contains_key(uri) {
                continue;
            }
            let (ctl_tx, ctl_rx) = mpsc::channel();
            let slot = Arc::new(Mutex::new(None));
            let thread = {
                let (uri, config, tx, slot, ctl_tx) = (
                    uri.clone(),
                    config.clone(),
                    tx.clone(),
                    slot.clone(),
                    ctl_tx.clone(),
                );
                std::thread::Builder::new()
                    .name(format!("monitor {uri}"))
                    .spawn(move || run_worker(uri, config, tx, slot, ctl_tx, ctl_rx))
                    .expect("spawn monitor thread")
            };
            workers.insert(
                uri.clone(),
                Worker {
                    control: ctl_tx,
                    conn: slot,
                    thread: Some(thread),
                },
            );
        }
        Monitor {
            receiver: rx,
            workers,
        }
    }

    pub fn receiver(&self) -> async_channel::Receiver<MonitorEvent> {
        self.receiver.clone()
    }

    /// The live connection for `uri`, if connected. The test driver only delivers events to
    /// callbacks on the same connection, so actions meant to be observed go through this.
    pub fn connection(&self, uri: &str) -> Option<Connect> {
        self.workers
            .get(uri)
            .and_then(|w| w.conn.lock().ok().and_then(|c| c.clone()))
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        for w in self.workers.values() {
            let _ = w.control.send(Control::Stop);
        }
        for w in self.workers.values_mut() {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

fn close_reason_word(reason: i32) -> String {
    match reason {
        0 => "error".into(),
        1 => "eof".into(),
        2 => "keepalive".into(),
        3 => "client".into(),
        n => format!("other({n})"),
    }
}

/// Lists every domain with its state, as the monitor reports it at connect.
pub fn list_domains(conn: &Connect) -> Result<Vec<DomainSnapshot>, virt::error::Error> {
    Ok(list_domain_handles(conn)?
        .into_iter()
        .map(|(d, _)| d)
        .collect())
}

/// As [`list_domains`], each with its handle (so nothing needs to look it up again).
pub fn list_domain_handles(
    conn: &Connect,
) -> Result<Vec<(DomainSnapshot, virt::domain::Domain)>, virt::error::Error> {
    // Every state in one call where the driver has it; else one call per domain.
    let listed: Vec<(virt::domain::Domain, Option<(i32, i32)>)> = match ffi::all_domain_states(conn)
    {
        Ok(all) => all.into_iter().map(|(d, s, r)| (d, Some((s, r)))).collect(),
        Err(_) => conn
            .list_all_domains(0)?
            .into_iter()
            .map(|d| (d, None))
            .collect(),
    };
    let mut out = Vec::new();
    for (dom, known) in listed {
        // A domain can vanish between listing and asking; skip it rather than fail the list.
        let state = known.map_or_else(|| ffi::domain_state(&dom), Ok);
        let (Ok(name), Ok(uuid), Ok((state, reason))) = (dom.name(), dom.uuid_string(), state)
        else {
            continue;
        };
        let state = super::events::DomainState::from_raw(state, reason);
        let snapshot = DomainSnapshot {
            engine_job: state
                .kind
                .is_active()
                .then(|| super::engine::engine_run(&dom))
                .flatten(),
            name,
            uuid,
            state,
        };
        out.push((snapshot, dom));
    }
    out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    Ok(out)
}

/// Everything that exists only while a connection is up; dropped in field order on
/// disconnect (callbacks deregistered before the connection is released).
struct Session {
    _lifecycle: ffi::EventRegistration,
    _close: ffi::CloseRegistration,
    conn: Connect,
}

fn open_session(
    uri: &str,
    config: &MonitorConfig,
    tx: &async_channel::Sender<MonitorEvent>,
    ctl: &mpsc::Sender<Control>,
) -> Result<(Session, Vec<DomainSnapshot>), virt::error::Error> {
    let conn = super::open(uri, config.read_only)?;
    // Not every driver supports keepalive (the test driver does not); that is fine.
    if let Err(e) = conn.set_keep_alive(config.keepalive.0, config.keepalive.1) {
        log::debug!("{uri}: keepalive not enabled: {}", e.message());
    }
    let ctl = ctl.clone();
    let close = ffi::register_close(&conn, move |reason| {
        let _ = ctl.send(Control::Closed(reason));
    })?;
    let (ev_tx, ev_uri, ev_conn) = (tx.clone(), uri.to_string(), conn.clone());
    let lifecycle = ffi::register_lifecycle(&conn, move |raw| {
        let kind = Lifecycle::from_raw(raw.event, raw.detail);
        // Asked now, while the domain runs: the engine's own paused start is marked in its
        // live definition. (A call from an event callback is fine: the RPC client does its
        // own I/O.)
        let (mut engine_job, mut ended_before_asked) = (None, false);
        if matches!(kind, Lifecycle::Started(_)) {
            if let Ok(dom) = ev_conn.lookup_domain_by_uuid_string(&raw.uuid) {
                engine_job = super::engine::engine_run(&dom);
                ended_before_asked = engine_job.is_none() && dom.is_active() == Ok(false);
            }
        }
        let event = DomainEvent {
            time: SystemTime::now(),
            uri: ev_uri.clone(),
            domain: raw.name,
            uuid: raw.uuid,
            kind,
            after_reconnect: false,
            engine_job,
            ended_before_asked,
        };
        // Unbounded channel: never blocks the libvirt event loop.
        let _ = ev_tx.try_send(MonitorEvent::Domain(event));
    })?;
    // Listed after registering, so no event can fall between the snapshot and the stream.
    let domains = list_domains(&conn)?;
    Ok((
        Session {
            _lifecycle: lifecycle,
            _close: close,
            conn,
        },
        domains,
    ))
}

/// When the domains are listed again after a reconnect (see [`MonitorEvent::Resynced`]):
/// libvirt gives up on a domain's monitor within 30 s.
const RESYNC_AFTER: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(3),
    Duration::from_secs(10),
    Duration::from_secs(35),
];

/// Waits for the next control message of a reconnected session, listing the domains again
/// at [`RESYNC_AFTER`] meanwhile. Nothing is asked once the last one has passed.
fn wait_resyncing(
    uri: &str,
    conn: &Connect,
    tx: &async_channel::Sender<MonitorEvent>,
    ctl_rx: &mpsc::Receiver<Control>,
) -> Result<Control, mpsc::RecvError> {
    let start = std::time::Instant::now();
    for at in RESYNC_AFTER {
        match ctl_rx.recv_timeout(at.saturating_sub(start.elapsed())) {
            Ok(c) => return Ok(c),
            Err(mpsc::RecvTimeoutError::Disconnected) => return Err(mpsc::RecvError),
            Err(mpsc::RecvTimeoutError::Timeout) => match list_domains(conn) {
                Ok(domains) => {
                    let _ = tx.try_send(MonitorEvent::Resynced {
                        uri: uri.to_string(),
                        time: SystemTime::now(),
                        domains,
                    });
                }
                Err(e) => log::debug!("{uri}: listing the domains again: {}", e.message()),
            },
        }
    }
    ctl_rx.recv()
}

fn run_worker(
    uri: String,
    config: MonitorConfig,
    tx: async_channel::Sender<MonitorEvent>,
    slot: Arc<Mutex<Option<Connect>>>,
    ctl_tx: mpsc::Sender<Control>,
    ctl_rx: mpsc::Receiver<Control>,
) {
    let mut backoff = config.backoff_initial;
    let mut reconnected = false;
    loop {
        match open_session(&uri, &config, &tx, &ctl_tx) {
            Err(e) => {
                let _ = tx.try_send(MonitorEvent::ConnectFailed {
                    uri: uri.clone(),
                    time: SystemTime::now(),
                    error: e.message().to_string(),
                    retry_in: backoff,
                });
                match ctl_rx.recv_timeout(backoff) {
                    Ok(Control::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    Ok(Control::Closed(_)) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
                backoff = (backoff * 2).min(config.backoff_max);
            }
            Ok((session, domains)) => {
                backoff = config.backoff_initial;
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(session.conn.clone());
                if tx
                    .try_send(MonitorEvent::Connected {
                        uri: uri.clone(),
                        time: SystemTime::now(),
                        domains,
                    })
                    .is_err()
                {
                    return; // nobody listens any more
                }
                let outcome = if reconnected {
                    wait_resyncing(&uri, &session.conn, &tx, &ctl_rx)
                } else {
                    ctl_rx.recv()
                };
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
                drop(session);
                match outcome {
                    Ok(Control::Closed(reason)) => {
                        let _ = tx.try_send(MonitorEvent::Disconnected {
                            uri: uri.clone(),
                            time: SystemTime::now(),
                            reason: close_reason_word(reason),
                        });
                        reconnected = true;
                        // Drain a duplicate close notice, then reconnect at once.
                        while let Ok(c) = ctl_rx.try_recv() {
                            if matches!(c, Control::Stop) {
                                return;
                            }
                        }
                    }
                    Ok(Control::Stop) | Err(_) => return,
                }
            }
        }
    }
}
