//! History: every commit and discard can be undone. A *revision* is a state of a disk (its base
//! and its overlay) that can be rolled back to.
//!
//! # Mechanism, and why
//! - **Before a commit**, an internal snapshot `vmoverlay-<id>` of the qcow2 base
//!   (`qemu-img snapshot -c`) is taken inside the commit's preconditions and journal, right
//!   before the commit writes. It costs no copy and almost no time: qcow2 only bumps reference
//!   counts; the clusters the commit then overwrites are copied on write, so a revision holds
//!   at most the bytes that commit wrote. Rolling back is `qemu-img snapshot -a` plus an empty
//!   overlay (the state the guest saw after the commit before it).
//! - **For a discard**, the replaced overlay is kept: hard-linked into `.vmoverlay-history/`
//!   beside it before the rebuild renames a new, empty overlay over its name. No copy, no
//!   moment without an overlay. The kept overlay stays restorable while the base holds what it
//!   was written over: each revision records the base's *generation* (a counter bumped by every
//!   commit, and by any change of the base's size or time this module did not make itself).
//! - **A rollback** first records the state being left (kind `rollback`: a snapshot of the
//!   base, and the overlay kept as for a discard), so it is itself undoable.
//! - **A UEFI VM's firmware variables** (one disk only: a rollback works disk by disk, the
//!   variables go with the whole VM) are copied into the history folder with each revision:
//!   the variables the VM had in that state and those recorded for its base. A rollback puts
//!   the first back and records the second as the base's (what a later discard restores).
//! - Internal snapshots in the *base* are allowed by the commit rules (only bitmaps in the base
//!   and snapshots or bitmaps in the overlay are refused), and `qemu-img check` of a base with
//!   snapshots passes, so revisions live in the base.
//!
//! # Raw bases, and what is not covered
//! - **Raw bases** have no internal snapshots: before a commit writes one, the bytes it will
//!   overwrite are copied into an *undo delta* ([`super::delta`]), and a rollback writes the
//!   deltas back, newest first, after keeping what it overwrites in a delta of its own. Each
//!   delta records the base's generation before and after its operation, so a chain broken by
//!   a change nobody recorded is refused instead of applied.
//! - **The libvirt engine** (root-owned images, written only by libvirtd): an internal
//!   snapshot through libvirt is a libvirt snapshot (its metadata then blocks commits, by
//!   design), or a QMP command in the paused QEMU the engine starts; a kept overlay would need
//!   `vol-clone` (a full copy), as libvirt cannot rename a volume. Refused for now, likewise.
//!
//! # Safety
//! Metadata lives per disk in the state directory (`history/<hash of the overlay>.json`),
//! written atomically under a lock. A revision is recorded as `taking` before its snapshot or
//! kept file exists and `ready` after; one that is expired is marked `expiring` first. An
//! interrupted operation finds these marks and finishes (or drops) them; a rollback and an
//! expiry are journaled like a commit and resumed at the next start.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::domain::{ensure_base_alone, DomainCheck};
use super::error::OpError;
use super::firmware::{self, FirmwareRestore, FirmwareStore};
use super::image;
use super::journal::{boot_id, sync_dir, Journal, Record};
use super::qemu_img;
use super::types::{CommitWrites, Engine, ManagedDisk, Stamp};
use crate::hook::kill_point;
use crate::i18n::{tr, tr_f};

/// Revisions kept per disk unless the user says otherwise (`vmoverlay keep VM N`).
pub const DEFAULT_KEEP: u32 = 3;
/// The folder beside an overlay where overlays replaced by a discard or a rollback are kept.
pub const KEPT_DIR: &str = ".vmoverlay-history";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevKind {
    /// The base as it was before a commit, with an empty overlay.
    Commit,
    /// The changes a discard threw away, over the base they were written on.
    Discard,
    /// The state a rollback left.
    Rollback,
    /// The image as it was when it was made disposable (part of the contract; not taken yet).
    Adopt,
}

impl RevKind {
    pub fn word(&self) -> &'static str {
        match self {
            Self::Commit => "commit",
            Self::Discard => "discard",
            Self::Rollback => "rollback",
            Self::Adopt => "adopt",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevState {
    /// Recorded before its snapshot or kept file was made.
    Taking,
    Ready,
    /// Being deleted.
    Expiring,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    pub id: u64,
    /// RFC 3339.
    pub time: String,
    pub kind: RevKind,
    pub label: Option<String>,
    pub pinned: bool,
    /// For a snapshot: at most the bytes the commit after it wrote (what it can hold).
    pub bytes: Option<u64>,
    /// The internal snapshot of the base holding the base's content.
    pub snapshot: Option<String>,
    /// The kept overlay; `None` means an empty overlay.
    pub overlay_file: Option<PathBuf>,
    /// The generation of the base this revision's overlay goes with.
    pub base_gen: u64,
    pub state: RevState,
    /// The operation that took it (so a resumed operation does not take it twice).
    pub op: Option<String>,
    /// A UEFI VM's variables that go with this state (copies in the history folder).
    #[serde(default)]
    pub firmware: Option<RevFirmware>,
    /// On a raw base: the undo delta holding what the operation after it overwrote (see
    /// [`super::delta`]).
    #[serde(default)]
    pub delta: Option<PathBuf>,
    /// On a raw base: the base's generation once the operation after it wrote (its delta
    /// takes the base from that generation back to `base_gen`).
    #[serde(default)]
    pub after_gen: Option<u64>,
}

/// The UEFI variables that go with a revision's state: a rollback to it puts them back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevFirmware {
    /// What the VM's variables were in that state.
    pub vars: PathBuf,
    /// What was recorded as the variables of that state's base (what a discard puts back).
    pub base_vars: PathBuf,
}

/// A rollback of a UEFI VM's only disk: its variables follow (see [`rollback`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareFollow {
    pub uuid: String,
    pub nvram: PathBuf,
}

impl Revision {
    /// The bytes this revision holds on disk, where known.
    pub fn held_bytes(&self) -> Option<u64> {
        // Its files: a kept overlay, an undo delta, copies of firmware variables.
        let firmware = self.firmware.iter().flat_map(|k| [&k.vars, &k.base_vars]);
        let file = [&self.overlay_file, &self.delta]
            .into_iter()
            .flatten()
            .chain(firmware)
            .filter_map(|f| fs::metadata(f).ok())
            .map(|m| m.blocks() * 512)
            .reduce(|a, b| a + b);
        match (self.snapshot.as_ref().and(self.bytes), file) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        }
    }
}

