//! The desktop application's state machine: monitor events, inspection results, user choices
//! and job results in; effects (prompt, close prompt, start job, notify, save policy) out.
//! It knows no widgets, runs no I/O and words no sentence (errors and notices stay typed
//! until a widget shows them), so every decision is unit-tested here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::libvirt::{Lifecycle, MonitorEvent, StateKind, Stopped};
use crate::overlay::disposable::Change;
use crate::overlay::{OpError, OpKind};

/// A VM is named by its connection and its name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmKey {
    pub uri: String,
    pub name: String,
}

impl VmKey {
    pub fn new(uri: &str, name: &str) -> VmKey {
        VmKey {
            uri: uri.into(),
            name: name.into(),
        }
    }

    /// The target of the application's per-VM actions (`app.commit`, …): `(uri, name)`.
    pub fn target(&self) -> glib::Variant {
        glib::prelude::ToVariant::to_variant(&(self.uri.as_str(), self.name.as_str()))
    }

    /// The type of [`VmKey::target`].
    pub fn target_type() -> &'static glib::VariantTy {
        glib::VariantTy::new("(ss)").expect("a valid type string")
    }

    /// The VM an action's target names (see [`VmKey::target`]).
    pub fn from_target(v: &glib::Variant) -> Option<VmKey> {
        let (uri, name) = v.get::<(String, String)>()?;
        Some(VmKey { uri, name })
    }
}

/// What to do when a VM shuts down, remembered per VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    #[default]
    Ask,
    AlwaysCommit,
    AlwaysDiscard,
    Ignore,
}

impl Policy {
    /// The policy's name in settings files and action targets.
    pub fn word(&self) -> &'static str {
        match self {
            Self::Ask => "ask",
            Self::AlwaysCommit => "always-commit",
            Self::AlwaysDiscard => "always-discard",
            Self::Ignore => "ignore",
        }
    }

    pub fn from_word(word: &str) -> Option<Policy> {
        [
            Self::Ask,
            Self::AlwaysCommit,
            Self::AlwaysDiscard,
            Self::Ignore,
        ]
        .into_iter()
        .find(|p| p.word() == word)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Commit,
    Discard,
    Later,
}

/// A decision the user still owes for a VM's overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub changed: u64,
    /// Why the stop was not a clean shutdown ("destroyed", "crashed", …): the disk may be
    /// inconsistent, so Discard is suggested.
    pub forced: Option<String>,
    /// Why Discard is not offered (the firmware variables could not follow the disk).
    pub no_discard: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub op: OpKind,
    pub progress: f64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Vm {
    pub active: bool,
    pub changed: Option<u64>,
    pub decision: Option<Decision>,
    pub job: Option<Job>,
    pub prompt_open: bool,
    /// The overlay must not be touched: the VM was saved, migrated or reverted to a snapshot.
    pub keep_overlay: Option<String>,
    pub last_result: Option<Notice>,
    pub policy: Policy,
    /// Running as a VM Overlay engine's paused run (this process's job, or another's, such as
    /// `vmoverlay commit` in a terminal): not the guest running, never a prompt.
    pub engine_run: Option<EngineRun>,
    /// Why Commit and Discard are not offered for this VM: the same sentence `vmoverlay
    /// commit` prints for it (from the last inspection). Policies never fire while it is set.
    pub blocked: Option<String>,
    /// The typed refusal behind [`Vm::blocked`].
    pub blocked_by: Option<OpError>,
    /// Why Discard (only) is not offered: the sentence `vmoverlay discard` prints.
    pub discard_blocked: Option<String>,
    /// Not disposable yet, and `adopt` could make it so.
    pub adoptable: bool,
    /// An adopt or release of this VM is running.
    pub changing: Option<Change>,
    /// The decision was put off ("Later" in the prompt) or found pending at start: while
    /// it stays pending and the VM is off, its notification asks for it (with Commit /
    /// Discard / Later), since on a desktop without a tray nothing else would.
    pub ask_in_notice: bool,
    /// The decision the VM's notification asks about now, if one is out.
    pub notice_shown: Option<Decision>,
    /// Its last commit, discard or rollback can be undone (see `jobs::undo`).
    pub undo: bool,
}

/// Why an inspection (discovery + changed bytes, done off the main loop) was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InspectReason {
    /// Found shut off when the program started: show as pending, never prompt.
    Startup,
    /// It just stopped; `forced` as in [`Decision`].
    Stopped { forced: Option<String> },
    /// Refresh after a job or on request.
    Refresh,
}

/// What an inspection found: the bytes the VM's overlays hold (`None` when it has no managed
/// disk or they cannot be read) and what, if anything, blocks Commit and Discard.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Inspection {
    pub changed: Option<u64>,
    pub blocked: Option<OpError>,
    /// Discard alone would be refused (a UEFI VM whose base's variables are not known).
    pub discard_blocked: Option<OpError>,
    /// It has no managed disk, and `adopt` could make it disposable.
    pub adoptable: bool,
    /// Its last commit, discard or rollback can be undone.
    pub undo: bool,
}

impl Inspection {
    pub fn changed(n: u64) -> Inspection {
        Inspection {
            changed: Some(n),
            ..Default::default()
        }
    }
}

/// Something the user is told (a notification, the status window's "Last:" line). The
/// sentence is chosen where it is shown.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// An adopt or a release ended.
    Changed {
        key: VmKey,
        change: Change,
        result: Result<(), OpError>,
    },
    Done {
        key: VmKey,
        op: OpKind,
        changed: u64,
        /// "Undo" is offered.
        undo: bool,
    },
    Failed {
        key: VmKey,
        op: OpKind,
        error: OpError,
    },
    /// The VM stopped with changes that cannot be committed or discarded now.
    Blocked { key: VmKey, error: OpError },
    /// A decision is still owed: the notification offers the answers.
    Pending { key: VmKey, decision: Decision },
}

