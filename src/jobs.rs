//! The one operation pipeline, shared by the command line and the application (no GTK):
//!
//! 1. **plan**: find a VM's managed disks, say per disk why one is refused, check every
//!    precondition of every disk before the first is written;
//! 2. **run**: the disks one after the other on a worker thread, reporting typed events;
//! 3. **recover**: finish what the journal says an earlier run left half-done;
//! 4. **record**: remember each disk's last result (shown by `status`).
//!
//! A fix to any step lands once, and the CLI, the prompt, the tray and the status window
//! refuse the same way with the same sentence.

use std::path::Path;

use virt::connect::Connect;

use crate::libvirt::domains::{self, LibvirtCheck};
use crate::overlay::discover::parse_disks;
use crate::overlay::disposable::{self, AdoptPlan, ChangeRecord};
use crate::overlay::history;
use crate::overlay::{
    image, ops, DomainCheck, DomainDisks, EngineChoice, FirmwareRestore, FirmwareStore, Journal,
    ManagedDisk, OpError, OpKind, Outcome, Pin, Progress, Record, Request, SkipReason,
};
use crate::units::human_bytes;

/// What every step needs besides the VM: where the journal is, how the engine of each disk
/// is chosen, the user's pins, and every other connection this process has open (a base may
/// be used by a domain on any of them).
#[derive(Clone)]
pub struct Context {
    pub journal: Journal,
    pub engine: EngineChoice,
    /// Pins given for this run (the old command line's `VM --overlay --base`), per VM name.
    pub run_pins: Vec<(String, Pin)>,
    pub others: Vec<(String, Connect)>,
}

impl Context {
    pub fn new(engine: EngineChoice) -> Context {
        Context {
            journal: Journal::default_location(),
            engine,
            run_pins: Vec::new(),
            others: Vec::new(),
        }
    }

    /// The pins of `vm`: this run's, then the settings file's.
    pub fn pins_for(&self, vm: &str) -> Result<Vec<Pin>, OpError> {
        let mut pins: Vec<Pin> = self
            .run_pins
            .iter()
            .filter(|(name, _)| name == vm)
            .map(|(_, p)| p.clone())
            .collect();
        pins.extend(
            crate::settings::pins_for(vm).map_err(|e| OpError::NotFound {
                what: e.to_string(),
            })?,
        );
        Ok(pins)
    }

    /// Where the firmware variables that go with each VM's base are kept.
    pub fn firmware(&self) -> FirmwareStore {
        FirmwareStore::beside(self.journal.dir())
    }

    /// The domain check of `vm` on `conn`, knowing this context's other connections.
    pub fn check(&self, conn: &Connect, uri: &str, vm: &str) -> LibvirtCheck {
        let scan_dirs = crate::settings::scan_dirs().unwrap_or_else(|e| {
            log::warn!("ignoring the directories to scan: {e}");
            Vec::new()
        });
        LibvirtCheck::new(conn.clone(), uri, vm)
            .with_others(self.others.clone())
            .with_scan_dirs(scan_dirs)
    }
}

/// A VM's disks as found now, with its check.
pub struct Found {
    pub check: LibvirtCheck,
    pub disks: DomainDisks,
}

pub fn find(ctx: &Context, conn: &Connect, uri: &str, vm: &str) -> Result<Found, OpError> {
    found_with(ctx, ctx.check(conn, uri, vm), vm)
}

/// As [`find`], for looking only (`status`, [`assess`]): the definition is read once. `inactive`
/// when the domain was just listed as shut off.
pub fn find_to_look(
    ctx: &Context,
    conn: &Connect,
    uri: &str,
    vm: &str,
    inactive: bool,
) -> Result<Found, OpError> {
    found_with(ctx, ctx.check(conn, uri, vm).inspecting(inactive), vm)
}

/// As [`find_to_look`], for a domain just listed with its handle and what `kept` says it
/// has (`status`).
pub fn find_listed(
    ctx: &Context,
    conn: &Connect,
    uri: &str,
    (listed, handle): (&crate::libvirt::DomainSnapshot, virt::domain::Domain),
    kept: &domains::KeptState,
) -> Result<Found, OpError> {
    let inactive = !listed.state.kind.is_active();
    let check = ctx
        .check(conn, uri, &listed.name)
        .inspecting(inactive)
        .with_handle(handle)
        .with_listed_state(kept, &listed.uuid);
    found_with(ctx, check, &listed.name)
}