/// The history of one disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskHistory {
    pub overlay: PathBuf,
    pub base: PathBuf,
    pub keep: u32,
    pub next_id: u64,
    /// The base's content generation now, and the next one to hand out.
    pub gen: u64,
    pub next_gen: u64,
    /// The base's size and time after this module last wrote it.
    pub base_stamp: Option<Stamp>,
    pub revisions: Vec<Revision>,
    /// What "Undo" goes back to, see [`undo_point`].
    #[serde(default)]
    pub undo: Option<UndoPoint>,
    /// The base is a raw file: revisions keep undo deltas instead of internal snapshots.
    #[serde(default)]
    pub raw: bool,
}

/// The revision the disk's last commit, discard or rollback took, and its overlay as that
/// operation left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoPoint {
    pub revision: u64,
    pub overlay: Option<Stamp>,
    /// The operation on the whole VM it belongs to (RFC 3339 with nanoseconds, so newer sorts
    /// later): a VM's Undo takes back only its last operation's disks.
    #[serde(default)]
    pub group: Option<String>,
}

/// A new operation group (see [`UndoPoint::group`]).
pub fn new_group() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// Marks `disk`'s undo point as part of operation `group`.
pub fn set_undo_group(journal: &Journal, disk: &ManagedDisk, group: &str) {
    if unsupported(disk).is_some() {
        return;
    }
    let r = Store::beside(journal).update(disk, |h| {
        if let Some(u) = h.undo.as_mut() {
            u.group = Some(group.to_string());
        }
    });
    if let Err(e) = r {
        log::warn!("{}: {e}", disk.overlay.display());
    }
}

/// `disk`'s stored undo point, if any: its group, and the revision Undo would go back to now
/// (`None` once something happened since, see [`undo_point`]).
pub fn stored_undo(journal: &Journal, disk: &ManagedDisk) -> Option<(Option<String>, Option<u64>)> {
    if unsupported(disk).is_some() {
        return None;
    }
    let h = Store::beside(journal).load(disk).ok()?;
    let group = h.undo.as_ref()?.group.clone();
    Some((group, undo_point(journal, disk)))
}

impl DiskHistory {
    fn new(disk: &ManagedDisk) -> DiskHistory {
        // Never reuse a snapshot name an earlier, lost history left in the base.
        let taken = qemu_img::probe(&disk.base)
            .map(|p| p.snapshots)
            .unwrap_or_default()
            .iter()
            .filter_map(|n| n.strip_prefix("vmoverlay-")?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        DiskHistory {
            overlay: disk.overlay.clone(),
            base: disk.base.clone(),
            keep: DEFAULT_KEEP,
            next_id: taken + 1,
            gen: 0,
            next_gen: 1,
            base_stamp: None,
            revisions: Vec::new(),
            undo: None,
            raw: disk.base_format == "raw",
        }
    }

    pub fn ready(&self) -> impl Iterator<Item = &Revision> {
        self.revisions.iter().filter(|r| r.state == RevState::Ready)
    }

    pub fn get(&self, id: u64) -> Option<&Revision> {
        self.ready().find(|r| r.id == id)
    }

    /// Whether revision `r` can be rolled back to now.
    pub fn restorable(&self, r: &Revision) -> bool {
        if self.raw {
            return self.deltas_to(r, None).is_some();
        }
        r.snapshot.is_some() || r.base_gen == self.gen
    }

    /// On a raw base: the undo deltas that take the base from now back to what it was when
    /// revision `r` was taken, newest first (those of revisions from `r` on, below `below`).
    /// `None` when that chain is broken: a delta file is missing, or the base changed without
    /// one (another program wrote it, a commit ran with history off).
    fn deltas_to(&self, r: &Revision, below: Option<u64>) -> Option<Vec<&Revision>> {
        let mut newer: Vec<&Revision> = self
            .ready()
            .filter(|x| x.id >= r.id && below.is_none_or(|b| x.id < b) && x.delta.is_some())
            .collect();
        newer.sort_by_key(|x| std::cmp::Reverse(x.id));
        let mut gen = self.gen;
        let mut chain = Vec::new();
        for x in newer {
            match x.after_gen {
                Some(after) if after == gen => {
                    if !x.delta.as_ref().is_some_and(|d| d.exists()) {
                        return None;
                    }
                    chain.push(x);
                    gen = x.base_gen;
                }
                // Its operation has not written the base (failed before it did).
                _ if x.base_gen == gen => {}
                _ => return None,
            }
        }
        (gen == r.base_gen).then_some(chain)
    }

    /// Bytes held by every revision, where known.
    pub fn held_bytes(&self) -> u64 {
        self.ready().filter_map(|r| r.held_bytes()).sum()
    }

    fn bump_gen(&mut self) {
        self.gen = self.next_gen;
        self.next_gen += 1;
    }

    /// A base changed by someone else invalidates what was kept over it.
    fn notice_external(&mut self) {
        let now = Stamp::of(&self.base).ok();
        if self.base_stamp.is_some() && now != self.base_stamp {
            log::info!("{} changed outside VM Overlay", self.base.display());
            self.bump_gen();
        }
        self.base_stamp = now;
    }

    fn new_revision(&mut self, kind: RevKind, op: Option<String>) -> Revision {
        let id = self.next_id;
        self.next_id += 1;
        Revision {
            id,
            time: now(),
            kind,
            label: None,
            pinned: false,
            bytes: None,
            snapshot: None,
            overlay_file: None,
            base_gen: self.gen,
            state: RevState::Taking,
            op,
            firmware: None,
            delta: None,
            after_gen: None,
        }
    }

    fn set(&mut self, rev: Revision) {
        match self.revisions.iter_mut().find(|r| r.id == rev.id) {
            Some(r) => *r = rev,
            None => self.revisions.push(rev),
        }
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Whether history is possible for `disk`: `Err(why)` otherwise (translated).
pub fn unsupported(disk: &ManagedDisk) -> Option<String> {
    if disk.engine == Engine::Libvirt {
        return Some(tr("its images are worked on by libvirtd (the libvirt engine), which cannot keep revisions yet"));
    }
    if disk.base_format != "qcow2" && disk.base_format != "raw" {
        return Some(tr_f(
            "its base is a {format} image; revisions need a qcow2 or raw base",
            &[("format", &disk.base_format)],
        ));
    }
    None
}

/// Where the histories are kept: `history/` beside the journal's folder.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn beside(journal: &Journal) -> Store {
        Store {
            dir: journal
                .dir()
                .parent()
                .unwrap_or(Path::new("/"))
                .join("history"),
        }
    }

    pub fn path_for(&self, overlay: &Path) -> PathBuf {
        Journal::at(&self.dir).path_for(overlay)
    }

    /// Where the undo delta of revision `id` of the disk of `overlay` is kept.
    fn delta_path(&self, overlay: &Path, id: u64) -> PathBuf {
        let json = self.path_for(overlay);
        let stem = json.file_stem().unwrap_or_default().to_string_lossy();
        self.dir.join(format!("{stem}.{id}.delta.qcow2"))
    }

    /// Writes the UEFI variables of revision `id` of the disk of `overlay` (atomically).
    fn write_firmware(
        &self,
        overlay: &Path,
        id: u64,
        vars: &[u8],
        base_vars: &[u8],
    ) -> Result<RevFirmware, String> {
        let json = self.path_for(overlay);
        let stem = json.file_stem().unwrap_or_default().to_string_lossy();
        let kept = RevFirmware {
            vars: self.dir.join(format!("{stem}.{id}.vars.fd")),
            base_vars: self.dir.join(format!("{stem}.{id}.base-vars.fd")),
        };
        for (path, data) in [(&kept.vars, vars), (&kept.base_vars, base_vars)] {
            firmware::write_private(path, data).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        sync_dir(&self.dir).map_err(|e| e.to_string())?;
        Ok(kept)
    }

    /// The history of `disk` as stored (a new one if there is none).
    pub fn load(&self, disk: &ManagedDisk) -> std::io::Result<DiskHistory> {
        match fs::read(self.path_for(&disk.overlay)) {
            Ok(data) => serde_json::from_slice(&data).map_err(std::io::Error::from),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DiskHistory::new(disk)),
            Err(e) => Err(e),
        }
    }

    fn save(&self, h: &DiskHistory) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        let path = self.path_for(&h.overlay);
        let tmp = path.with_extension("json.tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(h)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)
    }

    /// Loads, changes and saves the history of `disk` under a lock (one writer at a time).
    pub fn update<R>(
        &self,
        disk: &ManagedDisk,
        f: impl FnOnce(&mut DiskHistory) -> R,
    ) -> std::io::Result<R> {
        fs::create_dir_all(&self.dir)?;
        let lock = fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path_for(&disk.overlay).with_extension("lock"))?;
        lock.lock()?;
        let mut h = self.load(disk)?;
        let out = f(&mut h);
        self.save(&h)?;
        Ok(out)
    }
}