impl Notice {
    pub fn key(&self) -> &VmKey {
        match self {
            Notice::Done { key, .. }
            | Notice::Changed { key, .. }
            | Notice::Failed { key, .. }
            | Notice::Blocked { key, .. }
            | Notice::Pending { key, .. } => key,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Monitor(MonitorEvent),
    /// Result of `Effect::Inspect`.
    Inspected {
        key: VmKey,
        reason: InspectReason,
        found: Inspection,
    },
    Choice {
        key: VmKey,
        choice: Choice,
        remember: bool,
    },
    JobProgress {
        key: VmKey,
        progress: f64,
    },
    /// The user confirmed making the VM disposable (`None`) or ordinary again (with what
    /// happens to pending changes).
    ChangeChosen {
        key: VmKey,
        change: Change,
        changes: Option<OpKind>,
    },
    /// An adopt or release ended.
    ChangeDone {
        key: VmKey,
        change: Change,
        result: Result<(), OpError>,
    },
    /// A job ended: the bytes it committed or discarded, or why it failed.
    JobDone {
        key: VmKey,
        op: OpKind,
        result: Result<u64, OpError>,
        /// It can be undone (its revisions were kept).
        undo: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Inspect {
        key: VmKey,
        reason: InspectReason,
    },
    ShowPrompt {
        key: VmKey,
        decision: Decision,
    },
    ClosePrompt {
        key: VmKey,
    },
    StartJob {
        key: VmKey,
        op: OpKind,
    },
    SavePolicy {
        key: VmKey,
        policy: Policy,
    },
    /// Adopt or release the VM (`changes`: what happens to pending changes first).
    StartChange {
        key: VmKey,
        change: Change,
        changes: Option<OpKind>,
    },
    /// Sends the VM's notification (one per VM: it replaces the one out).
    Notify(Notice),
    /// Takes the VM's notification back: its question was answered elsewhere, or no longer
    /// stands.
    Withdraw {
        key: VmKey,
    },
}

/// The tray's summary state, highest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Summary {
    Idle,
    Running,
    Pending,
    Busy,
}

#[derive(Debug, Default)]
pub struct Machine {
    pub vms: BTreeMap<VmKey, Vm>,
    pub connected: BTreeMap<String, bool>,
    policies: BTreeMap<VmKey, Policy>,
}

/// A start of a VM that is not the guest running (see [`Vm::engine_run`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineRun {
    /// Marked as a VM Overlay engine's own paused run, for this job (`"commit"`, …).
    Job(String),
    /// Over before it could be asked about: no guest ran long enough to write anything.
    Brief,
}

fn forced_word(detail: &Stopped) -> Option<String> {
    match detail {
        Stopped::Shutdown => None,
        other => Some(other.word()),
    }
}

impl Machine {
    pub fn new(policies: BTreeMap<VmKey, Policy>) -> Machine {
        Machine {
            policies,
            ..Default::default()
        }
    }

    pub fn policy(&self, key: &VmKey) -> Policy {
        self.policies.get(key).copied().unwrap_or_default()
    }

    pub fn summary(&self) -> Summary {
        self.vms
            .values()
            .map(|vm| {
                if vm.job.is_some() || vm.engine_run.is_some() || vm.changing.is_some() {
                    Summary::Busy
                } else if vm.decision.is_some() {
                    Summary::Pending
                } else if vm.active {
                    Summary::Running
                } else {
                    Summary::Idle
                }
            })
            .max()
            .unwrap_or(Summary::Idle)
    }

    fn vm(&mut self, key: &VmKey) -> &mut Vm {
        let policy = self.policy(key);
        self.vms.entry(key.clone()).or_insert_with(|| Vm {
            policy,
            ..Default::default()
        })
    }

    pub fn handle(&mut self, input: Input) -> Vec<Effect> {
        let mut out = self.dispatch(input);
        self.sync_notices(&mut out);
        out
    }

    fn dispatch(&mut self, input: Input) -> Vec<Effect> {
        match input {
            Input::Monitor(ev) => self.on_monitor(ev),
            Input::Inspected { key, reason, found } => self.on_inspected(key, reason, found),
            Input::Choice {
                key,
                choice,
                remember,
            } => self.on_choice(key, choice, remember),
            Input::JobProgress { key, progress } => {
                if let Some(job) = self.vm(&key).job.as_mut() {
                    job.progress = progress;
                }
                Vec::new()
            }
            Input::JobDone {
                key,
                op,
                result,
                undo,
            } => self.on_job_done(key, op, result, undo),
            Input::ChangeChosen {
                key,
                change,
                changes,
            } => self.on_change_chosen(key, change, changes),
            Input::ChangeDone {
                key,
                change,
                result,
            } => self.on_change_done(key, change, result),
        }
    }

