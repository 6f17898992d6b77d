//! The orchestration of commit and discard: preconditions, journal, writes, resume. The
//! writes themselves are the engine's ([`ImageEngine`]).
//!
//! Order of every operation: preconditions (nothing written yet) → journal record → write.
//! The domain's state, libvirt's saved state and the image locks are checked again right
//! before each write. Commit: a revision of the base (history), copy the overlay into the
//! base, check the base, then rebuild. Discard: keep the old overlay (history), rebuild.

use std::path::Path;

use super::domain::{ensure_base_alone, DomainCheck};
use super::engine::ImageEngine;
use super::error::OpError;
use super::journal::{Journal, Record};
use super::types::{CommitWrites, ManagedDisk, OpKind, Outcome, Phase, Progress, Request};
use crate::i18n::{tr, tr_f};

/// What a running job reports, in order: any number of `Progress`, then one `Done`.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEvent {
    Progress(Progress),
    Done(Result<Outcome, OpError>),
}

/// Runs `req` on a worker thread. Await the receiver on any main loop (or `recv_blocking`).
pub fn spawn(
    req: Request,
    check: Box<dyn DomainCheck>,
    journal: Journal,
) -> async_channel::Receiver<JobEvent> {
    let (tx, rx) = async_channel::unbounded();
    std::thread::Builder::new()
        .name(format!("{} {}", req.op.word(), req.disk.target))
        .spawn(move || {
            let progress_tx = tx.clone();
            let mut progress = move |p| {
                let _ = progress_tx.try_send(JobEvent::Progress(p));
            };
            let result = run(&req, check.as_ref(), &journal, &mut progress);
            let _ = tx.try_send(JobEvent::Done(result));
        })
        .expect("spawn an operation's worker thread");
    rx
}

/// Builds the [`DomainCheck`] for the domain a journal record names.
pub type CheckFactory<'a> = &'a dyn Fn(&Record) -> Result<Box<dyn DomainCheck>, OpError>;

/// Finishes every interrupted operation in `journal` (an interrupted commit is completed,
/// an interrupted rebuild finished), before anything else happens to those VMs.
pub fn recover(
    journal: &Journal,
    make_check: CheckFactory,
    progress: &mut dyn FnMut(&Record, Progress),
) -> Vec<(Record, Result<Outcome, OpError>)> {
    let mut out = Vec::new();
    for entry in journal.pending() {
        let rec = match entry {
            Ok(rec) => rec,
            Err((path, e)) => {
                log::error!("unreadable journal record {}: {e}", path.display());
                continue;
            }
        };
        let result = make_check(&rec).and_then(|check| {
            resume(rec.clone(), check.as_ref(), journal, &mut |p| {
                progress(&rec, p)
            })
        });
        out.push((rec, result));
    }
    out
}

fn failed(op: OpKind, overlay: &Path, detail: impl Into<String>, data: &str) -> OpError {
    OpError::Failed {
        op,
        overlay: overlay.to_path_buf(),
        detail: detail.into(),
        data: data.to_string(),
    }
}

fn data_in_overlay() -> String {
    tr("The guest's data is intact: the overlay still holds all of it. The operation is journaled and will be finished at the next start")
}

fn data_in_base() -> String {
    tr("The guest's data is intact: it is in the base, and the old overlay is still in place. The operation is journaled and will be finished at the next start")
}

/// Guest data in the overlay of `disk`, asked of the engine that works on it.
pub fn changed_bytes(disk: &ManagedDisk, check: &dyn DomainCheck) -> Result<u64, OpError> {
    check
        .images(disk.engine)?
        .changed_bytes(disk)
        .map_err(|e| OpError::NotFound {
            what: e.to_string(),
        })
}

/// Everything that must hold before anything is written, and again right before a write:
/// the domain is off, libvirt keeps nothing that needs the images as they are, and the
/// images hold nothing a rebuild would lose.
fn ensure_state(
    op: OpKind,
    disk: &ManagedDisk,
    check: &dyn DomainCheck,
    images: &dyn ImageEngine,
) -> Result<(), OpError> {
    check.ensure_inactive()?;
    check.ensure_no_saved_state()?;
    images.ensure_nothing_inside(disk, op == OpKind::Commit)
}