fn found_with(ctx: &Context, check: LibvirtCheck, vm: &str) -> Result<Found, OpError> {
    let pins = ctx.pins_for(vm)?;
    let disks = domains::domain_disks(&check, ctx.engine, &pins)?;
    Ok(Found { check, disks })
}

/// An operation on some disks of one VM, every precondition checked.
pub struct Plan {
    pub op: OpKind,
    pub uri: String,
    pub vm: String,
    pub conn: Connect,
    /// Each disk's request and the bytes its overlay holds now.
    pub disks: Vec<(Request, u64)>,
    /// A whole-VM commit of a UEFI VM: its variables are recorded as the base's afterwards.
    pub record_firmware: Option<(String, std::path::PathBuf)>,
    /// A UEFI VM with one disk: the revision the operation takes keeps its variables.
    pub history_firmware: Option<history::FirmwareFollow>,
}

/// Whether a UEFI VM's variables follow its history: only for a VM with one disk, as a
/// rollback and an undo work disk by disk (the variables go with the whole VM).
fn firmware_follows(found: &Found, vm: &str) -> Option<history::FirmwareFollow> {
    if found.disks.managed.len() != 1 {
        return None;
    }
    let (uuid, nvram) = firmware_of(&found.check, vm).ok().flatten()?;
    Some(history::FirmwareFollow { uuid, nvram })
}

/// How a discard treats a UEFI VM's firmware variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Firmware {
    /// Put back the variables that go with the base (refuse when they are not known).
    #[default]
    FollowDisk,
    /// Keep the current variables (`discard --keep-firmware`).
    Keep,
}

/// The firmware variables `vm` has and whether this process can keep them in step:
/// `Ok(None)` for a VM without UEFI variables.
fn firmware_of(
    check: &dyn DomainCheck,
    vm: &str,
) -> Result<Option<(String, std::path::PathBuf)>, OpError> {
    let Some(nvram) = check.nvram() else {
        return Ok(None);
    };
    let unreachable = |reason: String| OpError::FirmwareUnreachable {
        vm: vm.to_string(),
        nvram: nvram.clone(),
        reason,
    };
    let uuid = check
        .uuid()
        .ok_or_else(|| unreachable("the domain has no UUID".into()))?;
    std::fs::File::open(&nvram).map_err(|e| unreachable(e.to_string()))?;
    image::is_writable(&nvram).map_err(unreachable)?;
    Ok(Some((uuid, nvram)))
}

impl Plan {
    pub fn changed_bytes(&self) -> u64 {
        self.disks.iter().map(|(_, n)| n).sum()
    }
}

/// The refusal for a disk the definition lists but that is not managed.
fn not_managed(vm: &str, target: &str, reason: &SkipReason) -> OpError {
    match reason {
        SkipReason::BackingMismatch {
            overlay,
            xml_base,
            header_base,
        } => OpError::BackingMismatch {
            vm: vm.to_string(),
            overlay: overlay.clone(),
            xml_base: xml_base.clone(),
            header_base: header_base.clone(),
        },
        reason => OpError::DiskNotManaged {
            vm: vm.to_string(),
            disk: target.to_string(),
            reason: Box::new(reason.clone()),
        },
    }
}

/// The disks `op` works on: `only` (a target), or every managed disk. Refuses with the
/// reason when there is none, and when a disk whose backing file is in dispute would be left
/// out of a whole-VM operation.
fn chosen_disks(
    vm: &str,
    found: &DomainDisks,
    only: Option<&str>,
) -> Result<Vec<ManagedDisk>, OpError> {
    if let Some(t) = only {
        if let Some(d) = found.managed.iter().find(|d| d.target == t) {
            return Ok(vec![d.clone()]);
        }
        return Err(match found.skipped.iter().find(|d| d.target == t) {
            Some(s) => not_managed(vm, t, &s.reason),
            None => OpError::NoSuchDisk {
                vm: vm.to_string(),
                disk: t.to_string(),
            },
        });
    }
    if let Some(s) = found
        .skipped
        .iter()
        .find(|s| matches!(s.reason, SkipReason::BackingMismatch { .. }))
    {
        return Err(not_managed(vm, &s.target, &s.reason));
    }
    if found.managed.is_empty() {
        return Err(OpError::NoManagedDisk {
            vm: vm.to_string(),
            skipped: found
                .skipped
                .iter()
                .map(|s| (s.target.clone(), s.reason.clone()))
                .collect(),
        });
    }
    Ok(found.managed.clone())
}