fn io(e: std::io::Error) -> String {
    format!("history: {e}")
}

fn qemu_img_run(args: &[&str], image: &Path) -> Result<(), String> {
    let out = image::qemu_img()
        .args(args)
        .arg(image)
        .output()
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "qemu-img {} {}: {}",
            args.join(" "),
            image.display(),
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .trim_start_matches("qemu-img: ")
        ))
    }
}

fn base_snapshots(base: &Path) -> Result<Vec<String>, String> {
    qemu_img::probe(base)
        .map(|p| p.snapshots)
        .map_err(|e| e.to_string())
}

/// Takes an internal snapshot `name` of the base unless it exists already.
fn snapshot_base(h: &mut DiskHistory, name: &str) -> Result<(), String> {
    if !base_snapshots(&h.base)?.iter().any(|n| n == name) {
        h.notice_external();
        qemu_img_run(&["snapshot", "-q", "-c", name], &h.base)?;
        h.base_stamp = Stamp::of(&h.base).ok();
    }
    Ok(())
}

/// The name a kept overlay of revision `id` gets.
fn kept_path(overlay: &Path, id: u64) -> PathBuf {
    let name = overlay.file_name().unwrap_or_default().to_string_lossy();
    overlay
        .parent()
        .unwrap_or(Path::new("/"))
        .join(KEPT_DIR)
        .join(format!("{name}.{id}"))
}

/// Hard-links the overlay to `kept` (no copy: the rebuild then renames a new file over the
/// overlay's name), unless that was done already.
fn keep_overlay(overlay: &Path, kept: &Path) -> Result<(), String> {
    if kept.exists() {
        return Ok(());
    }
    let dir = kept.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    fs::hard_link(overlay, kept).map_err(|e| format!("keeping {}: {e}", overlay.display()))?;
    sync_dir(dir).map_err(|e| e.to_string())
}

/// Writes the undo delta `path` of a raw base, holding what the base has now in `ranges`,
/// unless it was written already (a delta that exists is whole).
fn take_delta(disk: &ManagedDisk, ranges: &[(u64, u64)], path: &Path) -> Result<(), String> {
    if path.exists() {
        return Ok(());
    }
    let size = super::qcow2::Image::open(&disk.overlay)
        .map_err(|e| format!("{}: {e}", disk.overlay.display()))?
        .virtual_size();
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    super::delta::write(&disk.base, ranges, size, path)
        .map(|_| ())
        .map_err(|e| format!("writing the undo delta {}: {e}", path.display()))
}

/// On a raw base, what a rollback to `target` (its own revision being `leave`) overwrites:
/// every range the undo deltas it applies hold.
fn raw_rollback_ranges(
    h: &DiskHistory,
    target: u64,
    leave: u64,
) -> Result<Vec<(u64, u64)>, String> {
    let rev = h
        .get(target)
        .ok_or_else(|| format!("revision {target} is gone"))?;
    let chain = h
        .deltas_to(rev, Some(leave))
        .ok_or_else(|| format!("the base no longer leads back to revision {target}"))?;
    let mut ranges = Vec::new();
    for r in chain {
        ranges.extend(super::delta::held_ranges(
            r.delta.as_deref().unwrap_or(Path::new("")),
        )?);
    }
    Ok(ranges)
}

