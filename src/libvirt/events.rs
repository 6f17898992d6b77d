//! Typed libvirt lifecycle events and domain states.
//!
//! Codes come from `libvirt-domain.h`. Codes a newer libvirt adds map to explicit `Other(n)`
//! variants, never to a panic.

use std::time::SystemTime;

/// Declares a detail enum with its libvirt code and its lower-case word.
macro_rules! codes {
    ($(#[$m:meta])* $name:ident { $($code:literal => $var:ident $word:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($var,)*
            /// A code this build does not know (a newer libvirt).
            Other(i32),
        }

        impl $name {
            pub fn from_raw(code: i32) -> Self {
                match code {
                    $($code => Self::$var,)*
                    n => Self::Other(n),
                }
            }

            /// The lower-case word used in `watch` output, e.g. `"shutdown"`.
            pub fn word(&self) -> String {
                match self {
                    $(Self::$var => $word.to_string(),)*
                    Self::Other(n) => format!("other({n})"),
                }
            }
        }
    };
}

codes!(Defined { 0 => Added "added", 1 => Updated "updated", 2 => Renamed "renamed", 3 => FromSnapshot "from-snapshot" });
codes!(Undefined { 0 => Removed "removed", 1 => Renamed "renamed" });
codes!(Started { 0 => Booted "booted", 1 => Migrated "migrated", 2 => Restored "restored", 3 => FromSnapshot "from-snapshot", 4 => Wakeup "wakeup" });
codes!(Suspended {
    0 => Paused "paused", 1 => Migrated "migrated", 2 => IoError "ioerror", 3 => Watchdog "watchdog",
    4 => Restored "restored", 5 => FromSnapshot "from-snapshot", 6 => ApiError "api-error",
    7 => Postcopy "postcopy", 8 => PostcopyFailed "postcopy-failed",
});
codes!(Resumed { 0 => Unpaused "unpaused", 1 => Migrated "migrated", 2 => FromSnapshot "from-snapshot", 3 => Postcopy "postcopy", 4 => PostcopyFailed "postcopy-failed" });
codes!(
    /// Why a domain stopped. The last two never come from an event: they are the
    /// shut-off reasons `unknown` and `daemon` that a reconnect can observe.
    Stopped {
        0 => Shutdown "shutdown", 1 => Destroyed "destroyed", 2 => Crashed "crashed",
        3 => Migrated "migrated", 4 => Saved "saved", 5 => Failed "failed",
        6 => FromSnapshot "from-snapshot", -100 => Unknown "unknown", -101 => Daemon "daemon",
    }
);
codes!(Shutdown { 0 => Finished "finished", 1 => Guest "guest", 2 => Host "host" });
codes!(PmSuspended { 0 => Memory "memory", 1 => Disk "disk" });
codes!(Crashed { 0 => Panicked "panicked", 1 => Crashloaded "crashloaded" });

impl Stopped {
    /// The stop detail matching a `VIR_DOMAIN_SHUTOFF_*` state reason.
    pub fn from_shutoff_reason(reason: i32) -> Self {
        match reason {
            1 => Self::Shutdown,
            2 => Self::Destroyed,
            3 => Self::Crashed,
            4 => Self::Migrated,
            5 => Self::Saved,
            6 => Self::Failed,
            7 => Self::FromSnapshot,
            8 => Self::Daemon,
            0 => Self::Unknown,
            n => Self::Other(n),
        }
    }
}

/// A lifecycle event: the event kind with its typed detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lifecycle {
    Defined(Defined),
    Undefined(Undefined),
    Started(Started),
    Suspended(Suspended),
    Resumed(Resumed),
    Stopped(Stopped),
    Shutdown(Shutdown),
    PmSuspended(PmSuspended),
    Crashed(Crashed),
    Other { event: i32, detail: i32 },
}