/// Checks every precondition of `req`; writes nothing. Returns the overlay's changed bytes.
pub fn preflight(
    req: &Request,
    check: &dyn DomainCheck,
    journal: &Journal,
) -> Result<u64, OpError> {
    let disk = &req.disk;
    let images = check.images(disk.engine)?;
    journal.ensure_disk_free(images, disk, |reason| OpError::DiskNotManaged {
        vm: req.domain.clone(),
        disk: disk.target.clone(),
        reason: Box::new(reason),
    })?;
    ensure_state(req.op, disk, check, images)?;
    let commit = req.op == OpKind::Commit;
    images.ensure_unlocked(disk, true)?;
    images.ensure_writable(disk, commit)?;
    let changed = images.changed_bytes(disk).map_err(|e| OpError::NotFound {
        what: e.to_string(),
    })?;
    if commit {
        ensure_base_alone(disk, check)?;
        let free = images
            .free_space(disk)
            .map_err(|what| OpError::NotFound { what })?;
        let need = commit_space_needed(changed, disk.cluster_size.unwrap_or(65536));
        if free < need {
            return Err(OpError::NoSpace {
                base: disk.base.clone(),
                need,
                free,
            });
        }
    }
    Ok(changed)
}

/// Runs `req` to the end: preconditions, journal, writes. Blocking; run it off the main loop
/// (see [`super::spawn`]).
pub fn run(
    req: &Request,
    check: &dyn DomainCheck,
    journal: &Journal,
    progress: &mut dyn FnMut(Progress),
) -> Result<Outcome, OpError> {
    let changed = preflight(req, check, journal)?;
    let rec = Record {
        op: req.op,
        uri: req.uri.clone(),
        domain: req.domain.clone(),
        uuid: check.uuid(),
        disk: req.disk.clone(),
        phase: match req.op {
            OpKind::Commit => Phase::Committing,
            OpKind::Discard => Phase::Rebuilding,
        },
        // The overlay as it was when the operation began: an interrupted operation is only
        // finished on this same, unwritten overlay (a commit's own copy reads it only).
        overlay_stamp: check.images(req.disk.engine)?.stamp(&req.disk),
        started: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        firmware: req.firmware.clone(),
        boot: super::journal::boot_id(),
    };
    // A record that could not be written completely is removed by `begin` itself.
    journal.begin(&rec).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => OpError::Busy {
            overlay: req.disk.overlay.clone(),
            journal: journal.path_for(&req.disk.overlay),
        },
        _ => OpError::NotWritable {
            what: format!("the journal {}", journal.dir().display()),
            reason: e.to_string(),
        },
    })?;
    execute(rec, check, journal, progress, changed, false)
}

/// Finishes an interrupted operation from its journal record, only if what it was started
/// on is still true: the overlay unwritten since, nobody else on the base. Otherwise the
/// record stays and the error says what state the images are in.
pub fn resume(
    rec: Record,
    check: &dyn DomainCheck,
    journal: &Journal,
    progress: &mut dyn FnMut(Progress),
) -> Result<Outcome, OpError> {
    resume_with(rec, check, journal, progress, false)
}

/// As [`resume`]; with `user_chose_commit`, an interrupted commit whose overlay was written
/// since is finished anyway (the user asked to commit what the overlay holds now).
pub fn resume_with(
    rec: Record,
    check: &dyn DomainCheck,
    journal: &Journal,
    progress: &mut dyn FnMut(Progress),
    user_chose_commit: bool,
) -> Result<Outcome, OpError> {
    let images = check.images(rec.disk.engine)?;
    images.clean_up_interrupted()?;
    ensure_state(rec.op, &rec.disk, check, images)?;
    images.ensure_unlocked(&rec.disk, true)?;
    if rec.phase == Phase::Committing {
        let now = images.stamp(&rec.disk);
        let written = rec.overlay_stamp.is_some() && now.is_some() && now != rec.overlay_stamp;
        if written && !user_chose_commit {
            return Err(OpError::InterruptedAndWritten {
                vm: rec.domain.clone(),
                overlay: rec.disk.overlay.clone(),
                base: rec.disk.base.clone(),
            });
        }
        ensure_base_alone(&rec.disk, check)?;
    }
    let changed = images.changed_bytes(&rec.disk).unwrap_or(0);
    execute(rec, check, journal, progress, changed, true)
}