/// Writes the undo delta `delta` back into the raw base (`qemu-img commit -d`; repeating it
/// is harmless).
fn apply_delta(h: &mut DiskHistory, delta: &Path) -> Result<(), String> {
    qemu_img_run(&["commit", "-q", "-d", "-f", "qcow2"], delta)?;
    h.base_stamp = Stamp::of(&h.base).ok();
    Ok(())
}

/// The tag of the operation of `rec`: unique per commit or discard of one overlay.
fn op_tag(rec: &Record) -> String {
    format!(
        "{} {} {}",
        rec.op.word(),
        rec.started,
        rec.overlay_stamp.map(|s| s.mtime_ns).unwrap_or(0)
    )
}

/// Finishes what an interrupted run left half-done in `h`: revisions being taken (ready if
/// their snapshot or file exists, dropped otherwise). Only while the caller holds the disk's
/// journal record.
fn reconcile(h: &mut DiskHistory, keep_taking: Option<&str>) {
    let snaps = base_snapshots(&h.base).unwrap_or_default();
    h.revisions.retain_mut(|r| {
        if r.state != RevState::Taking || (keep_taking.is_some() && r.op.as_deref() == keep_taking)
        {
            return true;
        }
        let snap_ok = r.snapshot.as_ref().is_none_or(|s| snaps.contains(s));
        let file_ok = [&r.overlay_file, &r.delta]
            .into_iter()
            .flatten()
            .all(|f| f.exists());
        if snap_ok && file_ok {
            r.state = RevState::Ready;
            true
        } else {
            remove_firmware(r);
            false
        }
    });
}

/// Commit hook, right before the commit writes the base (preconditions checked, journaled):
/// a snapshot of the base. Nothing when history is impossible or off (`keep 0`), nor when a
/// resumed commit has none yet (its base may be half-written already).
///
/// Says how the commit may write: [`CommitWrites::Protected`] when this commit's revision
/// exists. A resumed commit whose machine went down meanwhile (another boot ID) first rolls
/// the base back to that revision: its unflushed writes may be lost in any order.
pub fn before_commit(
    journal: &Journal,
    rec: &Record,
    changed: u64,
    resumed: bool,
) -> Result<CommitWrites, String> {
    if unsupported(&rec.disk).is_some() {
        return Ok(CommitWrites::Ordered);
    }
    let store = Store::beside(journal);
    let tag = op_tag(rec);
    store
        .update(&rec.disk, |h| -> Result<CommitWrites, String> {
            let existing = h
                .revisions
                .iter()
                .find(|r| r.op.as_deref() == Some(&tag))
                .cloned();
            let mut rev = match existing {
                Some(r) if r.state != RevState::Taking => {
                    let crashed = resumed && rec.boot.is_some() && rec.boot != boot_id();
                    if crashed {
                        undo_unflushed_commit(h, &r)?;
                    }
                    return Ok(CommitWrites::Protected);
                }
                Some(r) => r,
                None if resumed || h.keep == 0 => return Ok(CommitWrites::Ordered),
                None => {
                    let mut r = h.new_revision(RevKind::Commit, Some(tag.clone()));
                    if h.raw {
                        r.delta = Some(store.delta_path(&h.overlay, r.id));
                    } else {
                        r.snapshot = Some(format!("vmoverlay-{}", r.id));
                    }
                    r.bytes = Some(changed);
                    r
                }
            };
            // Recorded before it exists: an interrupted run finds it either way.
            h.set(rev.clone());
            store.save(h).map_err(io)?;
            kill_point("history-snapshot");
            match &rev.delta {
                // What the commit will overwrite: every cluster the overlay holds.
                Some(d) => {
                    take_delta(&rec.disk, &super::delta::held_ranges(&rec.disk.overlay)?, d)?
                }
                None => snapshot_base(h, rev.snapshot.as_deref().unwrap_or_default())?,
            }
            rev.state = RevState::Ready;
            h.set(rev);
            Ok(CommitWrites::Protected)
        })
        .map_err(io)?
}