/// Plans `op` on `vm` (all managed disks, or `only`): every precondition of every disk holds
/// before the first one is written. Blocking (libvirt, qemu-img).
pub fn plan(
    ctx: &Context,
    conn: &Connect,
    uri: &str,
    vm: &str,
    op: OpKind,
    only: Option<&str>,
    firmware: Firmware,
) -> Result<Plan, OpError> {
    let found = find(ctx, conn, uri, vm)?;
    let disks = chosen_disks(vm, &found.disks, only)?;
    // The firmware variables follow the whole VM's disks, not one disk of several.
    let whole_vm = disks.len() == found.disks.managed.len();
    let uefi = match (whole_vm, firmware) {
        (true, Firmware::FollowDisk) => firmware_of(&found.check, vm),
        (true, Firmware::Keep) if op == OpKind::Commit => firmware_of(&found.check, vm),
        _ => Ok(None),
    };
    let mut restore = None;
    let mut record_firmware = None;
    match op {
        OpKind::Discard => {
            if let Some((uuid, nvram)) = uefi? {
                if !ctx.firmware().known(&uuid) {
                    return Err(OpError::FirmwareUnknown {
                        vm: vm.to_string(),
                        nvram,
                    });
                }
                restore = Some(FirmwareRestore {
                    from: ctx.firmware().path_for(&uuid),
                    nvram,
                });
            }
        }
        // A commit keeps the variables; it only records them when it can.
        OpKind::Commit => record_firmware = uefi.ok().flatten(),
    }
    let last = disks.len().saturating_sub(1);
    let mut planned = Vec::new();
    for (i, disk) in disks.into_iter().enumerate() {
        let req = Request {
            op,
            uri: uri.to_string(),
            domain: vm.to_string(),
            disk,
            firmware: if i == last { restore.clone() } else { None },
        };
        // An interrupted commit that waits for the user's word: committing finishes it.
        if op == OpKind::Commit && resumable_commit(&ctx.journal, &req.disk.overlay).is_some() {
            let changed = ops::changed_bytes(&req.disk, &found.check).unwrap_or(0);
            planned.push((req, changed));
            continue;
        }
        let changed = ops::preflight(&req, &found.check, &ctx.journal)?;
        planned.push((req, changed));
    }
    Ok(Plan {
        op,
        uri: uri.to_string(),
        vm: vm.to_string(),
        conn: conn.clone(),
        disks: planned,
        record_firmware,
        history_firmware: firmware_follows(&found, vm),
    })
}

fn resumable_commit(journal: &Journal, overlay: &Path) -> Option<Record> {
    journal.get(overlay).filter(|r| r.op == OpKind::Commit)
}

/// What blocks `vm` now, and the bytes its overlays hold: for the status window, the tray,
/// the prompt and `status --json`.
pub struct Assessment {
    pub changed: Option<u64>,
    /// Why neither Commit nor Discard may be offered (the sentence `commit` would print).
    pub blocked: Option<OpError>,
    /// Why Discard (only) may not be offered: the firmware variables cannot follow the disk.
    pub discard_blocked: Option<OpError>,
    /// No disk is disposable yet, and `adopt` could make the VM so.
    pub adoptable: bool,
    /// "Undo" can take the VM back to before its last commit, discard or rollback.
    pub undo: bool,
    /// The bytes each managed disk's overlay holds (by target), when all could be read.
    pub per_disk: Vec<(String, u64)>,
}

/// Looks at `vm` without writing or locking anything. Blocking.
pub fn assess(ctx: &Context, conn: &Connect, uri: &str, vm: &str) -> Assessment {
    let found = match find_to_look(ctx, conn, uri, vm, false) {
        Ok(f) => f,
        Err(e) => {
            return Assessment {
                changed: None,
                blocked: Some(e),
                discard_blocked: None,
                adoptable: false,
                undo: false,
                per_disk: Vec::new(),
            }
        }
    };
    let mut assessed = assess_found(ctx, vm, &found);
    assessed.adoptable = found.disks.managed.is_empty()
        && adoptable(ctx, &found, vm).iter().any(|(_, e)| e.is_none());
    assessed
}

