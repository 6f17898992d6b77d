//! What the operations ask of the *engine* that works on a disk's images ([`ImageEngine`]:
//! `qemu-img` here, or libvirtd). A trait, so the operations run the same preconditions,
//! journal and progress whoever does the work. (What they ask of the domain is
//! [`super::domain::DomainCheck`].)

use std::path::Path;

use super::error::{OpError, SkipReason};
use super::image::QemuLocks;
use super::types::{CommitWrites, Engine, ManagedDisk, Phase, Probe, Progress, Stamp};

/// The image operations an engine provides. Every path is as the domain's host sees it.
pub trait ImageEngine: Send + Sync {
    fn kind(&self) -> Engine;
    /// Reads `overlay` (the source of disk `target`) as a qcow2 overlay over its base.
    fn inspect(&self, target: &str, overlay: &Path) -> Result<ManagedDisk, SkipReason>;
    /// Guest data the overlay holds, in bytes.
    fn changed_bytes(&self, disk: &ManagedDisk) -> Result<u64, SkipReason>;
    /// `Err(Locked)` if a process other than a domain holds the overlay (and the base, with
    /// `base_too`) open.
    fn ensure_unlocked(&self, disk: &ManagedDisk, base_too: bool) -> Result<(), OpError>;
    /// `Err(NotWritable)` if the overlay's directory (and the base, with `base_too`) cannot be
    /// written by whoever does the work.
    fn ensure_writable(&self, disk: &ManagedDisk, base_too: bool) -> Result<(), OpError>;
    /// Refuses when the images hold something a rebuild (or, with `commit`, a write into the
    /// base) would lose: internal snapshots or persistent dirty bitmaps in the overlay, bitmaps
    /// in the base.
    fn ensure_nothing_inside(&self, disk: &ManagedDisk, commit: bool) -> Result<(), OpError>;
    /// Other overlays next to the overlay or the base that are backed by the same base.
    fn other_overlays(&self, disk: &ManagedDisk) -> Vec<String>;
    /// Free bytes where the base lives.
    fn free_space(&self, disk: &ManagedDisk) -> Result<u64, String>;
    /// Copies the overlay's data into the base; the overlay is left as it is. The base is
    /// flushed to disk when it returns `Ok`.
    fn commit(
        &self,
        disk: &ManagedDisk,
        writes: CommitWrites,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), String>;
    /// Consistency check of the base after a commit.
    fn check_base(&self, disk: &ManagedDisk) -> Result<(), String>;
    /// Size and modification time of the overlay, to notice writes by someone else.
    fn stamp(&self, disk: &ManagedDisk) -> Option<Stamp>;
    /// Replaces the overlay by an empty one over the same base.
    fn rebuild(&self, disk: &ManagedDisk) -> Result<(), String>;
    /// Reads an image that is to become a base (adopt).
    fn probe(&self, path: &Path) -> Result<Probe, SkipReason>;
    /// Whether an image exists at `path`.
    fn exists(&self, path: &Path) -> bool;
    /// `Err(NotWritable)` unless a new image can be made beside `image`.
    fn ensure_can_create(&self, image: &Path) -> Result<(), OpError>;
    /// Creates an empty qcow2 overlay at `overlay` over `base` (never replacing a file), with
    /// the base's owner, group and mode.
    fn create_overlay(
        &self,
        base: &Path,
        base_format: &str,
        virtual_size: u64,
        overlay: &Path,
    ) -> Result<(), String>;
    /// Removes an image file.
    fn remove_image(&self, path: &Path) -> Result<(), String>;
    /// Keeps QEMU from opening `path` until the guard is dropped, or refuses if someone has it
    /// open now.
    fn hold(&self, path: &Path) -> Result<Hold, OpError>;
    /// Lets go of what [`Self::commit`] kept holding for the rebuild, when the operation ends
    /// before it (the rebuild takes it itself).
    fn release_held(&self, _disk: &ManagedDisk) {}
    /// The last check right before the first write of `phase`: no other process holds the
    /// images it writes. An engine may already take hold of them here.
    fn prepare_write(&self, disk: &ManagedDisk, phase: Phase) -> Result<(), OpError> {
        self.ensure_unlocked(disk, phase == Phase::Committing)
    }
    /// Undoes what an interrupted run of this engine left running (before a resume).
    fn clean_up_interrupted(&self) -> Result<(), OpError> {
        Ok(())
    }
}

/// What [`ImageEngine::hold`] holds: QEMU's own locks on an image, where they can be taken.
#[derive(Debug)]
pub struct Hold(pub Option<QemuLocks>);