/// After a crash of the machine during an unordered commit: the base's reference counts
/// are rebuilt from its tables (`qemu-img check -r all`; the snapshot's tables and clusters
/// were never written by the commit, which copies on write), then the base is put back to
/// the revision `snap` taken right before, so the commit starts again from a consistent base.
fn undo_unflushed_commit(h: &mut DiskHistory, rev: &Revision) -> Result<(), String> {
    log::warn!(
        "{}: the machine went down during a commit; the base goes back to revision {} and the commit is made again",
        h.base.display(),
        rev.id
    );
    if let Some(delta) = &rev.delta {
        // A raw base: the delta holds every byte the commit may have written.
        return apply_delta(h, delta);
    }
    let Some(snap) = rev.snapshot.as_deref() else {
        return Ok(());
    };
    let out = image::qemu_img()
        .args(["check", "-q", "-r", "all", "-f", "qcow2"])
        .arg(&h.base)
        .output()
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    // 0: consistent (after repairs); 3: only leaked clusters remain, which lose nothing.
    if !matches!(out.status.code(), Some(0 | 3)) {
        return Err(format!(
            "repairing {} after a crash: {}",
            h.base.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    qemu_img_run(&["snapshot", "-q", "-a", snap], &h.base)?;
    h.base_stamp = Stamp::of(&h.base).ok();
    Ok(())
}

/// Hook at the end of a commit or discard (the overlay rebuilt): the revision it took, if
/// any, becomes what "Undo" goes back to.
pub fn operation_done(journal: &Journal, rec: &Record) {
    if unsupported(&rec.disk).is_some() {
        return;
    }
    let tag = op_tag(rec);
    let r = Store::beside(journal).update(&rec.disk, |h| {
        let undo = h
            .ready()
            .find(|r| r.op.as_deref() == Some(&tag))
            .map(|r| UndoPoint {
                revision: r.id,
                overlay: Stamp::of(&h.overlay).ok(),
                group: None,
            });
        h.undo = undo;
    });
    if let Err(e) = r {
        log::warn!("{}: {e}", rec.disk.overlay.display());
    }
}

/// The revision "Undo" would roll `disk` back to: the one its last commit, discard or
/// rollback took, as long as nothing happened since (it is the newest revision, still
/// restorable, and the overlay is as that operation left it: a guest that wrote to it since
/// has work that Undo must not throw away silently; the history still offers the rollback).
pub fn undo_point(journal: &Journal, disk: &ManagedDisk) -> Option<u64> {
    if unsupported(disk).is_some() {
        return None;
    }
    let h = Store::beside(journal).load(disk).ok()?;
    let undo = h.undo.as_ref()?;
    let rev = h.get(undo.revision)?;
    let mut now = h.clone();
    now.notice_external();
    let newest = h.ready().map(|r| r.id).max();
    (newest == Some(rev.id) && now.restorable(rev) && Stamp::of(&disk.overlay).ok() == undo.overlay)
        .then_some(rev.id)
}

/// Commit hook, after the commit wrote the base: the base holds new content.
pub fn base_written(journal: &Journal, rec: &Record) {
    let disk = &rec.disk;
    if unsupported(disk).is_some() {
        return;
    }
    let tag = op_tag(rec);
    let r = Store::beside(journal).update(disk, |h| {
        h.bump_gen();
        h.base_stamp = Stamp::of(&h.base).ok();
        let gen = h.gen;
        if let Some(r) = h
            .revisions
            .iter_mut()
            .find(|r| r.op.as_deref() == Some(&tag))
        {
            r.after_gen = Some(gen);
        }
    });
    if let Err(e) = r {
        log::warn!("{}: {e}", disk.overlay.display());
    }
}

/// Removes the copies of a revision's UEFI variables (a leftover only costs space).
fn remove_firmware(r: &Revision) {
    for f in r.firmware.iter().flat_map(|k| [&k.vars, &k.base_vars]) {
        if let Err(e) = fs::remove_file(f) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("{}: {e}", f.display());
            }
        }
    }
}

/// After a whole-VM commit or discard of a UEFI VM's only disk: keeps the variables that go
/// with the revision the operation took (the one Undo goes back to), if it took one.
/// `vars`: the VM's variables in that state; `base_vars`: those recorded for its base.
pub fn keep_firmware(
    journal: &Journal,
    disk: &ManagedDisk,
    vars: &[u8],
    base_vars: &[u8],
) -> Result<(), String> {
    if unsupported(disk).is_some() {
        return Ok(());
    }
    let store = Store::beside(journal);
    store
        .update(disk, |h| -> Result<(), String> {
            let Some(id) = h.undo.as_ref().map(|u| u.revision) else {
                return Ok(());
            };
            let Some(mut rev) = h.get(id).cloned() else {
                return Ok(());
            };
            rev.firmware = Some(store.write_firmware(&disk.overlay, id, vars, base_vars)?);
            h.set(rev);
            Ok(())
        })
        .map_err(io)?
}

/// Discard hook, right before the rebuild replaces the overlay: it is kept.
pub fn before_discard(journal: &Journal, rec: &Record, changed: u64) -> Result<(), String> {
    if unsupported(&rec.disk).is_some() || changed == 0 {
        return Ok(());
    }
    let store = Store::beside(journal);
    let tag = op_tag(rec);
    store
        .update(&rec.disk, |h| -> Result<(), String> {
            h.notice_external();
            let existing = h
                .revisions
                .iter()
                .find(|r| r.op.as_deref() == Some(&tag))
                .cloned();
            let mut rev = match existing {
                Some(r) if r.state != RevState::Taking => return Ok(()),
                Some(r) => r,
                None if h.keep == 0 => return Ok(()),
                None => {
                    let mut r = h.new_revision(RevKind::Discard, Some(tag.clone()));
                    r.overlay_file = Some(kept_path(&rec.disk.overlay, r.id));
                    r
                }
            };
            h.set(rev.clone());
            store.save(h).map_err(io)?;
            keep_overlay(
                &rec.disk.overlay,
                rev.overlay_file.as_deref().unwrap_or(Path::new("")),
            )?;
            rev.state = RevState::Ready;
            h.set(rev);
            Ok(())
        })
        .map_err(io)?
}

/// Expires what retention says (the last `keep` revisions stay, pinned ones always), and
/// finishes earlier expiries. Only while the caller holds the disk's journal record and the
/// images are not in use. Returns the number of revisions removed.
pub fn retain(journal: &Journal, disk: &ManagedDisk) -> Result<usize, String> {
    if unsupported(disk).is_some() {
        return Ok(0);
    }
    let store = Store::beside(journal);
    store
        .update(disk, |h| -> Result<usize, String> {
            reconcile(h, None);
            let mut ready: Vec<u64> = h.ready().map(|r| r.id).collect();
            ready.sort_unstable_by(|a, b| b.cmp(a));
            let old: Vec<u64> = ready.into_iter().skip(h.keep as usize).collect();
            // On a raw base an older revision is reached through every newer undo delta:
            // those stay while an older revision stays (a pinned one).
            let oldest_kept = h
                .ready()
                .filter(|r| !old.contains(&r.id) || r.pinned)
                .map(|r| r.id)
                .min();
            let raw = h.raw;
            for r in h.revisions.iter_mut() {
                let needed = raw && r.delta.is_some() && oldest_kept.is_some_and(|k| r.id > k);
                if old.contains(&r.id) && !r.pinned && !needed {
                    r.state = RevState::Expiring;
                }
            }
            store.save(h).map_err(io)?;
            let snaps = base_snapshots(&h.base)?;
            let mut removed = 0;
            while let Some(r) = h
                .revisions
                .iter()
                .find(|r| r.state == RevState::Expiring)
                .cloned()
            {
                if let Some(s) = r.snapshot.as_ref().filter(|s| snaps.contains(s)) {
                    h.notice_external();
                    kill_point("history-expire");
                    qemu_img_run(&["snapshot", "-q", "-d", s], &h.base)?;
                    h.base_stamp = Stamp::of(&h.base).ok();
                }
                for f in [&r.overlay_file, &r.delta].into_iter().flatten() {
                    match fs::remove_file(f) {
                        Ok(()) => sync_dir(f.parent().unwrap_or(Path::new("/")))
                            .map_err(|e| e.to_string())?,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(format!("{}: {e}", f.display())),
                    }
                }
                remove_firmware(&r);
                h.revisions.retain(|x| x.id != r.id);
                store.save(h).map_err(io)?;
                removed += 1;
            }
            Ok(removed)
        })
        .map_err(io)?
}

/// Sets the label and pin of revision `id`; `Ok(false)` if there is no such revision.
pub fn set_pin(
    journal: &Journal,
    disk: &ManagedDisk,
    id: u64,
    pinned: bool,
    label: Option<&str>,
) -> std::io::Result<bool> {
    edit(journal, disk, id, Some(pinned), label)
}

/// Pins or unpins revision `id` and sets its label (empty: none), each where given; `false`
/// if there is no such revision.
pub fn edit(
    journal: &Journal,
    disk: &ManagedDisk,
    id: u64,
    pinned: Option<bool>,
    label: Option<&str>,
) -> std::io::Result<bool> {
    Store::beside(journal).update(disk, |h| {
        match h
            .revisions
            .iter_mut()
            .find(|r| r.id == id && r.state == RevState::Ready)
        {
            Some(r) => {
                if let Some(p) = pinned {
                    r.pinned = p;
                }
                if let Some(l) = label {
                    let l = l.trim();
                    r.label = (!l.is_empty()).then(|| l.to_string());
                }
                true
            }
            None => false,
        }
    })
}

/// Sets how many revisions are kept (0: history off). Expiry happens at the next operation, or
/// now through [`expire_now`].
pub fn set_keep(journal: &Journal, disk: &ManagedDisk, keep: u32) -> std::io::Result<()> {
    Store::beside(journal).update(disk, |h| h.keep = keep)
}

/// What a rollback or an expiry keeps in the journal while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    pub history: Step,
    pub uri: String,
    pub domain: String,
    #[serde(default)]
    pub uuid: Option<String>,
    pub disk: ManagedDisk,
    pub started: String,
    /// A rollback whose UEFI variables follow the disk.
    #[serde(default)]
    pub firmware: Option<FirmwareFollow>,
}