impl Lifecycle {
    pub fn from_raw(event: i32, detail: i32) -> Self {
        match event {
            0 => Self::Defined(Defined::from_raw(detail)),
            1 => Self::Undefined(Undefined::from_raw(detail)),
            2 => Self::Started(Started::from_raw(detail)),
            3 => Self::Suspended(Suspended::from_raw(detail)),
            4 => Self::Resumed(Resumed::from_raw(detail)),
            5 => Self::Stopped(Stopped::from_raw(detail)),
            6 => Self::Shutdown(Shutdown::from_raw(detail)),
            7 => Self::PmSuspended(PmSuspended::from_raw(detail)),
            8 => Self::Crashed(Crashed::from_raw(detail)),
            event => Self::Other { event, detail },
        }
    }

    /// The event word: `"started"`, `"stopped"`, …
    pub fn event_word(&self) -> String {
        match self {
            Self::Defined(_) => "defined".into(),
            Self::Undefined(_) => "undefined".into(),
            Self::Started(_) => "started".into(),
            Self::Suspended(_) => "suspended".into(),
            Self::Resumed(_) => "resumed".into(),
            Self::Stopped(_) => "stopped".into(),
            Self::Shutdown(_) => "shutdown".into(),
            Self::PmSuspended(_) => "pmsuspended".into(),
            Self::Crashed(_) => "crashed".into(),
            Self::Other { event, .. } => format!("other({event})"),
        }
    }

    /// The detail word: `"shutdown"`, `"guest"`, `"destroyed"`, …
    pub fn detail_word(&self) -> String {
        match self {
            Self::Defined(d) => d.word(),
            Self::Undefined(d) => d.word(),
            Self::Started(d) => d.word(),
            Self::Suspended(d) => d.word(),
            Self::Resumed(d) => d.word(),
            Self::Stopped(d) => d.word(),
            Self::Shutdown(d) => d.word(),
            Self::PmSuspended(d) => d.word(),
            Self::Crashed(d) => d.word(),
            Self::Other { detail, .. } => format!("other({detail})"),
        }
    }
}

/// A lifecycle event of one domain on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainEvent {
    pub time: SystemTime,
    pub uri: String,
    pub domain: String,
    pub uuid: String,
    pub kind: Lifecycle,
    /// Not delivered by libvirt as an event but inferred from the domain's state after the
    /// connection came back (the domain stopped while we were disconnected).
    pub after_reconnect: bool,
    /// On `started`: this is VM Overlay's own paused run (its live definition carries the
    /// job marker), e.g. `"commit"`; the guest never runs in it.
    pub engine_job: Option<String>,
    /// On `started`: the domain was already shut off again when the monitor asked about it
    /// (a run shorter than the event's way here, such as the engine's lock probe): no guest
    /// ran long enough to write anything.
    pub ended_before_asked: bool,
}

/// `virDomainState`, with the raw reason code kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateKind {
    NoState,
    Running,
    Blocked,
    Paused,
    ShuttingDown,
    Shutoff,
    Crashed,
    PmSuspended,
    Other(i32),
}

impl StateKind {
    pub fn from_raw(code: i32) -> Self {
        match code {
            0 => Self::NoState,
            1 => Self::Running,
            2 => Self::Blocked,
            3 => Self::Paused,
            4 => Self::ShuttingDown,
            5 => Self::Shutoff,
            6 => Self::Crashed,
            7 => Self::PmSuspended,
            n => Self::Other(n),
        }
    }

    pub fn word(&self) -> String {
        match self {
            Self::NoState => "nostate".into(),
            Self::Running => "running".into(),
            Self::Blocked => "blocked".into(),
            Self::Paused => "paused".into(),
            Self::ShuttingDown => "shutting-down".into(),
            Self::Shutoff => "shutoff".into(),
            Self::Crashed => "crashed".into(),
            Self::PmSuspended => "pmsuspended".into(),
            Self::Other(n) => format!("other({n})"),
        }
    }

    /// True when a QEMU process exists for the domain (its images are in use).
    pub fn is_active(&self) -> bool {
        !matches!(self, Self::Shutoff | Self::NoState)
    }
}

/// A domain's state with the reason libvirt gives for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DomainState {
    pub kind: StateKind,
    pub reason: i32,
}

impl DomainState {
    pub fn from_raw(state: i32, reason: i32) -> Self {
        Self {
            kind: StateKind::from_raw(state),
            reason,
        }
    }

