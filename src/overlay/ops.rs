//! commit / discard / rebuild, with their preconditions.
//!
//! Order of every operation: preconditions (nothing written yet) → journal record → write.
//! The domain's state and the image locks are checked again right before each write.
//! Commit: `qemu-img commit` into the base, `qemu-img check` of the base, then rebuild.
//! Discard: rebuild only. Rebuild: a new empty overlay is created beside the old one and
//! renamed over it, so there is never a moment without an overlay file.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::backend::{EngineKind, Images, QemuImg};
use super::chain::ManagedDisk;
use super::error::EngineError;
use super::image;
use super::journal::{sync_dir, Journal, OpKind, Phase, Record};
use crate::i18n::{tr, tr_f};

/// What the engine needs to know about the domain; implemented over libvirt by the caller, so
/// the engine itself never touches libvirt.
pub trait DomainCheck: Send {
    /// `Err(DomainActive)` if the domain runs (or is paused, …) right now.
    fn ensure_inactive(&self) -> Result<(), EngineError>;
    /// Disks of any domain, other than `overlay`, whose backing chain contains `base`.
    fn other_users(&self, base: &Path, overlay: &Path) -> Result<Vec<String>, EngineError>;
    /// The engine that works on disks of kind `kind`. Only `qemu-img` needs no connection.
    fn images(&self, kind: EngineKind) -> Result<&dyn Images, EngineError> {
        match kind {
            EngineKind::QemuImg => Ok(&QemuImg),
            EngineKind::Libvirt => Err(EngineError::NotManaged {
                what: "the libvirt engine needs a connection to the domain's libvirtd".into(),
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Fraction 0.0..=1.0 of `qemu-img commit`.
    Committing(f64),
    CheckingBase,
    Rebuilding,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub op: OpKind,
    pub uri: String,
    pub domain: String,
    pub disk: ManagedDisk,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub op: OpKind,
    pub domain: String,
    pub target: String,
    pub overlay: PathBuf,
    /// Bytes the overlay held before the operation (committed or discarded).
    pub changed_bytes: u64,
    /// Finished from the journal after an interruption.
    pub resumed: bool,
}

fn failed(op: &str, overlay: &Path, detail: impl Into<String>, data: &str) -> EngineError {
    EngineError::Failed {
        op: op.to_string(),
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
pub fn changed_bytes(disk: &ManagedDisk, check: &dyn DomainCheck) -> Result<u64, String> {
    check
        .images(disk.engine)
        .map_err(|e| e.to_string())?
        .changed_bytes(disk)
}

/// Checks every precondition of `req`; writes nothing. Returns the overlay's changed bytes.
pub fn preflight(
    req: &Request,
    check: &dyn DomainCheck,
    journal: &Journal,
) -> Result<u64, EngineError> {
    let disk = &req.disk;
    let images = check.images(disk.engine)?;
    let now = images
        .inspect(&disk.target, &disk.overlay)
        .map_err(|what| EngineError::NotManaged { what })?;
    if now.base != disk.base {
        return Err(EngineError::NotManaged {
            what: format!(
                "the backing file of {} is now {}, not {}",
                disk.overlay.display(),
                now.base.display(),
                disk.base.display()
            ),
        });
    }
    let record = journal.path_for(&disk.overlay);
    if record.exists() {
        return Err(EngineError::Busy {
            overlay: disk.overlay.clone(),
            journal: record,
        });
    }
    check.ensure_inactive()?;
    let commit = req.op == OpKind::Commit;
    images.ensure_unlocked(disk, true)?;
    images.ensure_writable(disk, commit)?;
    let changed = images
        .changed_bytes(disk)
        .map_err(|what| EngineError::NotFound { what })?;
    if commit {
        let mut users = check.other_users(&disk.base, &disk.overlay)?;
        users.extend(images.other_overlays(disk));
        users.sort();
        users.dedup();
        if !users.is_empty() {
            return Err(EngineError::SharedBase {
                base: disk.base.clone(),
                users,
            });
        }
        let free = images
            .free_space(disk)
            .map_err(|what| EngineError::NotFound { what })?;
        if free < changed {
            return Err(EngineError::NoSpace {
                base: disk.base.clone(),
                need: changed,
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
) -> Result<Outcome, EngineError> {
    let changed = preflight(req, check, journal)?;
    let rec = Record {
        op: req.op,
        uri: req.uri.clone(),
        domain: req.domain.clone(),
        disk: req.disk.clone(),
        phase: match req.op {
            OpKind::Commit => Phase::Committing,
            OpKind::Discard => Phase::Rebuilding,
        },
        overlay_stamp: match req.op {
            OpKind::Commit => None,
            OpKind::Discard => check.images(req.disk.engine)?.stamp(&req.disk),
        },
        started: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    journal.begin(&rec).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => EngineError::Busy {
            overlay: req.disk.overlay.clone(),
            journal: journal.path_for(&req.disk.overlay),
        },
        _ => EngineError::NotWritable {
            what: format!("the journal {}", journal.dir().display()),
            reason: e.to_string(),
        },
    })?;
    execute(rec, check, journal, progress, changed, false)
}

/// Finishes an interrupted operation from its journal record.
pub fn resume(
    rec: Record,
    check: &dyn DomainCheck,
    journal: &Journal,
    progress: &mut dyn FnMut(Progress),
) -> Result<Outcome, EngineError> {
    let images = check.images(rec.disk.engine)?;
    images.clean_up_interrupted()?;
    check.ensure_inactive()?;
    images.ensure_unlocked(&rec.disk, true)?;
    let changed = images.changed_bytes(&rec.disk).unwrap_or(0);
    execute(rec, check, journal, progress, changed, true)
}

fn execute(
    mut rec: Record,
    check: &dyn DomainCheck,
    journal: &Journal,
    progress: &mut dyn FnMut(Progress),
    changed: u64,
    resumed: bool,
) -> Result<Outcome, EngineError> {
    let overlay = rec.disk.overlay.clone();
    let images = check.images(rec.disk.engine)?;
    if rec.phase == Phase::Committing {
        // Right before the write: QEMU's own locks cover the rest of the commit (a guest
        // started now cannot open the overlay).
        if let Err(e) = check
            .ensure_inactive()
            .and_then(|_| images.prepare_write(&rec.disk, Phase::Committing))
        {
            // Nothing written yet: a fresh run leaves no record behind, so "nothing was
            // changed" is true; a resumed one stays journaled for the next start.
            if !resumed {
                let _ = journal.finish(&overlay);
            }
            return Err(e);
        }
        images
            .commit(&rec.disk, progress)
            .map_err(|e| failed("commit", &overlay, e, &data_in_overlay()))?;
        progress(Progress::CheckingBase);
        if let Err(e) = images.check_base(&rec.disk) {
            // The base may be damaged: keep the overlay, which still reads correctly on top
            // of everything it wrote, and let a person decide. Nothing is retried.
            let _ = journal.finish(&overlay);
            return Err(failed(
                "commit",
                &overlay,
                e,
                &tr("The overlay was kept as it is; check the base before using it"),
            ));
        }
        rec.phase = Phase::Rebuilding;
        rec.overlay_stamp = images.stamp(&rec.disk);
        journal
            .update(&rec)
            .map_err(|e| failed("commit", &overlay, format!("journal: {e}"), &data_in_base()))?;
    }
    if let Err(e) = check
        .ensure_inactive()
        .and_then(|_| images.prepare_write(&rec.disk, Phase::Rebuilding))
    {
        return Err(match rec.op {
            // The base already holds the guest's data: not "nothing was changed".
            OpKind::Commit => {
                let detail = match &e {
                    EngineError::DomainActive { domain, state } => tr_f(
                        "{vm} became {state} before its overlay was rebuilt",
                        &[("vm", domain), ("state", state)],
                    ),
                    EngineError::Locked { path } => tr_f(
                        "{path} was opened by another process before it was rebuilt",
                        &[("path", &path.display().to_string())],
                    ),
                    other => other.to_string(),
                };
                failed("commit", &overlay, detail, &data_in_base())
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
    // No overlay at all: the libvirt engine was interrupted between deleting the old volume
    // and creating the new one; creating it is all that is left.
    if rec.overlay_stamp.is_some() && now.is_some() && now != rec.overlay_stamp {
        // Someone (a guest started meanwhile) wrote to the overlay: rebuilding would lose
        // that. Keep it, and drop the record so the overlay is not blocked forever.
        let _ = journal.finish(&overlay);
        return Err(failed(
            rec.op.word(),
            &overlay,
            "the overlay changed after the operation began",
            &tr("It was left as it is, with everything written to it"),
        ));
    }
    progress(Progress::Rebuilding);
    images.rebuild(&rec.disk).map_err(|e| {
        failed(
            rec.op.word(),
            &overlay,
            e,
            &match rec.op {
                OpKind::Commit => data_in_base(),
                OpKind::Discard => tr("The old overlay is still in place; the discard is journaled and will be finished at the next start"),
            },
        )
    })?;
    journal.finish(&overlay).map_err(|e| {
        failed(
            rec.op.word(),
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

/// Parses `qemu-img commit -p` progress: "    (51.52/100%)".
pub fn parse_progress(chunk: &str) -> Option<f64> {
    let inner = chunk.trim().strip_prefix('(')?.strip_suffix("/100%)")?;
    inner
        .trim()
        .parse::<f64>()
        .ok()
        .map(|p| (p / 100.0).clamp(0.0, 1.0))
}

pub(super) fn commit_image(
    overlay: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), String> {
    // -d: leave the overlay as it is (it is replaced next), which also keeps it a complete
    // copy of the guest's changes until the rebuild.
    let mut child = image::qemu_img()
        .args(["commit", "-p", "-d", "-f", "qcow2"])
        .arg(overlay)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut buf = [0u8; 256];
    let mut pending = String::new();
    loop {
        let n = stdout.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        pending.push_str(&String::from_utf8_lossy(&buf[..n]));
        while let Some(i) = pending.find(['\r', '\n']) {
            let chunk: String = pending.drain(..=i).collect();
            if let Some(p) = parse_progress(&chunk) {
                progress(Progress::Committing(p));
            }
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let err = err_reader.join().unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        let msg = err.trim().trim_start_matches("qemu-img: ").to_string();
        Err(if msg.is_empty() {
            format!("qemu-img commit ended with {status}")
        } else {
            msg
        })
    }
}

/// `qemu-img check` of a qcow2 base; leaked clusters (exit 3) are harmless.
pub(super) fn check_image(base: &Path, format: &str) -> Result<(), String> {
    if format != "qcow2" {
        return Ok(()); // qemu-img check knows nothing to check in raw images
    }
    let out = image::qemu_img()
        .args(["check", "-q", "-f", "qcow2"])
        .arg(base)
        .output()
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    match out.status.code() {
        Some(0) | Some(3) => Ok(()),
        _ => Err(format!(
            "qemu-img check of the base {} failed: {}",
            base.display(),
            String::from_utf8_lossy(&out.stdout).trim().to_string()
                + String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// Replaces the overlay by an empty one with the same backing reference (relative stays
/// relative), backing format, virtual size, cluster size, owner, group and mode.
pub fn rebuild(disk: &ManagedDisk) -> Result<(), String> {
    let overlay = &disk.overlay;
    let dir = overlay.parent().ok_or("overlay has no directory")?;
    let name = overlay
        .file_name()
        .ok_or("overlay has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.vmoverlay-new"));
    let meta = std::fs::metadata(overlay).map_err(|e| format!("{}: {e}", overlay.display()))?;
    let _ = std::fs::remove_file(&tmp); // a leftover of an interrupted rebuild
    let mut cmd = image::qemu_img();
    cmd.args([
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        &disk.base_format,
        "-b",
        &disk.backing_ref,
    ]);
    if let Some(cs) = disk.cluster_size {
        cmd.arg("-o").arg(format!("cluster_size={cs}"));
    }
    // Run in the overlay's directory: a relative backing reference is resolved from there.
    let out = cmd
        .arg(&tmp)
        .arg(disk.virtual_size.to_string())
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run qemu-img: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "creating the new overlay: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let finish = || -> std::io::Result<()> {
        std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, overlay)?;
        sync_dir(dir)
    };
    finish().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("replacing {}: {e}", overlay.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_parse() {
        assert_eq!(parse_progress("    (0.00/100%)\r"), Some(0.0));
        assert_eq!(parse_progress("    (51.52/100%)\r"), Some(0.5152));
        assert_eq!(parse_progress("    (100.00/100%)\n"), Some(1.0));
        assert_eq!(parse_progress("Image committed.\n"), None);
    }
}