impl HistoryRecord {
    fn new(
        history: Step,
        uri: &str,
        vm: &str,
        check: &dyn DomainCheck,
        disk: &ManagedDisk,
    ) -> Self {
        HistoryRecord {
            history,
            uri: uri.to_string(),
            domain: vm.to_string(),
            uuid: check.uuid(),
            disk: disk.clone(),
            started: now(),
            firmware: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// Recording the state being left as revision `leave`, then going to `target`.
    Rollback {
        target: u64,
        leave: u64,
        applying: bool,
    },
    Expire,
}

fn failed(overlay: &Path, detail: impl Into<String>, data: String) -> OpError {
    OpError::HistoryFailed {
        overlay: overlay.to_path_buf(),
        detail: detail.into(),
        data,
    }
}

/// The preconditions of anything that writes the base: the same as a commit's.
fn ensure_base_writable(
    disk: &ManagedDisk,
    check: &dyn DomainCheck,
    journal: &Journal,
) -> Result<(), OpError> {
    let images = check.images(disk.engine)?;
    journal.ensure_disk_free(images, disk, |e| OpError::NotFound {
        what: e.to_string(),
    })?;
    ensure_state(disk, check)?;
    images.ensure_writable(disk, true)?;
    ensure_base_alone(disk, check)
}

fn ensure_state(disk: &ManagedDisk, check: &dyn DomainCheck) -> Result<(), OpError> {
    let images = check.images(disk.engine)?;
    check.ensure_inactive()?;
    check.ensure_no_saved_state()?;
    images.ensure_nothing_inside(disk, true)?;
    images.ensure_unlocked(disk, true)
}

fn begin(journal: &Journal, rec: &HistoryRecord) -> Result<(), OpError> {
    journal
        .begin_entry(&rec.disk.overlay, rec)
        .map(|_| ())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => OpError::Busy {
                overlay: rec.disk.overlay.clone(),
                journal: journal.path_for(&rec.disk.overlay),
            },
            _ => OpError::NotWritable {
                what: format!("the journal {}", journal.dir().display()),
                reason: e.to_string(),
            },
        })
}

/// Checks that `disk` can go back to revision `id`; writes nothing.
pub fn preflight_rollback(
    vm: &str,
    disk: &ManagedDisk,
    id: u64,
    check: &dyn DomainCheck,
    journal: &Journal,
) -> Result<(), OpError> {
    if let Some(why) = unsupported(disk) {
        return Err(OpError::HistoryUnsupported {
            vm: vm.to_string(),
            disk: disk.target.clone(),
            why,
        });
    }
    let h = Store::beside(journal)
        .load(disk)
        .map_err(|e| OpError::NotFound { what: io(e) })?;
    let Some(rev) = h.get(id) else {
        return Err(OpError::NoSuchRevision {
            vm: vm.to_string(),
            revision: id,
        });
    };
    let mut now = h.clone();
    now.notice_external();
    if !now.restorable(rev) {
        return Err(OpError::RevisionStale {
            vm: vm.to_string(),
            revision: id,
        });
    }
    ensure_base_writable(disk, check, journal)
}

/// Rolls `disk` of `vm` back to revision `id`: the state left is recorded first (returned:
/// its id), then the base goes back to the revision's snapshot and the overlay to its kept
/// file (or empty). With `firmware` (a UEFI VM whose only disk this is), the variables follow:
/// the state left keeps the current ones, and the revision's own are put back, with those of
/// its base recorded as the base's (what a later discard puts back). Blocking.
pub fn rollback(
    uri: &str,
    vm: &str,
    disk: &ManagedDisk,
    id: u64,
    check: &dyn DomainCheck,
    journal: &Journal,
    firmware: Option<FirmwareFollow>,
) -> Result<u64, OpError> {
    preflight_rollback(vm, disk, id, check, journal)?;
    let leave = Store::beside(journal)
        .update(disk, |h| {
            let id = h.next_id;
            h.next_id += 1;
            id
        })
        .map_err(|e| OpError::NotWritable {
            what: Store::beside(journal)
                .path_for(&disk.overlay)
                .display()
                .to_string(),
            reason: e.to_string(),
        })?;
    let step = Step::Rollback {
        target: id,
        leave,
        applying: false,
    };
    let mut rec = HistoryRecord::new(step, uri, vm, check, disk);
    rec.firmware = firmware;
    begin(journal, &rec)?;
    run_record(rec, check, journal)?;
    // Undoing a rollback goes back to the state it left.
    let undo = UndoPoint {
        revision: leave,
        overlay: Stamp::of(&disk.overlay).ok(),
        group: Some(new_group()),
    };
    if let Err(e) = Store::beside(journal).update(disk, |h| h.undo = Some(undo)) {
        log::warn!("{}: {e}", disk.overlay.display());
    }
    Ok(leave)
}