/// As [`assess`], for disks already found.
pub fn assess_found(ctx: &Context, vm: &str, found: &Found) -> Assessment {
    let disks = match chosen_disks(vm, &found.disks, None) {
        Ok(d) => d,
        Err(e) => {
            return Assessment {
                changed: None,
                blocked: Some(e),
                discard_blocked: None,
                adoptable: false,
                undo: false,
                per_disk: Vec::new(),
            }
        }
    };
    let mut changed = 0;
    let mut per_disk = Vec::new();
    let mut blocked = found.check.ensure_no_saved_state().err();
    for disk in &disks {
        match ops::changed_bytes(disk, &found.check) {
            Ok(n) => {
                changed += n;
                per_disk.push((disk.target.clone(), n));
            }
            Err(e) => {
                return Assessment {
                    changed: None,
                    blocked: Some(e),
                    discard_blocked: None,
                    adoptable: false,
                    undo: false,
                    per_disk: Vec::new(),
                }
            }
        }
        if blocked.is_none() {
            blocked = found
                .check
                .images(disk.engine)
                .and_then(|images| images.ensure_nothing_inside(disk, true))
                .err();
        }
        if blocked.is_none() {
            let record = ctx.journal.path_for(&disk.overlay);
            if record.exists() {
                blocked = Some(OpError::Busy {
                    overlay: disk.overlay.clone(),
                    journal: record,
                });
            }
        }
    }
    let discard_blocked = match firmware_of(&found.check, vm) {
        Ok(None) => None,
        Err(e) => Some(e),
        Ok(Some((uuid, nvram))) => {
            let store = ctx.firmware();
            if !store.known(&uuid) && changed == 0 && blocked.is_none() {
                // Disks and base agree now: these are the variables that go with the base.
                if let Err(e) = store.record(&uuid, &nvram) {
                    log::warn!("{vm}: recording its firmware variables: {e}");
                }
            }
            (!store.known(&uuid)).then(|| OpError::FirmwareUnknown {
                vm: vm.to_string(),
                nvram,
            })
        }
    };
    let undo = undo_points(ctx, &disks).is_some();
    Assessment {
        changed: Some(changed),
        blocked,
        discard_blocked,
        adoptable: false,
        undo,
        per_disk,
    }
}

/// What a running plan reports, in order: progress of each disk, then one `Done`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Progress { target: String, progress: Progress },
    Done(Result<Done, OpError>),
}

/// A finished plan: what each disk held before.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    pub op: OpKind,
    pub outcomes: Vec<Outcome>,
    /// It can be undone (see [`undo`]).
    pub undo: bool,
}

impl Done {
    pub fn changed_bytes(&self) -> u64 {
        self.outcomes.iter().map(|o| o.changed_bytes).sum()
    }
}

/// Runs `plan` disk after disk on a worker thread; stops at the first failure. Each disk's
/// result is recorded. Await the receiver on a main loop, or `recv_blocking`.
pub fn spawn(plan: Plan, ctx: &Context) -> async_channel::Receiver<Event> {
    let (tx, rx) = async_channel::unbounded();
    let ctx = ctx.clone();
    std::thread::Builder::new()
        .name(format!("{} {}", plan.op.word(), plan.vm))
        .spawn(move || {
            let result = run(&plan, &ctx, &mut |target, progress| {
                let _ = tx.try_send(Event::Progress {
                    target: target.to_string(),
                    progress,
                });
            });
            let _ = tx.try_send(Event::Done(result));
        })
        .expect("spawn an operation's worker thread");
    rx
}

fn run(
    plan: &Plan,
    ctx: &Context,
    progress: &mut dyn FnMut(&str, Progress),
) -> Result<Done, OpError> {
    // A UEFI VM's variables before the operation: what goes with the revision it takes.
    let before = plan.history_firmware.as_ref().and_then(|fw| {
        let vars = std::fs::read(&fw.nvram).ok()?;
        let base = std::fs::read(ctx.firmware().path_for(&fw.uuid)).ok()?;
        Some((vars, base))
    });
    let done = run_disks(plan, ctx, progress)?;
    if let Some((vars, base)) = before {
        // A commit's revision is the base before it with an empty overlay: its variables
        // are the base's. A discard's is the session thrown away: the variables it ended with.
        let vars = match plan.op {
            OpKind::Commit => &base,
            OpKind::Discard => &vars,
        };
        for (req, _) in &plan.disks {
            if let Err(e) = history::keep_firmware(&ctx.journal, &req.disk, vars, &base) {
                log::warn!("{}: keeping its firmware variables: {e}", plan.vm);
            }
        }
    }
    if let Some((uuid, nvram)) = &plan.record_firmware {
        // The base now holds what the firmware variables were written with.
        if let Err(e) = ctx.firmware().record(uuid, nvram) {
            log::warn!("{}: recording its firmware variables: {e}", plan.vm);
        }
    }
    Ok(done)
}