    /// The reason as a word, as `virsh domstate --reason` would say it.
    pub fn reason_word(&self) -> String {
        let table: &[&str] = match self.kind {
            StateKind::Running => &[
                "unknown",
                "booted",
                "migrated",
                "restored",
                "from-snapshot",
                "unpaused",
                "migration-canceled",
                "save-canceled",
                "wakeup",
                "crashed",
                "postcopy",
            ],
            StateKind::Paused => &[
                "unknown",
                "user",
                "migration",
                "save",
                "dump",
                "ioerror",
                "watchdog",
                "from-snapshot",
                "shutting-down",
                "snapshot",
                "crashed",
                "starting-up",
                "postcopy",
                "postcopy-failed",
            ],
            StateKind::ShuttingDown => &["unknown", "user"],
            StateKind::Shutoff => &[
                "unknown",
                "shutdown",
                "destroyed",
                "crashed",
                "migrated",
                "saved",
                "failed",
                "from-snapshot",
                "daemon",
            ],
            StateKind::Crashed => &["unknown", "panicked"],
            StateKind::PmSuspended => &["unknown"],
            StateKind::Blocked | StateKind::NoState | StateKind::Other(_) => &["unknown"],
        };
        usize::try_from(self.reason)
            .ok()
            .and_then(|i| table.get(i))
            .map(|w| w.to_string())
            .unwrap_or_else(|| format!("other({})", self.reason))
    }
}

/// One domain as seen when (re)connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSnapshot {
    pub name: String,
    pub uuid: String,
    pub state: DomainState,
    /// Running as VM Overlay's own paused run (see [`DomainEvent::engine_job`]).
    pub engine_job: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes_have_words() {
        let ev = Lifecycle::from_raw(5, 0);
        assert_eq!(ev, Lifecycle::Stopped(Stopped::Shutdown));
        assert_eq!(
            (ev.event_word(), ev.detail_word()),
            ("stopped".into(), "shutdown".into())
        );
        let ev = Lifecycle::from_raw(6, 1);
        assert_eq!(
            (ev.event_word(), ev.detail_word()),
            ("shutdown".into(), "guest".into())
        );
        let ev = Lifecycle::from_raw(5, 6);
        assert_eq!(ev.detail_word(), "from-snapshot");
        assert_eq!(Lifecycle::from_raw(2, 0).detail_word(), "booted");
    }

    #[test]
    fn unknown_codes_are_other_not_panics() {
        let ev = Lifecycle::from_raw(42, 7);
        assert_eq!(
            ev,
            Lifecycle::Other {
                event: 42,
                detail: 7
            }
        );
        assert_eq!(ev.event_word(), "other(42)");
        assert_eq!(ev.detail_word(), "other(7)");
        assert_eq!(Lifecycle::from_raw(5, 77).detail_word(), "other(77)");
        assert_eq!(Lifecycle::from_raw(5, -1).detail_word(), "other(-1)");
        assert_eq!(DomainState::from_raw(5, 99).reason_word(), "other(99)");
        assert_eq!(DomainState::from_raw(12, 0).kind.word(), "other(12)");
    }

    #[test]
    fn shutoff_reasons_map_to_stop_details() {
        assert_eq!(Stopped::from_shutoff_reason(1), Stopped::Shutdown);
        assert_eq!(Stopped::from_shutoff_reason(2), Stopped::Destroyed);
        assert_eq!(Stopped::from_shutoff_reason(3), Stopped::Crashed);
        assert_eq!(Stopped::from_shutoff_reason(5), Stopped::Saved);
        assert_eq!(Stopped::from_shutoff_reason(0).word(), "unknown");
        assert_eq!(Stopped::from_shutoff_reason(8).word(), "daemon");
        assert_eq!(DomainState::from_raw(5, 2).reason_word(), "destroyed");
        assert_eq!(DomainState::from_raw(1, 1).reason_word(), "booted");
    }

    #[test]
    fn activity_follows_state() {
        assert!(StateKind::Running.is_active());
        assert!(StateKind::Paused.is_active());
        assert!(!StateKind::Shutoff.is_active());
    }
}