/// Refuses if `disk` has pinned revisions, which ending its history would delete.
pub fn ensure_none_pinned(vm: &str, disk: &ManagedDisk, journal: &Journal) -> Result<(), OpError> {
    if unsupported(disk).is_some() {
        return Ok(());
    }
    let h = Store::beside(journal)
        .load(disk)
        .map_err(|e| OpError::NotFound { what: io(e) })?;
    let pinned: Vec<String> = h
        .ready()
        .filter(|r| r.pinned)
        .map(|r| r.id.to_string())
        .collect();
    if pinned.is_empty() {
        Ok(())
    } else {
        Err(OpError::PinnedRevisions {
            vm: vm.to_string(),
            disk: disk.target.clone(),
            ids: pinned.join(", "),
        })
    }
}

/// Ends `disk`'s history before it stops being disposable (`release`): every revision expires
/// (journaled, as `keep 0` would), so the image the VM then uses directly keeps none of VM
/// Overlay's snapshots and the kept overlays are gone; then the history's own files. Refused
/// while revisions are pinned. Returns how many revisions expired.
pub fn end(
    uri: &str,
    vm: &str,
    disk: &ManagedDisk,
    check: &dyn DomainCheck,
    journal: &Journal,
) -> Result<usize, OpError> {
    if unsupported(disk).is_some() {
        return Ok(0);
    }
    ensure_none_pinned(vm, disk, journal)?;
    let store = Store::beside(journal);
    if !store.path_for(&disk.overlay).exists() {
        return Ok(0);
    }
    set_keep(journal, disk, 0).map_err(|e| OpError::NotWritable {
        what: store.path_for(&disk.overlay).display().to_string(),
        reason: e.to_string(),
    })?;
    let n = expire_now(uri, vm, disk, check, journal)?;
    let path = store.path_for(&disk.overlay);
    for f in [path.clone(), path.with_extension("lock")] {
        if let Err(e) = fs::remove_file(&f) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("{}: {e}", f.display());
            }
        }
    }
    // The folder of kept overlays, if nothing else is kept there.
    let _ = fs::remove_dir(
        kept_path(&disk.overlay, 0)
            .parent()
            .unwrap_or(Path::new("/")),
    );
    Ok(n)
}

/// Expires revisions of `disk` now, journaled (`vmoverlay keep`). Refused like a commit when
/// the images are in use.
pub fn expire_now(
    uri: &str,
    vm: &str,
    disk: &ManagedDisk,
    check: &dyn DomainCheck,
    journal: &Journal,
) -> Result<usize, OpError> {
    if let Some(why) = unsupported(disk) {
        return Err(OpError::HistoryUnsupported {
            vm: vm.to_string(),
            disk: disk.target.clone(),
            why,
        });
    }
    ensure_base_writable(disk, check, journal)?;
    let rec = HistoryRecord::new(Step::Expire, uri, vm, check, disk);
    begin(journal, &rec)?;
    let n = retain(journal, disk).map_err(|e| failed(&disk.overlay, e, expire_data()))?;
    journal.finish(&disk.overlay).map_err(|e| {
        failed(
            &disk.overlay,
            format!("journal: {e}"),
            tr("The revisions were expired"),
        )
    })?;
    Ok(n)
}

fn expire_data() -> String {
    tr("The guest's data is intact; the expiry is journaled and will be finished at the next start")
}

fn rollback_data() -> String {
    tr("The state being left is kept as a revision; the rollback is journaled and will be finished at the next start")
}