fn run_disks(
    plan: &Plan,
    ctx: &Context,
    progress: &mut dyn FnMut(&str, Progress),
) -> Result<Done, OpError> {
    let mut outcomes = Vec::new();
    // Undo takes back this operation, on every disk it completed on.
    let group = history::new_group();
    for (req, _) in &plan.disks {
        let check = ctx.check(&plan.conn, &plan.uri, &plan.vm);
        let target = req.disk.target.clone();
        let mut report = |p| progress(&target, p);
        let result = match resumable_commit(&ctx.journal, &req.disk.overlay) {
            Some(rec) if req.op == OpKind::Commit => {
                ops::resume_with(rec, &check, &ctx.journal, &mut report, true)
            }
            _ => ops::run(req, &check, &ctx.journal, &mut report),
        };
        match result {
            Ok(o) => {
                record(&ctx.journal, &o, &req.disk.base);
                history::set_undo_group(&ctx.journal, &req.disk, &group);
                outcomes.push(o);
            }
            Err(e) => {
                ctx.journal
                    .set_last(&req.disk.overlay, &format!("{} failed: {e}", req.op.word()));
                return Err(e);
            }
        }
    }
    let disks: Vec<ManagedDisk> = plan.disks.iter().map(|(r, _)| r.disk.clone()).collect();
    let undo = undo_points(ctx, &disks).is_some();
    Ok(Done {
        op: plan.op,
        outcomes,
        undo,
    })
}

/// Remembers a disk's last result (shown by `status`; never needed for safety).
pub fn record(journal: &Journal, o: &Outcome, base: &Path) {
    let summary = match (o.op, o.resumed) {
        (OpKind::Commit, false) => format!(
            "committed {} into {}; overlay rebuilt empty",
            human_bytes(o.changed_bytes),
            base.display()
        ),
        (OpKind::Discard, false) => format!(
            "discarded {}; overlay rebuilt empty, base untouched",
            human_bytes(o.changed_bytes)
        ),
        (op, true) => format!("{} finished after an interruption", op.word()),
    };
    journal.set_last(&o.overlay, &summary);
}

/// Finishes the operations an earlier run left in the journal (each record names its
/// connection and domain), records them, and returns each with its result. Interrupted
/// adopts and releases are finished or rolled back first (they log what they did).
pub fn recover(journal: &Journal) -> Vec<(Record, Result<Outcome, OpError>)> {
    for rec in journal.pending_of::<ChangeRecord>().into_iter().flatten() {
        let what = format!("{} of {} ({})", rec.change.word(), rec.domain, rec.target);
        let result = domains::check_for(&rec.uri, &rec.domain, rec.uuid.as_deref())
            .and_then(|check| disposable::resume(rec, check.as_ref(), journal));
        match result {
            Ok(()) => log::info!("finished the interrupted {what}"),
            Err(e) => log::warn!("the interrupted {what}: {e}"),
        }
    }
    for (rec, result) in history::recover(journal, &|r| {
        domains::check_for(&r.uri, &r.domain, r.uuid.as_deref())
    }) {
        match result {
            Ok(()) => log::info!("finished the interrupted history step of {}", rec.domain),
            Err(e) => log::warn!("the interrupted history step of {}: {e}", rec.domain),
        }
    }
    let results = ops::recover(journal, &domains::check_for_record, &mut |_, _| {});
    for (rec, result) in &results {
        if let Ok(o) = result {
            record(journal, o, &rec.disk.base);
        }
    }
    results
}

/// Making `vm` disposable: each disk to adopt, planned.
pub struct AdoptVm {
    pub uri: String,
    pub vm: String,
    pub conn: Connect,
    pub disks: Vec<AdoptPlan>,
    /// Disks left as they are, and why (with the default "every disk").
    pub left: Vec<(String, OpError)>,
    /// A UEFI VM's variables, recorded as the base's once adopted.
    pub firmware: Option<(String, std::path::PathBuf)>,
}

/// The engine that works on an image that is not an overlay yet (as for a managed disk: this
/// process where it can write, libvirtd otherwise).
fn engine_for_image(
    choice: EngineChoice,
    image: &Path,
    local: bool,
) -> Result<crate::overlay::Engine, OpError> {
    use crate::overlay::Engine;
    let dir = image.parent().unwrap_or(Path::new("/"));
    let here = local
        && std::fs::File::open(image).is_ok()
        && image::is_writable(dir).is_ok()
        && image::is_writable(image).is_ok();
    let engine = match choice {
        EngineChoice::Only(e) => e,
        EngineChoice::Auto if here => Engine::QemuImg,
        EngineChoice::Auto => Engine::Libvirt,
    };
    if engine == Engine::QemuImg && !local {
        return Err(OpError::NotFound {
            what: format!(
                "{} is on another host: only the libvirt engine can reach it",
                image.display(),
            ),
        });
    }
    Ok(engine)
}

