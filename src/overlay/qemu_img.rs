//! The `qemu-img` engine: this process works on image files it can write, with `qemu-img`
//! subprocesses (paths are arguments, never passed through a shell).
//! Rebuild: a new empty overlay is created beside the old one and renamed over it, so there is
//! never a moment without an overlay file.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::discover::inspect_overlay;
use super::engine::{Hold, ImageEngine};
use super::error::{OpError, SkipReason};
use super::image;
use super::journal::sync_dir;
use super::types::Probe;
use super::types::{CommitWrites, Engine, ManagedDisk, Progress, Stamp};

/// The local engine: `qemu-img` subprocesses on files this process can write.
pub struct QemuImgEngine;

/// QEMU's locks on overlays whose commit has written the base and whose rebuild is still to
/// come. Taken the moment `qemu-img commit` exits, so a guest started before its overlay is
/// replaced fails to start, as it does while qemu-img runs (otherwise it could open the old
/// overlay between the two, and the rebuild would then refuse to replace it).
static HELD_FOR_REBUILD: std::sync::Mutex<Vec<(PathBuf, image::QemuLocks)>> =
    std::sync::Mutex::new(Vec::new());

fn held_for_rebuild() -> std::sync::MutexGuard<'static, Vec<(PathBuf, image::QemuLocks)>> {
    HELD_FOR_REBUILD.lock().unwrap_or_else(|p| p.into_inner())
}

fn take_held(overlay: &Path) -> Option<image::QemuLocks> {
    let mut held = held_for_rebuild();
    let i = held.iter().position(|(p, _)| p == overlay)?;
    Some(held.remove(i).1)
}

impl ImageEngine for QemuImgEngine {
    fn kind(&self) -> Engine {
        Engine::QemuImg
    }

    fn inspect(&self, target: &str, overlay: &Path) -> Result<ManagedDisk, SkipReason> {
        inspect_overlay(target, overlay)
    }

    fn changed_bytes(&self, disk: &ManagedDisk) -> Result<u64, SkipReason> {
        image::changed_bytes(&disk.overlay)
    }

    fn ensure_unlocked(&self, disk: &ManagedDisk, base_too: bool) -> Result<(), OpError> {
        // An overlay this process holds for its rebuild is closed to everyone else.
        let held = held_for_rebuild().iter().any(|(p, _)| *p == disk.overlay);
        let mut paths: Vec<&Path> = Vec::new();
        if !held {
            paths.push(&disk.overlay);
        }
        if base_too {
            paths.push(&disk.base);
        }
        image::ensure_unlocked(&paths)
    }

    fn ensure_writable(&self, disk: &ManagedDisk, base_too: bool) -> Result<(), OpError> {
        let dir = disk.overlay.parent().unwrap_or(Path::new("/"));
        image::is_writable(dir).map_err(|reason| OpError::NotWritable {
            what: format!("the overlay's directory {}", dir.display()),
            reason,
        })?;
        if base_too {
            image::is_writable(&disk.base).map_err(|reason| OpError::NotWritable {
                what: format!("the base {}", disk.base.display()),
                reason,
            })?;
        }
        Ok(())
    }

    fn ensure_nothing_inside(&self, disk: &ManagedDisk, commit: bool) -> Result<(), OpError> {
        ensure_nothing_inside(disk, commit)
    }

    fn other_overlays(&self, disk: &ManagedDisk) -> Vec<String> {
        let dir = disk.overlay.parent().unwrap_or(Path::new("/"));
        let mut dirs = vec![dir];
        if let Some(bdir) = disk.base.parent().filter(|b| *b != dir) {
            dirs.push(bdir);
        }
        dirs.into_iter()
            .flat_map(|d| image::other_overlays_of(d, &disk.base, &disk.overlay))
            .map(|p| p.display().to_string())
            .collect()
    }

    fn free_space(&self, disk: &ManagedDisk) -> Result<u64, String> {
        image::free_space(&disk.base)
    }

    fn commit(
        &self,
        disk: &ManagedDisk,
        writes: CommitWrites,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), String> {
        commit_image(&disk.overlay, &disk.base, writes, progress)?;
        // If a guest got the overlay in the instant since qemu-img let go, the checks before
        // the rebuild see it.
        if let Ok(locks) = image::hold_qemu_locks(&disk.overlay) {
            held_for_rebuild().push((disk.overlay.clone(), locks));
        }
        Ok(())
    }