/// Runs (or resumes) a journaled rollback or expiry to its end.
fn run_record(
    mut rec: HistoryRecord,
    check: &dyn DomainCheck,
    journal: &Journal,
) -> Result<(), OpError> {
    let disk = rec.disk.clone();
    let overlay = disk.overlay.clone();
    let store = Store::beside(journal);
    let Step::Rollback {
        target,
        leave,
        applying,
    } = rec.history
    else {
        retain(journal, &disk).map_err(|e| failed(&overlay, e, expire_data()))?;
        return journal.finish(&overlay).map_err(|e| {
            failed(
                &overlay,
                format!("journal: {e}"),
                tr("The revisions were expired"),
            )
        });
    };
    let images = check.images(disk.engine)?;
    if !applying {
        // 1. The state being left becomes revision `leave`: a snapshot of the base, and the
        //    overlay kept (hard link) when it holds anything.
        let changed = images.changed_bytes(&disk).map_err(|e| OpError::NotFound {
            what: e.to_string(),
        })?;
        store
            .update(&disk, |h| -> Result<(), String> {
                h.notice_external();
                // A raw base: what the rollback will overwrite, every range of the undo
                // deltas it applies, is kept in a delta of its own.
                let overwritten = if h.raw {
                    raw_rollback_ranges(h, target, leave)?
                } else {
                    Vec::new()
                };
                let mut rev = match h.revisions.iter().find(|r| r.id == leave).cloned() {
                    Some(r) => r,
                    None => {
                        let mut r = h.new_revision(RevKind::Rollback, Some(rec.started.clone()));
                        h.next_id -= 1;
                        r.id = leave;
                        if !h.raw {
                            r.snapshot = Some(format!("vmoverlay-{leave}"));
                        } else if !overwritten.is_empty() {
                            r.delta = Some(store.delta_path(&disk.overlay, leave));
                        }
                        r.bytes = Some(0);
                        if changed > 0 {
                            r.overlay_file = Some(kept_path(&disk.overlay, leave));
                        }
                        r
                    }
                };
                h.set(rev.clone());
                store.save(h).map_err(io)?;
                kill_point("history-rollback-record");
                if let Some(s) = &rev.snapshot {
                    snapshot_base(h, s)?;
                }
                if let Some(d) = &rev.delta {
                    take_delta(&disk, &overwritten, d)?;
                }
                if let Some(f) = &rev.overlay_file {
                    keep_overlay(&disk.overlay, f)?;
                }
                // The variables of the state being left, and of its base.
                if let Some(fw) = &rec.firmware {
                    let recorded = FirmwareStore::beside(journal.dir()).path_for(&fw.uuid);
                    match (fs::read(&fw.nvram), fs::read(&recorded)) {
                        (Ok(vars), Ok(base)) => {
                            rev.firmware =
                                Some(store.write_firmware(&disk.overlay, leave, &vars, &base)?);
                        }
                        (Err(e), _) | (_, Err(e)) => log::warn!(
                            "{}: the firmware variables of the state left are not kept: {e}",
                            disk.overlay.display()
                        ),
                    }
                }
                rev.state = RevState::Ready;
                h.set(rev);
                Ok(())
            })
            .map_err(io)
            .and_then(|r| r)
            .map_err(|e| failed(&overlay, e, rollback_data()))?;
        rec.history = Step::Rollback {
            target,
            leave,
            applying: true,
        };
        journal
            .update_entry(&overlay, &rec)
            .map_err(|e| failed(&overlay, format!("journal: {e}"), rollback_data()))?;
    }
    // 2. The base and the overlay go to the revision (each step can be repeated).
    ensure_state(&disk, check)?;
    let h = store
        .load(&disk)
        .map_err(|e| failed(&overlay, io(e), rollback_data()))?;
    let rev = h
        .revisions
        .iter()
        .find(|r| r.id == target)
        .cloned()
        .ok_or_else(|| {
            failed(
                &overlay,
                format!("revision {target} is gone"),
                rollback_data(),
            )
        })?;
    // From here until the overlay is replaced, a guest started meanwhile fails to start
    // instead of running on a base half gone back.
    let held = image::hold_qemu_locks(&overlay)
        .map_err(|e| failed(&overlay, e.to_string(), rollback_data()))?;
    kill_point("history-rollback-apply");
    if h.raw {
        // Each undo delta from the newest down to the revision's (repeating them is harmless).
        let chain: Vec<PathBuf> = h
            .deltas_to(&rev, Some(leave))
            .ok_or_else(|| {
                failed(
                    &overlay,
                    format!("the base no longer leads back to revision {target}"),
                    rollback_data(),
                )
            })?
            .into_iter()
            .filter_map(|r| r.delta.clone())
            .collect();
        let mut scratch = h.clone();
        for d in &chain {
            apply_delta(&mut scratch, d).map_err(|e| failed(&overlay, e, rollback_data()))?;
        }
    }
    if let Some(s) = &rev.snapshot {
        qemu_img_run(&["snapshot", "-q", "-a", s], &disk.base)
            .map_err(|e| failed(&overlay, e, rollback_data()))?;
    }
    match &rev.overlay_file {
        Some(kept) => restore_overlay(&disk, kept, &held),
        None => qemu_img::rebuild_holding(&disk, &held),
    }
    .map_err(|e| failed(&overlay, e, rollback_data()))?;
    store
        .update(&disk, |h| {
            if rev.snapshot.is_some() || h.raw {
                h.gen = rev.base_gen;
            }
            if let Some(left) = h.revisions.iter_mut().find(|r| r.id == leave) {
                left.after_gen = Some(rev.base_gen);
            }
            h.base_stamp = Stamp::of(&h.base).ok();
        })
        .map_err(|e| failed(&overlay, io(e), rollback_data()))?;
    // The revision's firmware variables go back, and those of its base are recorded.
    if let (Some(fw), Some(kept)) = (&rec.firmware, &rev.firmware) {
        let restore = FirmwareRestore {
            from: kept.vars.clone(),
            nvram: fw.nvram.clone(),
        };
        firmware::restore(&restore)
            .and_then(|_| FirmwareStore::beside(journal.dir()).record(&fw.uuid, &kept.base_vars))
            .map_err(|e| {
                failed(
                    &overlay,
                    format!("the firmware variables {}: {e}", fw.nvram.display()),
                    rollback_data(),
                )
            })?;
    }
    // Until the variables are back too, no guest may start (and boot with the old ones).
    drop(held);
    if let Err(e) = retain(journal, &disk) {
        log::warn!("{}: expiring old revisions: {e}", overlay.display());
    }
    journal.finish(&overlay).map_err(|e| {
        failed(
            &overlay,
            format!("journal: {e}"),
            tr("The rollback itself completed"),
        )
    })
}

/// Puts a copy of the kept overlay `kept` in place of the overlay (the revision keeps its
/// file, so it can be rolled back to again): copied beside it, then renamed over it.
fn restore_overlay(
    disk: &ManagedDisk,
    kept: &Path,
    _held: &image::QemuLocks,
) -> Result<(), String> {
    let overlay = &disk.overlay;
    let dir = overlay.parent().ok_or("overlay has no directory")?;
    let name = overlay.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.vmoverlay-new"));
    let meta = fs::metadata(overlay).map_err(|e| format!("{}: {e}", overlay.display()))?;
    let finish = || -> std::io::Result<()> {
        let _ = fs::remove_file(&tmp);
        fs::copy(kept, &tmp)?;
        std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, overlay)?;
        sync_dir(dir)
    };
    finish().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!(
            "restoring {} from {}: {e}",
            overlay.display(),
            kept.display()
        )
    })
}

/// Builds the [`DomainCheck`] for the domain a history record names.
pub type HistoryCheckFactory<'a> =
    &'a dyn Fn(&HistoryRecord) -> Result<Box<dyn DomainCheck>, OpError>;

/// Finishes every rollback and expiry an earlier run left in `journal`.
pub fn recover(
    journal: &Journal,
    make_check: HistoryCheckFactory,
) -> Vec<(HistoryRecord, Result<(), OpError>)> {
    journal
        .pending_of::<HistoryRecord>()
        .into_iter()
        .flatten()
        .map(|rec| {
            let result = make_check(&rec).and_then(|check| {
                check.images(rec.disk.engine)?.clean_up_interrupted()?;
                ensure_state(&rec.disk, check.as_ref())?;
                ensure_base_alone(&rec.disk, check.as_ref())?;
                run_record(rec.clone(), check.as_ref(), journal)
            });
            (rec, result)
        })
        .collect()
}