/// Plans making `vm` disposable (every disk that can be, or only `only`). Blocking.
pub fn plan_adopt(
    ctx: &Context,
    conn: &Connect,
    uri: &str,
    vm: &str,
    only: Option<&str>,
) -> Result<AdoptVm, OpError> {
    let found = find(ctx, conn, uri, vm)?;
    let check = &found.check;
    check.ensure_inactive()?;
    check.ensure_no_saved_state()?;
    let xml = check.inactive_xml()?;
    let defined = parse_disks(&xml).map_err(|what| OpError::NotFound { what })?;
    if let Some(t) = only {
        if !defined.iter().any(|d| d.target == t) {
            return Err(OpError::NoSuchDisk {
                vm: vm.to_string(),
                disk: t.to_string(),
            });
        }
    }
    let mut disks = Vec::new();
    let mut left = Vec::new();
    for d in defined
        .iter()
        .filter(|d| only.is_none_or(|t| t == d.target))
    {
        let planned = adopt_one(ctx, &found, vm, d);
        match planned {
            Ok(p) => disks.push(p),
            // The one disk asked for: its refusal is the answer.
            Err(e) if only.is_some() => return Err(e),
            // A cdrom or a shared disk is simply not part of "every disk".
            Err(e) => left.push((d.target.clone(), e)),
        }
    }
    if disks.is_empty() {
        return Err(match left.into_iter().next() {
            Some((_, e)) => e,
            None => OpError::NotAdoptable {
                vm: vm.to_string(),
                disk: "-".into(),
                why: crate::i18n::tr("it has no disks"),
            },
        });
    }
    let firmware = firmware_of(check, vm).ok().flatten();
    Ok(AdoptVm {
        uri: uri.to_string(),
        vm: vm.to_string(),
        conn: conn.clone(),
        disks,
        left,
        firmware,
    })
}

/// Plans adopting one disk of the definition.
fn adopt_one(
    ctx: &Context,
    found: &Found,
    vm: &str,
    d: &crate::overlay::discover::DiskXml,
) -> Result<AdoptPlan, OpError> {
    if found.disks.managed.iter().any(|m| m.target == d.target) {
        return Err(OpError::AlreadyDisposable {
            vm: vm.to_string(),
            disk: d.target.clone(),
        });
    }
    if let Some(refusal) = disposable::definition_refusal(vm, d) {
        return Err(refusal);
    }
    let image = Path::new(d.source.as_deref().unwrap_or_default());
    let local = crate::libvirt::engine::is_local_uri(found.check.uri());
    let engine = engine_for_image(ctx.engine, image, local)?;
    let images = found.check.images(engine)?;
    disposable::plan_adopt(vm, d, images, &ctx.journal)
}

/// Whether each disk of `vm` that is not disposable yet could be made so (for `status` and
/// the app): `None` if it can, or the refusal `adopt` would print. Writes nothing.
pub fn adoptable(ctx: &Context, found: &Found, vm: &str) -> Vec<(String, Option<OpError>)> {
    let Ok(xml) = found.check.inactive_xml() else {
        return Vec::new();
    };
    let mut out: Vec<(String, Option<OpError>)> = parse_disks(&xml)
        .unwrap_or_default()
        .iter()
        .filter(|d| !found.disks.managed.iter().any(|m| m.target == d.target))
        .map(|d| (d.target.clone(), adopt_one(ctx, found, vm, d).err()))
        .collect();
    // The VM's own state, asked only when a disk could be taken.
    if out.iter().any(|(_, why)| why.is_none()) {
        if let Err(e) = found
            .check
            .ensure_inactive()
            .and_then(|_| found.check.ensure_no_saved_state())
        {
            for (_, why) in out.iter_mut().filter(|(_, why)| why.is_none()) {
                *why = Some(e.clone());
            }
        }
    }
    out
}

/// Makes the planned disks disposable, one after the other; stops at the first failure (the
/// disks adopted before it stay adopted, complete). Blocking.
pub fn adopt(plan: &AdoptVm, ctx: &Context) -> Result<(), OpError> {
    let check = ctx.check(&plan.conn, &plan.uri, &plan.vm);
    for disk in &plan.disks {
        disposable::adopt(&plan.uri, &plan.vm, disk, &check, &ctx.journal)?;
    }
    if let Some((uuid, nvram)) = &plan.firmware {
        // The variables now go with the base.
        if let Err(e) = ctx.firmware().record(uuid, nvram) {
            log::warn!("{}: recording its firmware variables: {e}", plan.vm);
        }
    }
    Ok(())
}

