//! What the operations ask of the domain a disk belongs to ([`DomainCheck`], answered over
//! libvirt by `crate::libvirt::domains`), so the overlay layer never touches libvirt itself.

use std::path::{Path, PathBuf};

use super::engine::ImageEngine;
use super::error::OpError;
use super::qemu_img::QemuImgEngine;
use super::types::{Engine, ManagedDisk};

/// What the operations need to know about the domain; implemented over libvirt by
/// `crate::libvirt::domains::LibvirtCheck`.
pub trait DomainCheck: Send {
    /// `Err(DomainActive)` if the domain runs (or is paused, …) right now.
    fn ensure_inactive(&self) -> Result<(), OpError>;
    /// Disks of any domain, other than `overlay`, whose backing chain contains `base`.
    fn other_users(&self, base: &Path, overlay: &Path) -> Result<Vec<String>, OpError>;
    /// Refuses when libvirt keeps state that needs the images exactly as they are: a
    /// managed-save image, snapshots, checkpoints.
    fn ensure_no_saved_state(&self) -> Result<(), OpError> {
        Ok(())
    }
    /// The domain's persistent definition (the inactive XML).
    fn inactive_xml(&self) -> Result<String, OpError> {
        Err(OpError::NotFound {
            what: "no domain definition".into(),
        })
    }
    /// Points disk `target` of the persistent definition at `source` of `driver_type`,
    /// changing nothing else in it.
    fn redefine_disk(
        &self,
        target: &str,
        _source: &Path,
        _driver_type: &str,
    ) -> Result<(), OpError> {
        Err(OpError::NotFound {
            what: format!("cannot redefine disk {target}: no domain"),
        })
    }
    /// The domain's UEFI variables file (`<nvram>`), if it has one.
    fn nvram(&self) -> Option<PathBuf> {
        None
    }
    /// The domain's UUID, so a journal record still finds it after a rename.
    fn uuid(&self) -> Option<String> {
        None
    }
    /// The engine that works on disks of kind `kind`. Only `qemu-img` needs no connection.
    fn images(&self, kind: Engine) -> Result<&dyn ImageEngine, OpError> {
        match kind {
            Engine::QemuImg => Ok(&QemuImgEngine),
            Engine::Libvirt => Err(OpError::NotFound {
                what: "the libvirt engine needs a connection to the domain's libvirtd".into(),
            }),
        }
    }
}

/// `Err(SharedBase)` naming every other user of `disk`'s base that the domain check and the
/// engine know of: what must hold before anything writes into the base (a commit, a
/// rollback), or lets the VM write into it directly (a release).
pub fn ensure_base_alone(disk: &ManagedDisk, check: &dyn DomainCheck) -> Result<(), OpError> {
    let images = check.images(disk.engine)?;
    let mut users = check.other_users(&disk.base, &disk.overlay)?;
    users.extend(images.other_overlays(disk));
    users.sort();
    users.dedup();
    if users.is_empty() {
        Ok(())
    } else {
        Err(OpError::SharedBase {
            base: disk.base.clone(),
            users,
        })
    }
}
