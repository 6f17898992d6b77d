//! Who touches the images: `qemu-img` in this process ([`QemuImg`]), or libvirtd on the
//! domain's host (`crate::libvirt::engine`). Both sit behind [`Images`], so commit, discard and
//! rebuild run the same preconditions, journal and progress reporting whichever does the work.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::chain::{inspect_overlay, ManagedDisk};
use super::error::EngineError;
use super::image;
use super::journal::{Phase, Stamp};
use super::ops::{self, Progress};

/// The engine that works on one disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    /// `qemu-img` run by this process on files it can write.
    #[default]
    QemuImg,
    /// libvirtd does the work: storage-volume API and a block commit in a paused start.
    Libvirt,
}

impl EngineKind {
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
    Only(EngineKind),
}

/// The image operations an engine provides. Every path is as the domain's host sees it.
pub trait Images: Send + Sync {
    fn kind(&self) -> EngineKind;
    /// Reads `overlay` (the source of disk `target`) as a qcow2 overlay over its base.
    fn inspect(&self, target: &str, overlay: &Path) -> Result<ManagedDisk, String>;
    /// Guest data the overlay holds, in bytes.
    fn changed_bytes(&self, disk: &ManagedDisk) -> Result<u64, String>;
    /// `Err(Locked)` if a process other than a domain holds the overlay (and the base, with
    /// `base_too`) open.
    fn ensure_unlocked(&self, disk: &ManagedDisk, base_too: bool) -> Result<(), EngineError>;
    /// `Err(NotWritable)` if the overlay's directory (and the base, with `base_too`) cannot be
    /// written by whoever does the work.
    fn ensure_writable(&self, disk: &ManagedDisk, base_too: bool) -> Result<(), EngineError>;
    /// Other overlays next to the overlay or the base that are backed by the same base.
    fn other_overlays(&self, disk: &ManagedDisk) -> Vec<String>;
    /// Free bytes where the base lives.
    fn free_space(&self, disk: &ManagedDisk) -> Result<u64, String>;
    /// Copies the overlay's data into the base; the overlay is left as it is.
    fn commit(&self, disk: &ManagedDisk, progress: &mut dyn FnMut(Progress)) -> Result<(), String>;
    /// Consistency check of the base after a commit.
    fn check_base(&self, disk: &ManagedDisk) -> Result<(), String>;
    /// Size and modification time of the overlay, to notice writes by someone else.
    fn stamp(&self, disk: &ManagedDisk) -> Option<Stamp>;
    /// Replaces the overlay by an empty one over the same base.
    fn rebuild(&self, disk: &ManagedDisk) -> Result<(), String>;
    /// The last check right before the first write of `phase`: no other process holds the
    /// images it writes. An engine may already take hold of them here.
    fn prepare_write(&self, disk: &ManagedDisk, phase: Phase) -> Result<(), EngineError> {
        self.ensure_unlocked(disk, phase == Phase::Committing)
    }
    /// Undoes what an interrupted run of this engine left running (before a resume).
    fn clean_up_interrupted(&self) -> Result<(), EngineError> {
        Ok(())
    }
}

/// The local engine: `qemu-img` subprocesses on files this process can write.
pub struct QemuImg;

impl Images for QemuImg {
    fn kind(&self) -> EngineKind {
        EngineKind::QemuImg
    }

    fn inspect(&self, target: &str, overlay: &Path) -> Result<ManagedDisk, String> {
        inspect_overlay(target, overlay)
    }

    fn changed_bytes(&self, disk: &ManagedDisk) -> Result<u64, String> {
        image::changed_bytes(&disk.overlay)
    }

    fn ensure_unlocked(&self, disk: &ManagedDisk, base_too: bool) -> Result<(), EngineError> {
        if base_too {
            image::ensure_unlocked(&[&disk.overlay, &disk.base])
        } else {
            image::ensure_unlocked(&[&disk.overlay])
        }
    }

    fn ensure_writable(&self, disk: &ManagedDisk, base_too: bool) -> Result<(), EngineError> {
        let dir = disk.overlay.parent().unwrap_or(Path::new("/"));
        image::is_writable(dir).map_err(|reason| EngineError::NotWritable {
            what: format!("the overlay's directory {}", dir.display()),
            reason,
        })?;
        if base_too {
            image::is_writable(&disk.base).map_err(|reason| EngineError::NotWritable {
                what: format!("the base {}", disk.base.display()),
                reason,
            })?;
        }
        Ok(())
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

    fn commit(&self, disk: &ManagedDisk, progress: &mut dyn FnMut(Progress)) -> Result<(), String> {
        ops::commit_image(&disk.overlay, progress)
    }

    fn check_base(&self, disk: &ManagedDisk) -> Result<(), String> {
        ops::check_image(&disk.base, &disk.base_format)
    }

    fn stamp(&self, disk: &ManagedDisk) -> Option<Stamp> {
        Stamp::of(&disk.overlay).ok()
    }

    fn rebuild(&self, disk: &ManagedDisk) -> Result<(), String> {
        ops::rebuild(disk)
    }
}

/// Whether this process can do the work on `disk` itself: it can write the overlay, its
/// directory and the base. Only meaningful for a connection to this machine.
pub fn locally_writable(disk: &ManagedDisk) -> bool {
    let dir = disk.overlay.parent().unwrap_or(Path::new("/"));
    [disk.overlay.as_path(), dir, disk.base.as_path()]
        .iter()
        .all(|p| image::is_writable(p).is_ok())
}