/// Making `vm` ordinary again: its pending changes' fate, then the disks to release.
pub struct ReleaseVm {
    pub uri: String,
    pub vm: String,
    pub conn: Connect,
    /// The commit or discard of the pending changes, when there are any.
    pub first: Option<Plan>,
    pub disks: Vec<ManagedDisk>,
}

/// Plans releasing `vm` (every managed disk, or `only`); `changes` says what happens to
/// pending changes (required when there are any). Blocking.
pub fn plan_release(
    ctx: &Context,
    conn: &Connect,
    uri: &str,
    vm: &str,
    only: Option<&str>,
    changes: Option<OpKind>,
) -> Result<ReleaseVm, OpError> {
    let found = find(ctx, conn, uri, vm)?;
    let disks = chosen_disks(vm, &found.disks, only)?;
    found.check.ensure_inactive()?;
    found.check.ensure_no_saved_state()?;
    // Refused before any commit or discard: the release would end a history with pins.
    for d in &disks {
        history::ensure_none_pinned(vm, d, &ctx.journal)?;
    }
    let mut pending = false;
    for d in &disks {
        if ops::changed_bytes(d, &found.check)? > 0 {
            pending = true;
            if changes.is_none() {
                return Err(OpError::ReleaseWithChanges {
                    vm: vm.to_string(),
                    disk: d.target.clone(),
                });
            }
        }
    }
    let first = match (pending, changes) {
        (true, Some(op)) => Some(plan(ctx, conn, uri, vm, op, only, Firmware::FollowDisk)?),
        _ => None,
    };
    Ok(ReleaseVm {
        uri: uri.to_string(),
        vm: vm.to_string(),
        conn: conn.clone(),
        first,
        disks,
    })
}

/// Commits or discards the pending changes as planned, then releases every disk. Blocking.
pub fn release(plan: ReleaseVm, ctx: &Context) -> Result<Option<Done>, OpError> {
    let done = match &plan.first {
        Some(first) => Some(run(first, ctx, &mut |_, _| {})?),
        None => None,
    };
    let check = ctx.check(&plan.conn, &plan.uri, &plan.vm);
    for disk in &plan.disks {
        disposable::release(&plan.uri, &plan.vm, disk, &check, &ctx.journal)?;
    }
    Ok(done)
}

/// A VM's disks that keep history (every managed disk, or `only`), with their check. Refuses
/// when none of them can (a raw base, the libvirt engine). Blocking.
pub fn history_disks(
    ctx: &Context,
    conn: &Connect,
    uri: &str,
    vm: &str,
    only: Option<&str>,
) -> Result<(Found, Vec<ManagedDisk>), OpError> {
    let found = find(ctx, conn, uri, vm)?;
    let disks = chosen_disks(vm, &found.disks, only)?;
    let mut with = Vec::new();
    let mut refusal = None;
    for d in disks {
        match history::unsupported(&d) {
            None => with.push(d),
            Some(why) => {
                refusal.get_or_insert(OpError::HistoryUnsupported {
                    vm: vm.to_string(),
                    disk: d.target.clone(),
                    why,
                });
            }
        }
    }
    match (with.is_empty(), refusal) {
        (true, Some(e)) => Err(e),
        _ => Ok((found, with)),
    }
}

/// One revision of one of a VM's disks.
#[derive(Debug, Clone)]
pub struct RevisionEntry {
    pub disk: String,
    pub revision: history::Revision,
    /// It can be rolled back to now (its base has not changed under it).
    pub restorable: bool,
}

/// A VM's history: its revisions, newest first, and each disk's history.
#[derive(Debug, Clone)]
pub struct VmHistory {
    pub entries: Vec<RevisionEntry>,
    pub disks: Vec<(String, history::DiskHistory)>,
    /// A disk has an undo point (see [`undo`]).
    pub undo: bool,
}