    fn on_monitor(&mut self, ev: MonitorEvent) -> Vec<Effect> {
        let mut out = Vec::new();
        match ev {
            MonitorEvent::Connected { uri, domains, .. } => {
                self.connected.insert(uri.clone(), true);
                for d in domains {
                    let key = VmKey::new(&uri, &d.name);
                    let known = self.vms.contains_key(&key);
                    let vm = self.vm(&key);
                    vm.engine_run = d.engine_job.clone().map(EngineRun::Job);
                    vm.active = d.state.kind.is_active() && vm.engine_run.is_none();
                    if !vm.active && !known && d.state.kind == StateKind::Shutoff {
                        let why = Stopped::from_shutoff_reason(d.state.reason);
                        if matches!(
                            why,
                            Stopped::Saved | Stopped::Migrated | Stopped::FromSnapshot
                        ) {
                            vm.keep_overlay = Some(why.word());
                        } else {
                            out.push(Effect::Inspect {
                                key,
                                reason: InspectReason::Startup,
                            });
                        }
                    }
                }
            }
            MonitorEvent::Disconnected { uri, .. } => {
                // Says nothing about the VMs: their state is kept as it was.
                self.connected.insert(uri, false);
            }
            MonitorEvent::ConnectFailed { uri, .. } => {
                self.connected.insert(uri, false);
            }
            // Turned into stops by the model before they reach here.
            MonitorEvent::Resynced { .. } => {}
            MonitorEvent::Domain(e) => {
                let key = VmKey::new(&e.uri, &e.domain);
                match e.kind {
                    Lifecycle::Started(_) if e.engine_job.is_some() => {
                        let vm = self.vm(&key);
                        vm.engine_run = e.engine_job.map(EngineRun::Job);
                    }
                    Lifecycle::Started(_) if e.ended_before_asked => {
                        // Over before it could be asked about (the engine's lock probe, in
                        // practice): no guest ran, so nothing changed; its stop asks nothing.
                        self.vm(&key).engine_run = Some(EngineRun::Brief);
                    }
                    Lifecycle::Resumed(_) | Lifecycle::Suspended(_)
                        if self.vm(&key).engine_run.is_some() => {}
                    Lifecycle::Stopped(_) if self.vm(&key).engine_run.is_some() => {
                        // The engine's run ended; its job (here or in another process)
                        // reports the outcome and rebuilds the overlay: no question to ask.
                        let vm = self.vm(&key);
                        let brief = vm.engine_run.take() == Some(EngineRun::Brief);
                        if vm.job.is_none() && !brief {
                            vm.decision = None;
                            vm.changed = None;
                        }
                    }
                    Lifecycle::Started(_) | Lifecycle::Resumed(_) | Lifecycle::Suspended(_) => {
                        let vm = self.vm(&key);
                        vm.active = true;
                        vm.keep_overlay = None;
                        if vm.prompt_open {
                            // The choice stays pending; the question waits for the next stop.
                            vm.prompt_open = false;
                            out.push(Effect::ClosePrompt { key });
                        }
                    }
                    Lifecycle::Stopped(detail) => {
                        let vm = self.vm(&key);
                        vm.active = false;
                        match detail {
                            Stopped::Saved | Stopped::Migrated | Stopped::FromSnapshot => {
                                // Its overlay holds the saved state: never touch it.
                                vm.keep_overlay = Some(detail.word());
                            }
                            _ if vm.policy == Policy::Ignore => {}
                            _ => out.push(Effect::Inspect {
                                key,
                                reason: InspectReason::Stopped {
                                    forced: forced_word(&detail),
                                },
                            }),
                        }
                    }
                    Lifecycle::Undefined(_) => {
                        if let Some(vm) = self.vms.remove(&key) {
                            if vm.notice_shown.is_some() {
                                out.push(Effect::Withdraw { key: key.clone() });
                            }
                            if vm.prompt_open {
                                out.push(Effect::ClosePrompt { key });
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        out
    }

    fn on_inspected(
        &mut self,
        key: VmKey,
        reason: InspectReason,
        found: Inspection,
    ) -> Vec<Effect> {
        let vm = self.vm(&key);
        vm.blocked = found.blocked.as_ref().map(|e| e.to_string());
        vm.blocked_by = found.blocked.clone();
        vm.discard_blocked = found.discard_blocked.as_ref().map(|e| e.to_string());
        vm.adoptable = found.adoptable;
        vm.undo = found.undo;
        vm.changed = found.changed;
        let Some(changed) = found.changed else {
            if let Some(why) = &found.blocked {
                log::info!("{}: not managed: {why}", key.name);
            }
            vm.decision = None;
            return Vec::new();
        };
        if let Some(error) = found.blocked {
            // Nothing may be offered, and no policy fires; a stop with changes says why.
            vm.decision = None;
            let stopped = matches!(reason, InspectReason::Stopped { .. });
            return if stopped && changed > 0 && vm.job.is_none() {
                vec![Effect::Notify(Notice::Blocked { key, error })]
            } else {
                Vec::new()
            };
        }
        if changed == 0 {
            vm.decision = None;
            return Vec::new();
        }
        let forced = match &reason {
            InspectReason::Stopped { forced } => forced.clone(),
            _ => vm.decision.as_ref().and_then(|d| d.forced.clone()),
        };
        let decision = Decision {
            changed,
            forced,
            no_discard: vm.discard_blocked.clone(),
        };
        vm.decision = Some(decision.clone());
        if reason == InspectReason::Startup {
            vm.ask_in_notice = true;
        }
        if vm.active || vm.job.is_some() || !matches!(reason, InspectReason::Stopped { .. }) {
            // Startup and refreshes only mark it pending: never a burst of dialogs.
            return Vec::new();
        }
        match (vm.policy, &decision.forced) {
            (Policy::Ignore, _) => {
                vm.decision = None;
                Vec::new()
            }
            (Policy::AlwaysDiscard, _) if decision.no_discard.is_none() => {
                self.start_job(key, OpKind::Discard)
            }
            // A forced-off guest's disk may be inconsistent: ask even if "always commit".
            (Policy::AlwaysCommit, None) => self.start_job(key, OpKind::Commit),
            _ => {
                vm.prompt_open = true;
                vec![Effect::ShowPrompt { key, decision }]
            }
        }
    }

    fn start_job(&mut self, key: VmKey, op: OpKind) -> Vec<Effect> {
        let vm = self.vm(&key);
        if vm.job.is_some() || vm.active || vm.blocked.is_some() {
            return Vec::new();
        }
        if op == OpKind::Discard && vm.discard_blocked.is_some() {
            return Vec::new();
        }
        vm.job = Some(Job { op, progress: 0.0 });
        // Answered: its notification (if out) is withdrawn by `sync_notices`.
        vm.ask_in_notice = false;
        let mut out = Vec::new();
        if vm.prompt_open {
            vm.prompt_open = false;
            out.push(Effect::ClosePrompt { key: key.clone() });
        }
        out.push(Effect::StartJob { key, op });
        out
    }

    fn on_choice(&mut self, key: VmKey, choice: Choice, remember: bool) -> Vec<Effect> {
        let mut out = Vec::new();
        let remembered = match choice {
            Choice::Commit => Policy::AlwaysCommit,
            Choice::Discard => Policy::AlwaysDiscard,
            Choice::Later => Policy::Ask,
        };
        if remember && choice != Choice::Later {
            self.policies.insert(key.clone(), remembered);
            self.vm(&key).policy = remembered;
            out.push(Effect::SavePolicy {
                key: key.clone(),
                policy: remembered,
            });
        }
        match choice {
            Choice::Commit => out.extend(self.start_job(key, OpKind::Commit)),
            Choice::Discard => out.extend(self.start_job(key, OpKind::Discard)),
            Choice::Later => {
                let vm = self.vm(&key);
                // Put off in the prompt, the question moves to a notification; "Later" from
                // anywhere else (the notification itself) puts it away.
                vm.ask_in_notice = vm.prompt_open;
                if vm.prompt_open {
                    vm.prompt_open = false;
                    out.push(Effect::ClosePrompt { key });
                }
            }
        }
        out
    }

    /// Sets a VM's policy from a menu (not from a prompt).
    pub fn set_policy(&mut self, key: &VmKey, policy: Policy) -> Vec<Effect> {
        self.policies.insert(key.clone(), policy);
        self.vm(key).policy = policy;
        vec![Effect::SavePolicy {
            key: key.clone(),
            policy,
        }]
    }

    fn on_change_chosen(
        &mut self,
        key: VmKey,
        change: Change,
        changes: Option<OpKind>,
    ) -> Vec<Effect> {
        let vm = self.vm(&key);
        let possible = match change {
            Change::Adopt => vm.adoptable,
            Change::Release => vm.changed.is_some() && vm.blocked.is_none(),
        };
        if !possible || vm.active || vm.job.is_some() || vm.changing.is_some() {
            return Vec::new();
        }
        vm.changing = Some(change);
        let mut out = Vec::new();
        if vm.prompt_open {
            vm.prompt_open = false;
            out.push(Effect::ClosePrompt { key: key.clone() });
        }
        out.push(Effect::StartChange {
            key,
            change,
            changes,
        });
        out
    }

    fn on_change_done(
        &mut self,
        key: VmKey,
        change: Change,
        result: Result<(), OpError>,
    ) -> Vec<Effect> {
        let vm = self.vm(&key);
        vm.changing = None;
        vm.decision = None;
        let notice = Notice::Changed {
            key: key.clone(),
            change,
            result: result.clone(),
        };
        vm.last_result = Some(notice.clone());
        let mut out = vec![Effect::Notify(notice)];
        if result.is_ok() && change == Change::Adopt && vm.policy != Policy::Ask {
            // A VM made disposable asks after each session.
            out.extend(self.set_policy(&key, Policy::Ask));
        }
        out.push(Effect::Inspect {
            key,
            reason: InspectReason::Refresh,
        });
        out
    }

    /// Brings each VM's notification in line with its state: it asks while a decision put off
    /// is pending and could be carried out now (off, no job, nothing blocking); it is replaced
    /// when the decision changes and withdrawn when the decision was made or cannot be.
    fn sync_notices(&mut self, out: &mut Vec<Effect>) {
        for (key, vm) in self.vms.iter_mut() {
            if vm.decision.is_none() {
                vm.ask_in_notice = false;
            }
            let wanted = match &vm.decision {
                Some(d)
                    if vm.ask_in_notice
                        && !vm.active
                        && vm.job.is_none()
                        && vm.engine_run.is_none()
                        && vm.changing.is_none()
                        && vm.blocked.is_none() =>
                {
                    Some(d.clone())
                }
                _ => None,
            };
            if wanted == vm.notice_shown {
                continue;
            }
            // A notification sent now about this VM has replaced the question already.
            let replaced = out
                .iter()
                .any(|e| matches!(e, Effect::Notify(n) if n.key() == key));
            match &wanted {
                Some(decision) => out.push(Effect::Notify(Notice::Pending {
                    key: key.clone(),
                    decision: decision.clone(),
                })),
                None if !replaced => out.push(Effect::Withdraw { key: key.clone() }),
                None => {}
            }
            vm.notice_shown = wanted;
        }
    }

    fn on_job_done(
        &mut self,
        key: VmKey,
        op: OpKind,
        result: Result<u64, OpError>,
        undo: bool,
    ) -> Vec<Effect> {
        let vm = self.vm(&key);
        vm.job = None;
        match result {
            Ok(changed) => {
                vm.decision = None;
                vm.changed = Some(0);
                vm.undo = undo;
                let notice = Notice::Done {
                    key,
                    op,
                    changed,
                    undo,
                };
                vm.last_result = Some(notice.clone());
                vec![Effect::Notify(notice)]
            }
            Err(error) => {
                let notice = Notice::Failed {
                    key: key.clone(),
                    op,
                    error,
                };
                vm.last_result = Some(notice.clone());
                vec![
                    Effect::Notify(notice),
                    Effect::Inspect {
                        key,
                        reason: InspectReason::Refresh,
                    },
                ]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::libvirt::{DomainEvent, DomainSnapshot, DomainState};
    use std::time::SystemTime;

    const URI: &str = "qemu:///system";

    fn key(n: &str) -> VmKey {
        VmKey::new(URI, n)
    }

    fn ev(name: &str, event: i32, detail: i32) -> Input {
        Input::Monitor(MonitorEvent::Domain(DomainEvent {
            time: SystemTime::UNIX_EPOCH,
            uri: URI.into(),
            domain: name.into(),
            uuid: format!("uuid-{name}"),
            kind: Lifecycle::from_raw(event, detail),
            after_reconnect: false,
            engine_job: None,
            ended_before_asked: false,
        }))
    }

    fn connected(domains: &[(&str, i32, i32)]) -> Input {
        Input::Monitor(MonitorEvent::Connected {
            uri: URI.into(),
            time: SystemTime::UNIX_EPOCH,
            domains: domains
                .iter()
                .map(|(n, s, r)| DomainSnapshot {
                    name: n.to_string(),
                    uuid: format!("uuid-{n}"),
                    state: DomainState::from_raw(*s, *r),
                    engine_job: None,
                })
                .collect(),
        })
    }

    fn inspected(m: &mut Machine, name: &str, reason: InspectReason, changed: u64) -> Vec<Effect> {
        m.handle(Input::Inspected {
            key: key(name),
            reason,
            found: Inspection::changed(changed),
        })
    }

    fn stopped_clean() -> InspectReason {
        InspectReason::Stopped { forced: None }
    }

    #[test]
    fn clean_shutdown_with_changes_prompts() {
        let mut m = Machine::default();
        m.handle(connected(&[("a", 1, 1)]));
        let out = m.handle(ev("a", 5, 0));
        assert_eq!(
            out,
            vec![Effect::Inspect {
                key: key("a"),
                reason: stopped_clean()
            }]
        );
        let out = inspected(&mut m, "a", stopped_clean(), 1 << 30);
        assert_eq!(
            out,
            vec![Effect::ShowPrompt {
                key: key("a"),
                decision: Decision {
                    changed: 1 << 30,
                    forced: None,
                    no_discard: None,
                }
            }]
        );
        assert_eq!(m.summary(), Summary::Pending);
    }

    #[test]
    fn no_changes_no_prompt() {
        let mut m = Machine::default();
        m.handle(ev("a", 2, 0));
        m.handle(ev("a", 5, 0));
        assert!(inspected(&mut m, "a", stopped_clean(), 0).is_empty());
        assert_eq!(m.summary(), Summary::Idle);
    }

    #[test]
    fn forced_stops_prompt_with_a_warning() {
        for (detail, word) in [(1, "destroyed"), (2, "crashed"), (5, "failed")] {
            let mut m = Machine::default();
            let out = m.handle(ev("a", 5, detail));
            let forced = Some(word.to_string());
            assert_eq!(
                out,
                vec![Effect::Inspect {
                    key: key("a"),
                    reason: InspectReason::Stopped {
                        forced: forced.clone()
                    }
                }]
            );
            let out = inspected(
                &mut m,
                "a",
                InspectReason::Stopped {
                    forced: forced.clone(),
                },
                5,
            );
            assert_eq!(
                out,
                vec![Effect::ShowPrompt {
                    key: key("a"),
                    decision: Decision {
                        changed: 5,
                        forced,
                        no_discard: None
                    }
                }]
            );
        }
    }

    #[test]
    fn saved_migrated_snapshot_never_touch_the_overlay() {
        for detail in [3, 4, 6] {
            let mut m = Machine::default();
            m.handle(ev("a", 2, 0));
            assert!(m.handle(ev("a", 5, detail)).is_empty(), "detail {detail}");
            assert!(m.vms[&key("a")].keep_overlay.is_some());
        }
        // A managed-saved VM found at startup is not inspected either.
        let mut m = Machine::default();
        assert!(m.handle(connected(&[("s", 5, 5)])).is_empty());
    }

    #[test]
    fn startup_marks_pending_without_dialogs() {
        let mut m = Machine::default();
        let out = m.handle(connected(&[("a", 5, 1), ("b", 5, 1), ("c", 1, 1)]));
        assert_eq!(out.len(), 2, "{out:?}");
        for name in ["a", "b"] {
            // No dialog; the notification asks instead (see `notifications_ask_...`).
            let out = inspected(&mut m, name, InspectReason::Startup, 10);
            assert!(
                out.iter()
                    .all(|e| matches!(e, Effect::Notify(Notice::Pending { .. }))),
                "{out:?}"
            );
        }
        assert!(m.vms[&key("a")].decision.is_some());
        assert_eq!(m.summary(), Summary::Pending);
        // A reconnect with the same VMs does not inspect again.
        assert!(m
            .handle(connected(&[("a", 5, 1), ("b", 5, 1), ("c", 1, 1)]))
            .is_empty());
    }

    #[test]
    fn restarting_closes_the_prompt_but_keeps_the_decision() {
        let mut m = Machine::default();
        m.handle(ev("a", 5, 0));
        inspected(&mut m, "a", stopped_clean(), 7);
        assert_eq!(
            m.handle(ev("a", 2, 0)),
            vec![Effect::ClosePrompt { key: key("a") }]
        );
        let vm = &m.vms[&key("a")];
        assert!(vm.active && vm.decision.is_some() && !vm.prompt_open);
        // Commit while it runs is not started.
        let out = m.handle(Input::Choice {
            key: key("a"),
            choice: Choice::Commit,
            remember: false,
        });
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn choices_start_jobs_and_remember_policies() {
        let mut m = Machine::default();
        m.handle(ev("a", 5, 0));
        inspected(&mut m, "a", stopped_clean(), 7);
        let out = m.handle(Input::Choice {
            key: key("a"),
            choice: Choice::Commit,
            remember: true,
        });
        assert_eq!(
            out,
            vec![
                Effect::SavePolicy {
                    key: key("a"),
                    policy: Policy::AlwaysCommit
                },
                Effect::ClosePrompt { key: key("a") },
                Effect::StartJob {
                    key: key("a"),
                    op: OpKind::Commit
                },
            ]
        );
        assert_eq!(m.summary(), Summary::Busy);
        m.handle(Input::JobProgress {
            key: key("a"),
            progress: 0.5,
        });
        assert_eq!(m.vms[&key("a")].job.as_ref().unwrap().progress, 0.5);
        let out = m.handle(Input::JobDone {
            key: key("a"),
            op: OpKind::Commit,
            result: Ok(7),
            undo: false,
        });
        assert!(matches!(&out[0], Effect::Notify(Notice::Done { .. })));
        assert_eq!(m.summary(), Summary::Idle);
        // Next clean shutdown commits without asking.
        m.handle(ev("a", 2, 0));
        m.handle(ev("a", 5, 0));
        let out = inspected(&mut m, "a", stopped_clean(), 3);
        assert_eq!(
            out,
            vec![Effect::StartJob {
                key: key("a"),
                op: OpKind::Commit
            }]
        );
    }

    #[test]
    fn always_commit_still_asks_after_a_forced_stop() {
        let mut m = Machine::new([(key("a"), Policy::AlwaysCommit)].into());
        m.handle(ev("a", 5, 1));
        let forced = InspectReason::Stopped {
            forced: Some("destroyed".into()),
        };
        let out = inspected(&mut m, "a", forced, 3);
        assert!(matches!(out[0], Effect::ShowPrompt { .. }), "{out:?}");
    }

    #[test]
    fn always_discard_and_ignore() {
        let mut m = Machine::new(
            [
                (key("d"), Policy::AlwaysDiscard),
                (key("i"), Policy::Ignore),
            ]
            .into(),
        );
        m.handle(ev("d", 5, 1));
        let out = inspected(
            &mut m,
            "d",
            InspectReason::Stopped {
                forced: Some("destroyed".into()),
            },
            3,
        );
        assert_eq!(
            out,
            vec![Effect::StartJob {
                key: key("d"),
                op: OpKind::Discard
            }]
        );
        assert!(m.handle(ev("i", 5, 0)).is_empty());
    }

    #[test]
    fn later_keeps_it_pending_and_failures_are_notified() {
        let mut m = Machine::default();
        m.handle(ev("a", 5, 0));
        inspected(&mut m, "a", stopped_clean(), 7);
        let out = m.handle(Input::Choice {
            key: key("a"),
            choice: Choice::Later,
            remember: false,
        });
        assert_eq!(out[0], Effect::ClosePrompt { key: key("a") });
        assert_eq!(m.summary(), Summary::Pending);
        m.handle(Input::Choice {
            key: key("a"),
            choice: Choice::Discard,
            remember: false,
        });
        let out = m.handle(Input::JobDone {
            key: key("a"),
            op: OpKind::Discard,
            result: Err(OpError::Locked {
                path: "/o.qcow2".into(),
            }),
            undo: false,
        });
        assert!(matches!(&out[0], Effect::Notify(Notice::Failed { .. })));
        assert!(
            m.vms[&key("a")].decision.is_some(),
            "still pending after a failure"
        );
    }

    #[test]
    fn disconnect_changes_no_vm() {
        let mut m = Machine::default();
        m.handle(connected(&[("a", 1, 1)]));
        let out = m.handle(Input::Monitor(MonitorEvent::Disconnected {
            uri: URI.into(),
            time: SystemTime::UNIX_EPOCH,
            reason: "eof".into(),
        }));
        assert!(out.is_empty());
        assert!(m.vms[&key("a")].active);
        assert!(!m.connected[URI]);
    }

    #[test]
    fn the_engines_own_paused_run_is_neither_running_nor_a_stop_to_ask_about() {
        let mut m = Machine::default();
        m.handle(connected(&[("a", 5, 1)]));
        inspected(&mut m, "a", InspectReason::Startup, 4096);
        let mut started = ev("a", 2, 0);
        if let Input::Monitor(MonitorEvent::Domain(e)) = &mut started {
            e.engine_job = Some("commit".into());
        }
        // Another process is committing it: the question is taken back.
        assert_eq!(m.handle(started), vec![Effect::Withdraw { key: key("a") }]);
        assert!(m.handle(ev("a", 3, 0)).is_empty()); // suspended (paused start)
        let vm = &m.vms[&key("a")];
        assert!(!vm.active);
        assert_eq!(m.summary(), Summary::Busy);
        // Destroyed at the end of the run: no inspection, no prompt, nothing pending.
        assert!(m.handle(ev("a", 5, 1)).is_empty());
        let vm = &m.vms[&key("a")];
        assert_eq!(vm.engine_run, None);
        assert_eq!(vm.decision, None);
        assert_eq!(m.summary(), Summary::Idle);
        // The next real start and stop are the guest's again.
        m.handle(ev("a", 2, 0));
        assert!(m.vms[&key("a")].active);
        assert_eq!(
            m.handle(ev("a", 5, 0)),
            vec![Effect::Inspect {
                key: key("a"),
                reason: stopped_clean()
            }]
        );
    }

    #[test]
    fn an_engine_run_found_at_connect_is_busy_not_running() {
        let mut m = Machine::default();
        m.handle(Input::Monitor(MonitorEvent::Connected {
            uri: URI.into(),
            time: SystemTime::UNIX_EPOCH,
            domains: vec![DomainSnapshot {
                name: "a".into(),
                uuid: "uuid-a".into(),
                state: DomainState::from_raw(3, 1),
                engine_job: Some("commit".into()),
            }],
        }));
        assert!(!m.vms[&key("a")].active);
        assert_eq!(m.summary(), Summary::Busy);
        assert!(m.handle(ev("a", 5, 1)).is_empty());
    }

    #[test]
    fn a_blocked_vm_is_never_offered_nor_acted_on_by_a_policy() {
        let blocked = OpError::SavedState { vm: "a".into() };
        for policy in [Policy::Ask, Policy::AlwaysCommit, Policy::AlwaysDiscard] {
            let mut m = Machine::new([(key("a"), policy)].into());
            m.handle(ev("a", 2, 0));
            m.handle(ev("a", 5, 0));
            let out = m.handle(Input::Inspected {
                key: key("a"),
                reason: stopped_clean(),
                found: Inspection {
                    changed: Some(4096),
                    blocked: Some(blocked.clone()),
                    ..Default::default()
                },
            });
            assert_eq!(
                out,
                vec![Effect::Notify(Notice::Blocked {
                    key: key("a"),
                    error: blocked.clone()
                })],
                "{policy:?}"
            );
            let vm = &m.vms[&key("a")];
            assert_eq!(vm.blocked.as_deref(), Some(blocked.to_string().as_str()));
            assert_eq!(vm.decision, None);
            // A choice from anywhere (tray, status window) starts nothing.
            for choice in [Choice::Commit, Choice::Discard] {
                let out = m.handle(Input::Choice {
                    key: key("a"),
                    choice,
                    remember: false,
                });
                assert!(
                    !out.iter().any(|e| matches!(e, Effect::StartJob { .. })),
                    "{out:?}"
                );
            }
        }
    }

    #[test]
    fn discard_is_neither_offered_nor_automatic_when_the_firmware_cannot_follow() {
        let no_fw = OpError::FirmwareUnknown {
            vm: "a".into(),
            nvram: "/nvram/a_VARS.fd".into(),
        };
        let mut m = Machine::new([(key("a"), Policy::AlwaysDiscard)].into());
        m.handle(ev("a", 2, 0));
        m.handle(ev("a", 5, 0));
        let out = m.handle(Input::Inspected {
            key: key("a"),
            reason: stopped_clean(),
            found: Inspection {
                changed: Some(7),
                discard_blocked: Some(no_fw.clone()),
                ..Default::default()
            },
        });
        // "Always discard" asks instead, with Discard not among the answers.
        assert_eq!(
            out,
            vec![Effect::ShowPrompt {
                key: key("a"),
                decision: Decision {
                    changed: 7,
                    forced: None,
                    no_discard: Some(no_fw.to_string()),
                }
            }]
        );
        let out = m.handle(Input::Choice {
            key: key("a"),
            choice: Choice::Discard,
            remember: false,
        });
        assert!(out.is_empty(), "{out:?}");
        let out = m.handle(Input::Choice {
            key: key("a"),
            choice: Choice::Commit,
            remember: false,
        });
        assert!(out.contains(&Effect::StartJob {
            key: key("a"),
            op: OpKind::Commit
        }));
    }

    #[test]
    fn adopt_and_release_run_once_and_adopt_sets_the_policy_to_ask() {
        let mut m = Machine::new([(key("a"), Policy::AlwaysDiscard)].into());
        m.handle(connected(&[("a", 5, 1)]));
        // Not adoptable yet (not inspected): nothing happens.
        let adopt = Input::ChangeChosen {
            key: key("a"),
            change: Change::Adopt,
            changes: None,
        };
        assert!(m.handle(adopt.clone()).is_empty());
        m.handle(Input::Inspected {
            key: key("a"),
            reason: InspectReason::Startup,
            found: Inspection {
                adoptable: true,
                ..Default::default()
            },
        });
        assert_eq!(
            m.handle(adopt.clone()),
            vec![Effect::StartChange {
                key: key("a"),
                change: Change::Adopt,
                changes: None
            }]
        );
        assert_eq!(m.summary(), Summary::Busy);
        assert!(m.handle(adopt).is_empty(), "not twice");
        let out = m.handle(Input::ChangeDone {
            key: key("a"),
            change: Change::Adopt,
            result: Ok(()),
        });
        assert!(out.contains(&Effect::SavePolicy {
            key: key("a"),
            policy: Policy::Ask
        }));
        assert_eq!(m.vms[&key("a")].policy, Policy::Ask);
        // Release needs a managed disk.
        m.handle(Input::Inspected {
            key: key("a"),
            reason: InspectReason::Refresh,
            found: Inspection::changed(5),
        });
        let out = m.handle(Input::ChangeChosen {
            key: key("a"),
            change: Change::Release,
            changes: Some(OpKind::Discard),
        });
        assert!(matches!(out[0], Effect::StartChange { .. }), "{out:?}");
    }

    fn later(m: &mut Machine, name: &str) -> Vec<Effect> {
        m.handle(Input::Choice {
            key: key(name),
            choice: Choice::Later,
            remember: false,
        })
    }

    fn pending(name: &str, changed: u64) -> Effect {
        Effect::Notify(Notice::Pending {
            key: key(name),
            decision: Decision {
                changed,
                forced: None,
                no_discard: None,
            },
        })
    }

    #[test]
    fn later_in_the_prompt_moves_the_question_to_a_notification() {
        let mut m = Machine::default();
        m.handle(ev("a", 2, 0));
        m.handle(ev("a", 5, 0));
        let out = inspected(&mut m, "a", stopped_clean(), 7);
        assert!(
            !out.iter().any(|e| matches!(e, Effect::Notify(_))),
            "the prompt alone asks first: {out:?}"
        );
        assert_eq!(
            later(&mut m, "a"),
            vec![Effect::ClosePrompt { key: key("a") }, pending("a", 7)]
        );
        // Asked again, nothing new is sent.
        assert!(m
            .handle(Input::Inspected {
                key: key("a"),
                reason: InspectReason::Refresh,
                found: Inspection::changed(7),
            })
            .is_empty());
        // The state changed (more bytes): the notification is replaced.
        assert_eq!(
            inspected(&mut m, "a", InspectReason::Refresh, 9),
            vec![pending("a", 9)]
        );
        // Answered from its button (or the tray, or the status window): withdrawn.
        let out = m.handle(Input::Choice {
            key: key("a"),
            choice: Choice::Commit,
            remember: false,
        });
        assert_eq!(
            out,
            vec![
                Effect::StartJob {
                    key: key("a"),
                    op: OpKind::Commit
                },
                Effect::Withdraw { key: key("a") },
            ]
        );
        // The result replaces nothing pending: it is sent as usual, and nothing asks again.
        let out = m.handle(Input::JobDone {
            key: key("a"),
            op: OpKind::Commit,
            result: Ok(9),
            undo: false,
        });
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(matches!(&out[0], Effect::Notify(Notice::Done { .. })));
    }

    #[test]
    fn notifications_ask_for_vms_found_pending_and_later_there_puts_them_away() {
        let mut m = Machine::default();
        m.handle(connected(&[("a", 5, 1), ("b", 5, 1)]));
        assert_eq!(
            inspected(&mut m, "a", InspectReason::Startup, 5),
            vec![pending("a", 5)]
        );
        assert!(inspected(&mut m, "b", InspectReason::Startup, 0).is_empty());
        // "Later" from the notification itself (no prompt open): put away.
        assert_eq!(later(&mut m, "a"), vec![Effect::Withdraw { key: key("a") }]);
        assert!(later(&mut m, "a").is_empty());
    }

    #[test]
    fn the_notification_follows_the_vm_until_the_prompt_answers() {
        let mut m = Machine::default();
        m.handle(ev("a", 2, 0));
        m.handle(ev("a", 5, 0));
        inspected(&mut m, "a", stopped_clean(), 7);
        later(&mut m, "a");
        // Started again: nothing can be done while it runs, so the notification goes.
        assert_eq!(
            m.handle(ev("a", 2, 0)),
            vec![Effect::Withdraw { key: key("a") }]
        );
        // Stopped again: the prompt asks, and the notification is back with the new size.
        m.handle(ev("a", 5, 0));
        let out = inspected(&mut m, "a", stopped_clean(), 8);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(matches!(out[0], Effect::ShowPrompt { .. }));
        assert_eq!(out[1], pending("a", 8));
        // The prompt answers: the notification is withdrawn.
        let out = m.handle(Input::Choice {
            key: key("a"),
            choice: Choice::Discard,
            remember: false,
        });
        assert_eq!(
            out,
            vec![
                Effect::ClosePrompt { key: key("a") },
                Effect::StartJob {
                    key: key("a"),
                    op: OpKind::Discard
                },
                Effect::Withdraw { key: key("a") },
            ]
        );
    }

    #[test]
    fn a_notification_about_the_vm_replaces_the_question_without_a_withdraw() {
        let mut m = Machine::default();
        m.handle(connected(&[("a", 5, 1)]));
        inspected(&mut m, "a", InspectReason::Startup, 5);
        // Found blocked now (say, a snapshot was taken): the question cannot stand, and the
        // notification that says why replaces it (a withdraw would take that one back).
        // (Its start fell in a reconnect: only the stop is seen.)
        let blocked = OpError::SavedState { vm: "a".into() };
        m.handle(ev("a", 5, 0));
        let out = m.handle(Input::Inspected {
            key: key("a"),
            reason: stopped_clean(),
            found: Inspection {
                changed: Some(4096),
                blocked: Some(blocked.clone()),
                discard_blocked: None,
                adoptable: false,
                undo: false,
            },
        });
        assert_eq!(
            out,
            vec![Effect::Notify(Notice::Blocked {
                key: key("a"),
                error: blocked
            })]
        );
        // A VM undefined while asked about: withdrawn.
        let mut m = Machine::default();
        m.handle(connected(&[("u", 5, 1)]));
        inspected(&mut m, "u", InspectReason::Startup, 5);
        assert_eq!(
            m.handle(ev("u", 1, 0)),
            vec![Effect::Withdraw { key: key("u") }]
        );
    }
}