    fn release_held(&self, disk: &ManagedDisk) {
        drop(take_held(&disk.overlay));
    }

    fn check_base(&self, disk: &ManagedDisk) -> Result<(), String> {
        check_image(&disk.base, &disk.base_format)
    }

    fn stamp(&self, disk: &ManagedDisk) -> Option<Stamp> {
        Stamp::of(&disk.overlay).ok()
    }

    fn rebuild(&self, disk: &ManagedDisk) -> Result<(), String> {
        match take_held(&disk.overlay) {
            Some(held) => rebuild_holding(disk, &held),
            None => rebuild(disk),
        }
    }

    fn probe(&self, path: &Path) -> Result<Probe, SkipReason> {
        probe(path)
    }

    fn exists(&self, path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok()
    }

    fn ensure_can_create(&self, image: &Path) -> Result<(), OpError> {
        let dir = image.parent().unwrap_or(Path::new("/"));
        image::is_writable(dir).map_err(|reason| OpError::NotWritable {
            what: format!("the directory {}", dir.display()),
            reason,
        })
    }

    fn create_overlay(
        &self,
        base: &Path,
        base_format: &str,
        virtual_size: u64,
        overlay: &Path,
    ) -> Result<(), String> {
        create_overlay(base, base_format, virtual_size, overlay)
    }

    fn remove_image(&self, path: &Path) -> Result<(), String> {
        std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
        sync_dir(path.parent().unwrap_or(Path::new("/"))).map_err(|e| e.to_string())
    }

    fn hold(&self, path: &Path) -> Result<Hold, OpError> {
        image::hold_qemu_locks(path).map(|l| Hold(Some(l)))
    }
}

/// An image's own header (no backing chain followed): what an adopt needs to know.
pub fn probe(path: &Path) -> Result<Probe, SkipReason> {
    let layer = image::image_layer(path)?;
    Ok(Probe {
        snapshots: layer.snapshot_names(),
        bitmaps: layer.bitmap_names(),
        format: layer.format,
        virtual_size: layer.virtual_size,
        backing: layer.backing_filename,
    })
}

/// A new, empty overlay made beside `place` under a temporary name (`qemu-img create` run in
/// that directory, so a relative backing reference resolves there), with `like`'s owner,
/// group and mode, and fsynced; `put` then gives it its name. The temporary file never
/// outlives a failure.
struct NewOverlay<'a> {
    place: &'a Path,
    backing_ref: &'a str,
    base_format: &'a str,
    virtual_size: u64,
    cluster_size: Option<u64>,
    like: &'a std::fs::Metadata,
}

impl NewOverlay<'_> {
    fn make(&self, put: impl FnOnce(&Path, &Path) -> std::io::Result<()>) -> Result<(), String> {
        let place = self.place;
        let dir = place.parent().ok_or("the overlay has no directory")?;
        let name = place
            .file_name()
            .ok_or("the overlay has no file name")?
            .to_string_lossy();
        let tmp = dir.join(format!(".{name}.vmoverlay-new"));
        let _ = std::fs::remove_file(&tmp); // a leftover of an interrupted run
        let mut cmd = image::qemu_img();
        cmd.args(["create", "-q", "-f", "qcow2", "-F", self.base_format])
            .args(["-b", self.backing_ref]);
        if let Some(cs) = self.cluster_size {
            cmd.arg("-o").arg(format!("cluster_size={cs}"));
        }
        let out = cmd
            .arg(&tmp)
            .arg(self.virtual_size.to_string())
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
        image::test_pause_before_replace(place);
        let meta = self.like;
        let finish = || -> std::io::Result<()> {
            std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid()))?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            std::fs::File::open(&tmp)?.sync_all()?;
            put(&tmp, place)?;
            sync_dir(dir)
        };
        finish().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("creating {}: {e}", place.display())
        })
    }
}