/// Lets go of what the engine held for the rebuild, when dropped.
struct ReleaseHeld<'a>(&'a dyn super::engine::ImageEngine, ManagedDisk);

impl Drop for ReleaseHeld<'_> {
    fn drop(&mut self) {
        self.0.release_held(&self.1);
    }
}

/// The boot ID a commit's record gets when its unordered writes failed: never this boot's, so
/// the resumed commit takes the crash path (see `history::before_commit`).
const UNFLUSHED: &str = "unflushed";

fn execute(
    mut rec: Record,
    check: &dyn DomainCheck,
    journal: &Journal,
    progress: &mut dyn FnMut(Progress),
    changed: u64,
    resumed: bool,
) -> Result<Outcome, OpError> {
    let overlay = rec.disk.overlay.clone();
    let images = check.images(rec.disk.engine)?;
    // What the engine keeps holding from the end of the commit to the rebuild, let go of on
    // any way out before it.
    let mut _release = None;
    if rec.phase == Phase::Committing {
        // Right before the write: QEMU's own locks cover the rest of the commit (a guest
        // started now cannot open the overlay).
        if let Err(e) = ensure_state(rec.op, &rec.disk, check, images)
            .and_then(|_| images.prepare_write(&rec.disk, Phase::Committing))
        {
            // Nothing written yet: a fresh run leaves no record behind, so "nothing was
            // changed" is true; a resumed one stays journaled for the next start.
            if !resumed {
                let _ = journal.finish(&overlay);
            }
            return Err(e);
        }
        // History: a snapshot of the base, right before the commit writes it.
        let writes = match super::history::before_commit(journal, &rec, changed, resumed) {
            Ok(w) => w,
            Err(e) => {
                if !resumed {
                    let _ = journal.finish(&overlay);
                }
                return Err(failed(
                    OpKind::Commit,
                    &overlay,
                    format!("taking a revision: {e}"),
                    &tr("Nothing was committed: the overlay still holds all of the guest's data"),
                ));
            }
        };
        if let Err(e) = images.commit(&rec.disk, writes, progress) {
            if writes == CommitWrites::Protected {
                // Unordered writes that failed (a write error, a failed flush) may be lost in
                // any order, as in a crash: the resumed commit goes back to the revision first.
                rec.boot = Some(UNFLUSHED.into());
                if let Err(j) = journal.update(&rec) {
                    log::error!("{}: journal: {j}", overlay.display());
                }
            }
            return Err(failed(OpKind::Commit, &overlay, e, &data_in_overlay()));
        }
        _release = Some(ReleaseHeld(images, rec.disk.clone()));
        crate::hook::kill_point("commit-written");
        progress(Progress::CheckingBase);
        if let Err(e) = images.check_base(&rec.disk) {
            // The base may be damaged: keep the overlay, which still reads correctly on top
            // of everything it wrote, and let a person decide. Nothing is retried.
            let _ = journal.finish(&overlay);
            return Err(failed(
                OpKind::Commit,
                &overlay,
                e,
                &tr("The overlay was kept as it is; check the base before using it"),
            ));
        }
        super::history::base_written(journal, &rec);
        rec.phase = Phase::Rebuilding;
        // The libvirt engine's QEMU may have touched the overlay's file while committing.
        rec.overlay_stamp = images.stamp(&rec.disk);
        journal.update(&rec).map_err(|e| {
            failed(
                OpKind::Commit,
                &overlay,
                format!("journal: {e}"),
                &data_in_base(),
            )
        })?;
    }
    if let Err(e) = ensure_state(OpKind::Discard, &rec.disk, check, images)
        .and_then(|_| images.prepare_write(&rec.disk, Phase::Rebuilding))
    {
        return Err(match rec.op {
            // The base already holds the guest's data: not "nothing was changed".
            OpKind::Commit => {
                let detail = match &e {
                    OpError::DomainActive { domain, state } => tr_f(
                        "{vm} became {state} before its overlay was rebuilt",
                        &[("vm", domain), ("state", state)],
                    ),
                    OpError::Locked { path } => tr_f(
                        "{path} was opened by another process before it was rebuilt",
                        &[("path", &path.display().to_string())],
                    ),
                    other => other.to_string(),
                };
                failed(OpKind::Commit, &overlay, detail, &data_in_base())
            }
            OpKind::Discard => {
                if !resumed {
                    let _ = journal.finish(&overlay);
                }
                e
            }
        });
    }
    let now = images.stamp(&rec.disk);
    // An interrupted run that had already replaced the overlay (it is empty now): only what
    // follows the rebuild is left.
    let rebuilt = resumed
        && now != rec.overlay_stamp
        && images.changed_bytes(&rec.disk).is_ok_and(|n| n == 0);
    // No overlay at all: the libvirt engine was interrupted between deleting the old volume
    // and creating the new one; creating it is all that is left.
    if !rebuilt && rec.overlay_stamp.is_some() && now.is_some() && now != rec.overlay_stamp {
        // Someone (a guest started meanwhile) wrote to the overlay: rebuilding would lose
        // that. Keep it, and drop the record so the overlay is not blocked forever.
        let _ = journal.finish(&overlay);
        return Err(failed(
            rec.op,
            &overlay,
            "the overlay changed after the operation began",
            &tr("It was left as it is, with everything written to it"),
        ));
    }
    progress(Progress::Rebuilding);
    if !rebuilt {
        // History: the discarded overlay is kept (linked aside) before it is replaced.
        if rec.op == OpKind::Discard {
            if let Err(e) = super::history::before_discard(journal, &rec, changed) {
                return Err(failed(
                    OpKind::Discard,
                    &overlay,
                    format!("keeping a revision: {e}"),
                    &tr("The old overlay is still in place; the discard is journaled and will be finished at the next start"),
                ));
            }
        }
        rebuild(&rec, images)?;
    }
    // History: expire what retention says, while the images are still known to be unused.
    if let Err(e) = super::history::retain(journal, &rec.disk) {
        log::warn!("{}: expiring old revisions: {e}", overlay.display());
    }
    if let Some(fw) = &rec.firmware {
        super::firmware::restore(fw).map_err(|e| {
            failed(
                rec.op,
                &overlay,
                format!(
                    "the firmware variables {} were not put back: {e}",
                    fw.nvram.display()
                ),
                &tr("The overlay is rebuilt; the discard is journaled and its firmware variables will be put back at the next start"),
            )
        })?;
    }
    super::history::operation_done(journal, &rec);
    journal.finish(&overlay).map_err(|e| {
        failed(
            rec.op,
            &overlay,
            format!("journal: {e}"),
            &tr("The operation itself completed"),
        )
    })?;
    Ok(Outcome {
        op: rec.op,
        domain: rec.domain,
        target: rec.disk.target,
        overlay,
        changed_bytes: changed,
        resumed,
    })
}

