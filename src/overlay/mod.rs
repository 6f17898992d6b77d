//! The overlay operations: find a domain's managed disks, then commit, discard and rebuild
//! their overlays, safely. No GTK and no libvirt here: the caller supplies a [`DomainCheck`]
//! (implemented over libvirt in `crate::libvirt`). Layered bottom-up, without circles:
//!
//! - [`types`]: the shared words (disk, operation, phase, progress, engine);
//! - [`error`]: what is refused or failed, typed;
//! - [`qcow2`]: a read-only qcow2 reader (header, extensions, L1/L2, snapshots, bitmaps);
//! - [`image`]: reading images (backing chains and changed bytes through [`qcow2`], QEMU's
//!   locks, free space);
//! - [`discover`]: which disks of a domain definition are managed overlays;
//! - [`engine`]: the [`ImageEngine`] trait (who works on the images);
//! - [`qemu_img`]: the `qemu-img` engine (the libvirt one is `crate::libvirt::engine`);
//! - [`domain`]: the [`DomainCheck`] trait (what is asked of the domain);
//! - [`journal`]: the crash-safe record of operations in flight;
//! - [`history`]: revisions taken before each commit and discard, rollback, retention;
//! - [`firmware`]: UEFI variables that follow the disks;
//! - [`ops`]: the orchestration: preconditions, journal, writes, resume;
//! - [`disposable`]: adopt (make a disk an overlay over its image) and release (the reverse).

pub mod delta;
pub mod discover;
pub mod disposable;
pub mod domain;
pub mod engine;
pub mod error;
pub mod firmware;
pub mod history;
pub mod image;
pub mod journal;
pub mod ops;
pub mod qcow2;
pub mod qemu_img;
pub mod types;

pub use discover::{discover, discover_with};
pub use discover::{DomainDisks, SkippedDisk};
pub use domain::DomainCheck;
pub use engine::ImageEngine;
pub use error::{OpError, SkipReason};
pub use firmware::{FirmwareRestore, FirmwareStore};
pub use journal::{Journal, Record};
pub use ops::{recover, spawn, JobEvent};
pub use qemu_img::QemuImgEngine;
pub use types::{
    CommitWrites, Engine, EngineChoice, ManagedDisk, OpKind, Outcome, Phase, Pin, Progress,
    Request, Stamp,
};