/// Creates an empty overlay of `base` at `overlay`, never replacing an existing file: made
/// under a temporary name, then linked to its name (which fails if that exists).
pub fn create_overlay(
    base: &Path,
    base_format: &str,
    virtual_size: u64,
    overlay: &Path,
) -> Result<(), String> {
    let meta = std::fs::metadata(base).map_err(|e| format!("{}: {e}", base.display()))?;
    // Beside its base, the overlay names it relatively: the pair can be moved together.
    let backing = if base.parent() == overlay.parent() {
        base.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        base.display().to_string()
    };
    NewOverlay {
        place: overlay,
        backing_ref: &backing,
        base_format,
        virtual_size,
        cluster_size: None,
        like: &meta,
    }
    .make(|tmp, place| {
        std::fs::hard_link(tmp, place)?;
        std::fs::remove_file(tmp)
    })
}

/// What the images hold besides the guest's data, read with `qemu-img info` (no locks
/// taken): internal snapshots and bitmaps in the overlay die with it; bitmaps in the base would
/// not follow a commit's writes. Shared by both engines where the files are readable here.
pub fn ensure_nothing_inside(disk: &ManagedDisk, commit: bool) -> Result<(), OpError> {
    let chain = image::backing_chain(&disk.overlay).map_err(|e| OpError::NotFound {
        what: e.to_string(),
    })?;
    if let Some(top) = chain.first() {
        let names = top.snapshot_names();
        if !names.is_empty() {
            return Err(OpError::InternalSnapshots {
                path: disk.overlay.clone(),
                names,
            });
        }
        let names = top.bitmap_names();
        if !names.is_empty() {
            return Err(OpError::Bitmaps {
                path: disk.overlay.clone(),
                names,
            });
        }
    }
    if let (true, Some(base)) = (commit, chain.get(1)) {
        let names = base.bitmap_names();
        if !names.is_empty() {
            return Err(OpError::Bitmaps {
                path: disk.base.clone(),
                names,
            });
        }
    }
    Ok(())
}

/// Whether this process can do the work on `disk` itself: it can write the overlay, its
/// directory and the base. Only meaningful for a connection to this machine.
pub fn locally_writable(disk: &ManagedDisk) -> bool {
    let dir = disk.overlay.parent().unwrap_or(Path::new("/"));
    [disk.overlay.as_path(), dir, disk.base.as_path()]
        .iter()
        .all(|p| image::is_writable(p).is_ok())
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

pub fn commit_image(
    overlay: &Path,
    base: &Path,
    writes: CommitWrites,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), String> {
    // -d: leave the overlay as it is (it is replaced next), which also keeps it a complete
    // copy of the guest's changes until the rebuild.
    let mut cmd = image::qemu_img();
    cmd.args(["commit", "-p", "-d", "-f", "qcow2"]);
    if writes == CommitWrites::Protected {
        cmd.args(["-t", "unsafe"]);
    }
    let mut child = cmd
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
        // With `-t unsafe` nothing was flushed: the base reaches the disk here, before the
        // overlay may be replaced.
        if writes == CommitWrites::Protected {
            std::fs::File::open(base)
                .and_then(|f| f.sync_all())
                .map_err(|e| format!("flushing {}: {e}", base.display()))?;
        }
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
pub fn check_image(base: &Path, format: &str) -> Result<(), String> {
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
/// relative), backing format, virtual size, cluster size, owner, group and mode. QEMU's locks
/// on the old overlay are held until it is replaced: a guest started meanwhile fails to start
/// instead of writing to a file that is about to be unlinked.
pub fn rebuild(disk: &ManagedDisk) -> Result<(), String> {
    let held = image::hold_qemu_locks(&disk.overlay).map_err(|e| e.to_string())?;
    rebuild_holding(disk, &held)
}

/// [`rebuild`], while the caller holds QEMU's locks on the overlay (`_held`).
pub fn rebuild_holding(disk: &ManagedDisk, _held: &image::QemuLocks) -> Result<(), String> {
    let overlay = &disk.overlay;
    let meta = std::fs::metadata(overlay).map_err(|e| format!("{}: {e}", overlay.display()))?;
    NewOverlay {
        place: overlay,
        backing_ref: &disk.backing_ref,
        base_format: &disk.base_format,
        virtual_size: disk.virtual_size,
        cluster_size: disk.cluster_size,
        like: &meta,
    }
    .make(|tmp, place| std::fs::rename(tmp, place))
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
