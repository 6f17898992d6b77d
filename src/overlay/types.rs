//! The words every layer of the overlay operations shares: a managed disk, an operation and
//! its phases, progress, and which engine works on a disk. This module depends on nothing
//! else in `overlay`; everything else depends on it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Who works on a disk's images: the *engine*. The same word in code, in `--engine` and in
/// `status` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    /// `qemu-img` run by this process on files it can write.
    #[default]
    QemuImg,
    /// libvirtd does the work: storage-volume API and a block commit in a paused start.
    Libvirt,
}

impl Engine {
    pub fn word(&self) -> &'static str {
        match self {
            Self::QemuImg => "qemu-img",
            Self::Libvirt => "libvirt",
        }
    }
}

/// How the engine of each disk is chosen (`--engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// `qemu-img` when this process can write the images locally, libvirt otherwise.
    #[default]
    Auto,
    Only(Engine),
}

/// A disk whose overlay VM Overlay manages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedDisk {
    pub target: String,
    pub overlay: PathBuf,
    pub base: PathBuf,
    /// The overlay's backing reference exactly as stored (kept relative when it is).
    pub backing_ref: String,
    pub base_format: String,
    pub virtual_size: u64,
    pub cluster_size: Option<u64>,
    /// Who works on this disk (records written before there was a choice say nothing).
    #[serde(default)]
    pub engine: Engine,
}

/// An overlay/base pair fixed by the user (old command line, or the per-VM setting) instead
/// of discovered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub overlay: PathBuf,
    pub base: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Commit,
    Discard,
}

impl OpKind {
    /// The operation's name in machine-readable output and journal records (not translated).
    pub fn word(&self) -> &'static str {
        match self {
            Self::Commit => "commit",
            Self::Discard => "discard",
        }
    }
}

/// How a commit may write the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitWrites {
    /// In the order QEMU flushes them (its default): a crash of the machine at any instant
    /// leaves a consistent base.
    Ordered,
    /// A revision (an internal snapshot of the base) was taken right before: QEMU's ordering
    /// flushes are skipped (`-t unsafe`, about half of what copy-on-write costs) and the base
    /// is flushed once at the end, before the overlay is replaced. A crash of the machine
    /// mid-commit (a new boot ID in the journal) is undone by rolling the base back to that
    /// revision before the commit is made again; a killed process loses nothing, as every
    /// write it made is in the page cache.
    Protected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// `qemu-img commit` may have copied part of the overlay into the base. Running it again
    /// is safe: the overlay still holds every cluster.
    Committing,
    /// The base is complete (or untouched, for discard); the overlay is being replaced.
    Rebuilding,
}

/// What a running operation reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Fraction 0.0..=1.0 of the copy into the base.
    Committing(f64),
    CheckingBase,
    Rebuilding,
}

/// Size and modification time of the overlay when the rebuild phase began: a rebuild is only
/// resumed on the same, untouched overlay, never on one a guest wrote to since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub len: u64,
    pub mtime_ns: i128,
}

impl Stamp {
    pub fn of(path: &Path) -> std::io::Result<Stamp> {
        let m = fs::metadata(path)?;
        let mtime = m.modified()?;
        let ns = match mtime.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        };
        Ok(Stamp {
            len: m.len(),
            mtime_ns: ns,
        })
    }
}

/// One operation on one disk of one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub op: OpKind,
    pub uri: String,
    pub domain: String,
    pub disk: ManagedDisk,
    /// A discard's last disk also puts back the firmware variables that go with the base.
    pub firmware: Option<FirmwareRestore>,
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

/// What an image that may become a base holds (adopt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub format: String,
    pub virtual_size: u64,
    pub backing: Option<String>,
    pub snapshots: Vec<String>,
    pub bitmaps: Vec<String>,
}

/// Put the firmware variables recorded at `from` back into the domain's `nvram` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareRestore {
    pub from: PathBuf,
    pub nvram: PathBuf,
}
