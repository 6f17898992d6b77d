//! UEFI firmware variables (a domain's `<nvram>` file) follow its disks: the variables that go
//! with the base are kept in the state directory, recorded whenever the disks and the base
//! agree (after a commit, or when the overlays are found empty), and put back by a discard, so
//! the firmware never keeps boot entries or Secure Boot state of a session whose disk writes
//! were thrown away. A commit keeps the current variables (and records them).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::journal::sync_dir;
pub use super::types::FirmwareRestore;

/// The recorded variables of each domain, by UUID.
#[derive(Debug, Clone)]
pub struct FirmwareStore {
    dir: PathBuf,
}

impl FirmwareStore {
    /// Beside the journal: `<state dir>/firmware`.
    pub fn beside(journal_dir: &Path) -> FirmwareStore {
        FirmwareStore {
            dir: journal_dir
                .parent()
                .unwrap_or(Path::new("/"))
                .join("firmware"),
        }
    }

    pub fn path_for(&self, uuid: &str) -> PathBuf {
        self.dir.join(format!("{uuid}.fd"))
    }

    pub fn known(&self, uuid: &str) -> bool {
        self.path_for(uuid).is_file()
    }

    /// Records the current contents of `nvram` as the variables that go with the base.
    pub fn record(&self, uuid: &str, nvram: &Path) -> std::io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        write_private(&self.path_for(uuid), &fs::read(nvram)?)?;
        sync_dir(&self.dir)
    }
}

/// Writes a copy of firmware variables to `path` atomically (a temporary file, synced, then
/// renamed; the caller syncs the directory). Owner only: variables can hold secrets (Secure
/// Boot keys).
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("fd.tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// Replaces `r.nvram` by the recorded variables, atomically, keeping its owner, group and
/// mode. Running it twice is harmless (how an interrupted discard is finished).
pub fn restore(r: &FirmwareRestore) -> std::io::Result<()> {
    let data = fs::read(&r.from)?;
    let meta = fs::metadata(&r.nvram)?;
    let dir = r.nvram.parent().unwrap_or(Path::new("/"));
    let name = r.nvram.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.vmoverlay-new"));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        fs::rename(&tmp, &r.nvram)?;
        sync_dir(dir)
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_then_restore_round_trips_and_keeps_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let store = FirmwareStore::beside(&dir.path().join("state/journal"));
        let nvram = dir.path().join("vm_VARS.fd");
        fs::write(&nvram, b"base variables").unwrap();
        fs::set_permissions(&nvram, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(!store.known("u1"));
        store.record("u1", &nvram).unwrap();
        assert!(store.known("u1"));
        fs::write(&nvram, b"a session's boot entries").unwrap();
        let r = FirmwareRestore {
            from: store.path_for("u1"),
            nvram: nvram.clone(),
        };
        restore(&r).unwrap();
        restore(&r).unwrap();
        assert_eq!(fs::read(&nvram).unwrap(), b"base variables");
        assert_eq!(fs::metadata(&nvram).unwrap().mode() & 0o777, 0o600);
    }
}
