//! A crash-safe record of operations in flight, one file per overlay under the XDG state
//! directory. Creating the record is also the lock that keeps two operations off one overlay.
//! Records are written atomically (temp file, fsync, rename, fsync of the directory).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::types::{ManagedDisk, OpKind, Phase, Stamp};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub op: OpKind,
    pub uri: String,
    pub domain: String,
    /// The domain's UUID: a record follows its domain through a rename.
    #[serde(default)]
    pub uuid: Option<String>,
    pub disk: ManagedDisk,
    pub phase: Phase,
    pub overlay_stamp: Option<Stamp>,
    pub started: String,
    /// Firmware variables to put back once the overlay is rebuilt (a discard).
    #[serde(default)]
    pub firmware: Option<super::types::FirmwareRestore>,
    /// The machine's boot ID when the operation began: a different one at resume means the
    /// machine went down meanwhile, and writes not yet flushed may be lost.
    #[serde(default)]
    pub boot: Option<String>,
}

/// This boot's ID (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// `$VMOVERLAY_STATE_DIR`, else `$XDG_STATE_HOME/vmoverlay`, else
    /// `~/.local/state/vmoverlay`; records live in its `journal/` folder.
    pub fn default_location() -> Journal {
        let base = std::env::var_os("VMOVERLAY_STATE_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_STATE_HOME")
                    .filter(|v| !v.is_empty())
                    .map(|v| PathBuf::from(v).join("vmoverlay"))
            })
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/vmoverlay"))
            })
            .unwrap_or_else(|| PathBuf::from("/var/tmp/vmoverlay"));
        Journal::at(base.join("journal"))
    }

    pub fn at(dir: impl Into<PathBuf>) -> Journal {
        Journal { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The head of every writer's preconditions: `disk`'s overlay still has the base it was
    /// found with (read by `images`; `unreadable` words the refusal when it cannot be read),
    /// no operation on it is recorded here, and the journal has room for one.
    pub fn ensure_disk_free(
        &self,
        images: &dyn super::engine::ImageEngine,
        disk: &ManagedDisk,
        unreadable: impl FnOnce(super::error::SkipReason) -> super::error::OpError,
    ) -> Result<(), super::error::OpError> {
        use super::error::OpError;
        let now = images
            .inspect(&disk.target, &disk.overlay)
            .map_err(unreadable)?;
        if now.base != disk.base {
            return Err(OpError::BaseChanged {
                overlay: disk.overlay.clone(),
                now: now.base,
                was: disk.base.clone(),
            });
        }
        if self.has_record(&disk.overlay) {
            return Err(OpError::Busy {
                overlay: disk.overlay.clone(),
                journal: self.path_for(&disk.overlay),
            });
        }
        self.ensure_room()
    }

    /// Room for a record and its updates: refused before anything is written, so a full
    /// filesystem never leaves an operation half-journaled.
    pub fn ensure_room(&self) -> Result<(), super::error::OpError> {
        const NEEDED: u64 = 256 * 1024;
        let not_writable = |reason: String| super::error::OpError::NotWritable {
            what: format!("the journal {}", self.dir.display()),
            reason,
        };
        fs::create_dir_all(&self.dir).map_err(|e| not_writable(e.to_string()))?;
        let free = super::image::free_space(&self.dir).map_err(not_writable)?;
        if free < NEEDED {
            return Err(not_writable(format!(
                "its filesystem has {free} bytes free, {NEEDED} are needed"
            )));
        }
        Ok(())
    }

    /// The record file of an overlay: named by a hash of its absolute path.
    pub fn path_for(&self, overlay: &Path) -> PathBuf {
        let h = overlay
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .fold(0xcbf29ce484222325u64, |h, b| {
                (h ^ *b as u64).wrapping_mul(0x100000001b3)
            });
        self.dir.join(format!("{h:016x}.json"))
    }

    /// Creates the record; fails with `AlreadyExists` if one exists for this overlay. A
    /// record that cannot be written whole (a full disk) is removed again, so a failed begin
    /// never leaves an empty record that would block the overlay.
    pub fn begin(&self, rec: &Record) -> std::io::Result<PathBuf> {
        self.begin_entry(&rec.disk.overlay, rec)
    }

    /// As [`Journal::begin`], for any record kept under `overlay`'s name.
    pub fn begin_entry(&self, overlay: &Path, rec: &impl Serialize) -> std::io::Result<PathBuf> {
        fs::create_dir_all(&self.dir)?;
        let path = self.path_for(overlay);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let written = serde_json::to_vec_pretty(rec)
            .map_err(std::io::Error::from)
            .and_then(|data| f.write_all(&data))
            .and_then(|_| f.sync_all())
            .and_then(|_| sync_dir(&self.dir));
        if let Err(e) = written {
            drop(f);
            let _ = fs::remove_file(&path);
            let _ = sync_dir(&self.dir);
            return Err(e);
        }
        Ok(path)
    }

    /// Replaces the record atomically.
    pub fn update(&self, rec: &Record) -> std::io::Result<()> {
        self.update_entry(&rec.disk.overlay, rec)
    }

    /// As [`Journal::update`], for any record kept under `overlay`'s name.
    pub fn update_entry(&self, overlay: &Path, rec: &impl Serialize) -> std::io::Result<()> {
        let path = self.path_for(overlay);
        let tmp = path.with_extension("json.tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(rec)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)
    }

    pub fn finish(&self, overlay: &Path) -> std::io::Result<()> {
        match fs::remove_file(self.path_for(overlay)) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn last_path(&self, overlay: &Path) -> PathBuf {
        let name = self.path_for(overlay);
        self.dir
            .with_file_name("last")
            .join(name.file_name().unwrap_or_default())
    }

    /// Remembers the result of the last operation on `overlay` (best effort: shown by
    /// `status`, never needed for safety).
    pub fn set_last(&self, overlay: &Path, summary: &str) {
        let path = self.last_path(overlay);
        let line = serde_json::json!({
            "time": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            "summary": summary,
        });
        let _ = fs::create_dir_all(path.parent().unwrap_or(Path::new("/")))
            .and_then(|_| fs::write(&path, line.to_string()));
    }

    pub fn last(&self, overlay: &Path) -> Option<serde_json::Value> {
        serde_json::from_slice(&fs::read(self.last_path(overlay)).ok()?).ok()
    }

    /// Whether a record exists for `overlay`. An empty record file (left by an earlier version
    /// whose first write failed, before any image was touched) is removed, not obeyed.
    pub fn has_record(&self, overlay: &Path) -> bool {
        let path = self.path_for(overlay);
        match fs::metadata(&path) {
            Ok(m) if m.len() == 0 => {
                log::warn!("removing the empty journal record {}", path.display());
                let _ = fs::remove_file(&path);
                false
            }
            Ok(_) => true,
            Err(_) => false,
        }
    }

    pub fn get(&self, overlay: &Path) -> Option<Record> {
        let data = fs::read(self.path_for(overlay)).ok()?;
        serde_json::from_slice(&data).ok()
    }

    /// Every commit or discard record, oldest first. Unreadable files are reported, not
    /// deleted; records of other kinds (adopt, release, rollback) are left to [`Journal::pending_of`].
    pub fn pending(&self) -> Vec<Result<Record, (PathBuf, String)>> {
        self.pending_of::<Record>()
            .into_iter()
            .filter(|r| match r {
                Err((p, _)) => fs::read(p)
                    .ok()
                    .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok())
                    .is_none_or(|v| v.get("change").is_none() && v.get("history").is_none()),
                Ok(_) => true,
            })
            .collect()
    }

    /// Every record that parses as `T`, oldest first (others are reported as errors).
    pub fn pending_of<T: serde::de::DeserializeOwned>(&self) -> Vec<Result<T, (PathBuf, String)>> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                // An update killed before its rename: the record itself is still whole.
                if p.to_string_lossy().ends_with(".json.tmp") {
                    let _ = fs::remove_file(p);
                }
                p.extension().is_some_and(|e| e == "json")
            })
            .filter(|p| match fs::metadata(p) {
                // Never written: its operation wrote nothing either.
                Ok(m) if m.len() == 0 => {
                    log::warn!("removing the empty journal record {}", p.display());
                    let _ = fs::remove_file(p);
                    false
                }
                _ => true,
            })
            .collect();
        paths.sort_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
        paths
            .into_iter()
            .map(|p| {
                fs::read(&p)
                    .map_err(|e| e.to_string())
                    .and_then(|d| serde_json::from_slice(&d).map_err(|e| e.to_string()))
                    .map_err(|e| (p, e))
            })
            .collect()
    }
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(overlay: &str) -> Record {
        Record {
            op: OpKind::Commit,
            uri: "qemu:///system".into(),
            domain: "vm".into(),
            uuid: None,
            disk: ManagedDisk {
                target: "vda".into(),
                overlay: overlay.into(),
                base: "/b.qcow2".into(),
                backing_ref: "b.qcow2".into(),
                base_format: "qcow2".into(),
                virtual_size: 1 << 20,
                cluster_size: Some(65536),
                engine: Default::default(),
            },
            phase: Phase::Committing,
            overlay_stamp: None,
            boot: None,
            started: "2026-11-22T00:00:00Z".into(),
            firmware: None,
        }
    }

    #[test]
    fn begin_is_exclusive_update_and_finish_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::at(dir.path().join("journal"));
        let r = rec("/x/overlay.qcow2");
        j.begin(&r).unwrap();
        let again = j.begin(&r).unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
        let mut r2 = r.clone();
        r2.phase = Phase::Rebuilding;
        j.update(&r2).unwrap();
        assert_eq!(
            j.get(Path::new("/x/overlay.qcow2")).unwrap().phase,
            Phase::Rebuilding
        );
        assert_eq!(j.pending().len(), 1);
        j.finish(Path::new("/x/overlay.qcow2")).unwrap();
        assert!(j.pending().is_empty());
        j.finish(Path::new("/x/overlay.qcow2")).unwrap();
    }

    #[test]
    fn an_empty_record_blocks_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::at(dir.path().join("journal"));
        let overlay = Path::new("/x/overlay.qcow2");
        fs::create_dir_all(j.dir()).unwrap();
        fs::write(j.path_for(overlay), b"").unwrap();
        assert!(j.pending().is_empty());
        fs::write(j.path_for(overlay), b"").unwrap();
        assert!(!j.has_record(overlay));
        j.begin(&rec("/x/overlay.qcow2")).unwrap();
        assert!(j.has_record(overlay));
    }
}