/// Reads the history of `vm`'s disks (every disk that keeps one, or `only`). Blocking.
pub fn vm_history(
    ctx: &Context,
    conn: &Connect,
    uri: &str,
    vm: &str,
    only: Option<&str>,
) -> Result<VmHistory, OpError> {
    let (_, disks) = history_disks(ctx, conn, uri, vm, only)?;
    let store = history::Store::beside(&ctx.journal);
    let mut histories = Vec::new();
    for d in &disks {
        let h = store.load(d).map_err(|e| OpError::NotFound {
            what: format!("{}: {e}", store.path_for(&d.overlay).display()),
        })?;
        histories.push((d.target.clone(), h));
    }
    let mut entries: Vec<RevisionEntry> = histories
        .iter()
        .flat_map(|(t, h)| {
            h.ready().map(move |r| RevisionEntry {
                disk: t.clone(),
                revision: r.clone(),
                restorable: h.restorable(r),
            })
        })
        .collect();
    entries.sort_by(|a, b| {
        (b.revision.time.as_str(), b.revision.id).cmp(&(a.revision.time.as_str(), a.revision.id))
    });
    let undo = undo_points(ctx, &disks).is_some();
    Ok(VmHistory {
        entries,
        disks: histories,
        undo,
    })
}

/// The disk of `disks` that has revision `id` (`only` narrows it down), or why none.
pub fn disk_with_revision(
    ctx: &Context,
    vm: &str,
    disks: &[ManagedDisk],
    id: u64,
) -> Result<ManagedDisk, OpError> {
    let store = history::Store::beside(&ctx.journal);
    let mut having = disks
        .iter()
        .filter(|d| store.load(d).is_ok_and(|h| h.get(id).is_some()));
    match (having.next(), having.next()) {
        (Some(d), None) => Ok(d.clone()),
        (Some(a), Some(b)) => Err(OpError::NotFound {
            what: crate::i18n::tr_f(
                "{vm} has a revision {revision} on more than one disk ({first}, {second}); say which with --disk",
                &[
                    ("vm", vm),
                    ("revision", &id.to_string()),
                    ("first", &a.target),
                    ("second", &b.target),
                ],
            ),
        }),
        (None, _) => Err(OpError::NoSuchRevision {
            vm: vm.to_string(),
            revision: id,
        }),
    }
}

/// What Undo would take `disks` (a VM's) back to: the disks of the VM's last operation (the
/// newest undo group among them), each to its undo point, if every one of them still has it
/// (nothing happened since on any). Disks of earlier operations are left alone.
fn undo_points(ctx: &Context, disks: &[ManagedDisk]) -> Option<Vec<(ManagedDisk, u64)>> {
    let stored: Vec<(&ManagedDisk, Option<String>, Option<u64>)> = disks
        .iter()
        .filter_map(|d| history::stored_undo(&ctx.journal, d).map(|(g, p)| (d, g, p)))
        .collect();
    let newest = stored.iter().map(|(_, g, _)| g.clone()).max()?;
    stored
        .into_iter()
        .filter(|(_, g, _)| *g == newest)
        .map(|(d, _, p)| p.map(|id| (d.clone(), id)))
        .collect()
}

/// One disk taken back by [`undo`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undone {
    pub disk: String,
    pub revision: u64,
    /// The revision that keeps the state left (so the undo can itself be undone).
    pub left: u64,
}

/// Undoes `vm`'s last commit, discard or rollback: every disk with an undo point goes back to
/// it (see `history::undo_point`). Refused like a rollback when the VM runs or its base is
/// shared; `NothingToUndo` when no disk has one. Blocking.
pub fn undo(ctx: &Context, conn: &Connect, uri: &str, vm: &str) -> Result<Vec<Undone>, OpError> {
    let (found, disks) = history_disks(ctx, conn, uri, vm, None)?;
    let Some(points) = undo_points(ctx, &disks) else {
        return Err(OpError::NothingToUndo { vm: vm.to_string() });
    };
    // Every disk is checked before the first one is written.
    for (disk, id) in &points {
        history::preflight_rollback(vm, disk, *id, &found.check, &ctx.journal)?;
    }
    let mut undone = Vec::new();
    let group = history::new_group();
    for (disk, id) in points {
        let left = rollback(ctx, &found, uri, vm, &disk, id)?;
        history::set_undo_group(&ctx.journal, &disk, &group);
        undone.push(Undone {
            disk: disk.target.clone(),
            revision: id,
            left,
        });
    }
    Ok(undone)
}

/// Rolls `disk` of `vm` back to revision `id`; returns the id of the revision that keeps the
/// state left. Blocking.
pub fn rollback(
    ctx: &Context,
    found: &Found,
    uri: &str,
    vm: &str,
    disk: &ManagedDisk,
    id: u64,
) -> Result<u64, OpError> {
    let left = history::rollback(
        uri,
        vm,
        disk,
        id,
        &found.check,
        &ctx.journal,
        firmware_follows(found, vm),
    )?;
    ctx.journal.set_last(
        &disk.overlay,
        &format!("rolled back to revision {id}; the state left is revision {left}"),
    );
    Ok(left)
}