fn rebuild(rec: &Record, images: &dyn ImageEngine) -> Result<(), OpError> {
    images.rebuild(&rec.disk).map_err(|e| {
        failed(
            rec.op,
            &rec.disk.overlay,
            e,
            &match rec.op {
                OpKind::Commit => data_in_base(),
                OpKind::Discard => tr("The old overlay is still in place; the discard is journaled and will be finished at the next start"),
            },
        )
    })
}

/// Bytes a commit may need in the base's filesystem: the guest's data, plus qcow2's own
/// metadata for it (an L2 entry and a refcount entry per cluster, allocated a cluster at a
/// time, and a margin for the refcount table to grow), so a commit never ends half-done for
/// lack of room for its metadata.
pub fn commit_space_needed(changed: u64, cluster: u64) -> u64 {
    if changed == 0 {
        return 0;
    }
    let clusters = changed.div_ceil(cluster);
    let per_table = cluster / 8;
    let tables = clusters.div_ceil(per_table) * 2; // L2 tables and refcount blocks
    changed + (tables + 4) * cluster
}

#[cfg(test)]
mod tests {
    use super::commit_space_needed;

    #[test]
    fn commit_space_counts_metadata() {
        assert_eq!(commit_space_needed(0, 65536), 0);
        let one = commit_space_needed(4096, 65536);
        assert!(one > 4096 && one <= 4096 + 6 * 65536, "{one}");
        let gib = 1 << 30;
        let need = commit_space_needed(gib, 65536);
        assert!(need > gib && need < gib + gib / 100, "{need}");
    }
}
