//! Making a VM disposable, and back: `adopt` turns a disk's image into the base of a new,
//! empty qcow2 overlay and points the domain's disk at the overlay; `release` points it back at
//! the base (after its pending changes were committed or discarded) and removes the overlay.
//!
//! Order of an adopt: preconditions → journal (creating) → overlay created beside the base →
//! journal (defining) → the persistent definition's disk switched → journal removed. The domain
//! never points at a file that does not exist: the overlay exists before the definition names
//! it. An interrupted adopt is rolled back (the definition still names the image: the new,
//! untouched overlay is removed) or finished (the definition already names the overlay).
//!
//! Order of a release (its changes already committed or discarded): preconditions → journal
//! (defining) → the definition's disk switched back to the base → journal (removing) → overlay
//! removed → journal removed. QEMU's locks on the overlay are held from the last check until it
//! is gone (where it is readable here), so a guest started meanwhile cannot write into it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::discover::{parse_disks, DiskXml};
use super::domain::{ensure_base_alone, DomainCheck};
use super::engine::ImageEngine;
use super::error::OpError;
use super::journal::Journal;
pub use super::types::Probe;
use super::types::{Engine, ManagedDisk};

/// Adopt or release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Adopt,
    Release,
}

impl Change {
    pub fn word(&self) -> &'static str {
        match self {
            Self::Adopt => "adopt",
            Self::Release => "release",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangePhase {
    /// Adopt: the overlay is being created; the definition still names the image.
    Creating,
    /// The definition's disk is being switched.
    Defining,
    /// Release: the definition names the base; the overlay is being removed.
    Removing,
}

/// The journal record of an adopt or a release (kept under the overlay's name, like a
/// commit's, so no other operation runs on that overlay meanwhile).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub change: Change,
    pub phase: ChangePhase,
    pub uri: String,
    pub domain: String,
    #[serde(default)]
    pub uuid: Option<String>,
    pub target: String,
    /// The image that is (adopt) or was (release) the disk's base.
    pub base: PathBuf,
    pub base_format: String,
    pub overlay: PathBuf,
    pub engine: Engine,
    pub started: String,
}

/// A disk that can be adopted: the image becomes the base of `overlay`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptPlan {
    pub target: String,
    pub image: PathBuf,
    pub format: String,
    pub virtual_size: u64,
    pub overlay: PathBuf,
    pub engine: Engine,
}

/// Where the overlay of `image` goes: beside it, named after it (`debian.qcow2` →
/// `debian.overlay.qcow2`), as a user would look for it.
pub fn overlay_path_for(image: &Path) -> PathBuf {
    let stem = image
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    image.with_file_name(format!("{stem}.overlay.qcow2"))
}

fn not_adoptable(vm: &str, disk: &str, why: String) -> OpError {
    OpError::NotAdoptable {
        vm: vm.to_string(),
        disk: disk.to_string(),
        why,
    }
}

/// Why the definition's disk `d` cannot be adopted, if it cannot (before its image is read).
pub fn definition_refusal(vm: &str, d: &DiskXml) -> Option<OpError> {
    let why = |w: String| Some(not_adoptable(vm, &d.target, w));
    if d.device != "disk" {
        return why(crate::i18n::tr_f(
            "it is a {device} drive",
            &[("device", &d.device)],
        ));
    }
    if d.kind != "file" {
        return why(crate::i18n::tr_f(
            "it is a disk of type '{kind}', not an image file",
            &[("kind", &d.kind)],
        ));
    }
    if d.readonly || d.shareable {
        return why(crate::i18n::tr(
            "it is read-only or shared with other domains",
        ));
    }
    if d.source.is_none() {
        return why(crate::i18n::tr("it has no image"));
    }
    match d.driver_type.as_deref() {
        None | Some("qcow2") | Some("raw") => None,
        Some(other) => why(crate::i18n::tr_f(
            "it is a {format} image; qcow2 and raw images can be adopted",
            &[("format", other)],
        )),
    }
}

/// Plans the adoption of disk `d` of `vm` (every check that needs no write).
pub fn plan_adopt(
    vm: &str,
    d: &DiskXml,
    images: &dyn ImageEngine,
    journal: &Journal,
) -> Result<AdoptPlan, OpError> {
    if let Some(refusal) = definition_refusal(vm, d) {
        return Err(refusal);
    }
    let image = PathBuf::from(d.source.clone().unwrap_or_default());
    let probe = images.probe(&image).map_err(|e| OpError::NotFound {
        what: e.to_string(),
    })?;
    if probe.backing.is_some() {
        return Err(OpError::AlreadyDisposable {
            vm: vm.to_string(),
            disk: d.target.clone(),
        });
    }
    if probe.format != "qcow2" && probe.format != "raw" {
        return Err(not_adoptable(
            vm,
            &d.target,
            crate::i18n::tr_f(
                "it is a {format} image; qcow2 and raw images can be adopted",
                &[("format", &probe.format)],
            ),
        ));
    }
    if !probe.snapshots.is_empty() {
        return Err(OpError::InternalSnapshots {
            path: image,
            names: probe.snapshots,
        });
    }
    if !probe.bitmaps.is_empty() {
        return Err(OpError::Bitmaps {
            path: image,
            names: probe.bitmaps,
        });
    }
    let overlay = overlay_path_for(&image);
    if images.exists(&overlay) || journal.has_record(&overlay) {
        return Err(not_adoptable(
            vm,
            &d.target,
            crate::i18n::tr_f(
                "{overlay} already exists; move it away first",
                &[("overlay", &overlay.display().to_string())],
            ),
        ));
    }
    images.ensure_can_create(&image)?;
    journal.ensure_room()?;
    Ok(AdoptPlan {
        target: d.target.clone(),
        image,
        format: probe.format,
        virtual_size: probe.virtual_size,
        overlay,
        engine: images.kind(),
    })
}

/// The definition's disk `target` now: its source and driver type.
fn disk_now(check: &dyn DomainCheck, target: &str) -> Result<DiskXml, OpError> {
    let xml = check.inactive_xml()?;
    parse_disks(&xml)
        .map_err(|what| OpError::NotFound { what })?
        .into_iter()
        .find(|d| d.target == target)
        .ok_or_else(|| OpError::NotFound {
            what: format!("the definition has no disk {target}"),
        })
}

fn names(d: &DiskXml, path: &Path) -> bool {
    d.source.as_deref().map(Path::new) == Some(path)
}

fn journal_error(e: std::io::Error, journal: &Journal) -> OpError {
    OpError::NotWritable {
        what: format!("the journal {}", journal.dir().display()),
        reason: e.to_string(),
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Adopts one planned disk. Blocking.
pub fn adopt(
    uri: &str,
    vm: &str,
    plan: &AdoptPlan,
    check: &dyn DomainCheck,
    journal: &Journal,
) -> Result<(), OpError> {
    let images = check.images(plan.engine)?;
    check.ensure_inactive()?;
    check.ensure_no_saved_state()?;
    let mut rec = ChangeRecord {
        change: Change::Adopt,
        phase: ChangePhase::Creating,
        uri: uri.to_string(),
        domain: vm.to_string(),
        uuid: check.uuid(),
        target: plan.target.clone(),
        base: plan.image.clone(),
        base_format: plan.format.clone(),
        overlay: plan.overlay.clone(),
        engine: plan.engine,
        started: now(),
    };
    journal
        .begin_entry(&rec.overlay, &rec)
        .map_err(|e| journal_error(e, journal))?;
    // From here to the switch, a guest started on the image would write under the overlay
    // being made: QEMU's locks on the image keep it from starting.
    let held = images.hold(&plan.image)?;
    let result = (|| {
        images
            .create_overlay(&plan.image, &plan.format, plan.virtual_size, &plan.overlay)
            .map_err(|detail| OpError::NotWritable {
                what: plan.overlay.display().to_string(),
                reason: detail,
            })?;
        rec.phase = ChangePhase::Defining;
        journal
            .update_entry(&rec.overlay, &rec)
            .map_err(|e| journal_error(e, journal))?;
        check.ensure_inactive()?;
        check.redefine_disk(&plan.target, &plan.overlay, "qcow2")
    })();
    drop(held);
    match result {
        Ok(()) => {
            let _ = journal.finish(&rec.overlay);
            Ok(())
        }
        Err(e) => {
            // Not switched: remove the new overlay again, so nothing is left behind.
            roll_back_adopt(&rec, check, journal)?;
            Err(e)
        }
    }
}

/// Undoes an adopt whose definition does not name the overlay (yet): removes the overlay it
/// created, if the definition really does not use it and nothing was written to it.
fn roll_back_adopt(
    rec: &ChangeRecord,
    check: &dyn DomainCheck,
    journal: &Journal,
) -> Result<(), OpError> {
    let images = check.images(rec.engine)?;
    let d = disk_now(check, &rec.target)?;
    if names(&d, &rec.overlay) {
        // Switched after all: the adopt is complete.
        return journal
            .finish(&rec.overlay)
            .map_err(|e| journal_error(e, journal));
    }
    if images.exists(&rec.overlay) {
        let disk = managed(rec);
        if images.changed_bytes(&disk).is_ok_and(|n| n > 0) {
            let _ = journal.finish(&rec.overlay);
            return Err(OpError::NotFound {
                what: format!(
                    "{} was written to although {} does not use it; it was left in place",
                    rec.overlay.display(),
                    rec.domain
                ),
            });
        }
        images
            .remove_image(&rec.overlay)
            .map_err(|detail| OpError::NotWritable {
                what: rec.overlay.display().to_string(),
                reason: detail,
            })?;
    }
    journal
        .finish(&rec.overlay)
        .map_err(|e| journal_error(e, journal))
}

/// The managed disk a change record describes.
fn managed(rec: &ChangeRecord) -> ManagedDisk {
    ManagedDisk {
        target: rec.target.clone(),
        overlay: rec.overlay.clone(),
        base: rec.base.clone(),
        backing_ref: rec.base.display().to_string(),
        base_format: rec.base_format.clone(),
        virtual_size: 0,
        cluster_size: None,
        engine: rec.engine,
    }
}

/// Releases one managed disk whose overlay is empty (its changes were committed or discarded
/// just before). Blocking.
pub fn release(
    uri: &str,
    vm: &str,
    disk: &ManagedDisk,
    check: &dyn DomainCheck,
    journal: &Journal,
) -> Result<(), OpError> {
    let images = check.images(disk.engine)?;
    check.ensure_inactive()?;
    check.ensure_no_saved_state()?;
    // After a release the VM writes into its base directly: nobody else may use it.
    ensure_base_alone(disk, check)?;
    let changed = images.changed_bytes(disk).map_err(|e| OpError::NotFound {
        what: e.to_string(),
    })?;
    if changed > 0 {
        return Err(OpError::ReleaseWithChanges {
            vm: vm.to_string(),
            disk: disk.target.clone(),
        });
    }
    // The VM will use its base directly: none of VM Overlay's revisions may stay in it.
    super::history::end(uri, vm, disk, check, journal)?;
    journal.ensure_room()?;
    let mut rec = ChangeRecord {
        change: Change::Release,
        phase: ChangePhase::Defining,
        uri: uri.to_string(),
        domain: vm.to_string(),
        uuid: check.uuid(),
        target: disk.target.clone(),
        base: disk.base.clone(),
        base_format: disk.base_format.clone(),
        overlay: disk.overlay.clone(),
        engine: disk.engine,
        started: now(),
    };
    journal
        .begin_entry(&rec.overlay, &rec)
        .map_err(|e| journal_error(e, journal))?;
    // Held until the overlay is gone: a guest started now cannot write into it.
    let held = match images.hold(&disk.overlay) {
        Ok(h) => h,
        Err(e) => {
            let _ = journal.finish(&rec.overlay);
            return Err(e);
        }
    };
    if let Err(e) = check
        .ensure_inactive()
        .and_then(|_| check.redefine_disk(&disk.target, &disk.base, &disk.base_format))
    {
        let _ = journal.finish(&rec.overlay);
        return Err(e);
    }
    rec.phase = ChangePhase::Removing;
    journal
        .update_entry(&rec.overlay, &rec)
        .map_err(|e| journal_error(e, journal))?;
    // A guest started right before the switch would run on the overlay: then keep it.
    check.ensure_inactive()?;
    let removed = images.remove_image(&disk.overlay);
    drop(held);
    removed.map_err(|detail| OpError::Failed {
        op: super::OpKind::Discard,
        overlay: disk.overlay.clone(),
        detail,
        data: crate::i18n::tr("The VM uses its base again; the empty overlay is left over and will be removed at the next start"),
    })?;
    journal
        .finish(&rec.overlay)
        .map_err(|e| journal_error(e, journal))
}

/// Finishes or rolls back an interrupted adopt or release, from its record.
pub fn resume(
    rec: ChangeRecord,
    check: &dyn DomainCheck,
    journal: &Journal,
) -> Result<(), OpError> {
    let images = check.images(rec.engine)?;
    check.ensure_inactive()?;
    let d = disk_now(check, &rec.target)?;
    match (rec.change, rec.phase) {
        // Rolled back unless the switch happened.
        (Change::Adopt, _) => roll_back_adopt(&rec, check, journal),
        (Change::Release, ChangePhase::Defining) if names(&d, &rec.overlay) => {
            // Not switched yet: the VM still uses the overlay; nothing to undo.
            journal
                .finish(&rec.overlay)
                .map_err(|e| journal_error(e, journal))
        }
        (Change::Release, _) => {
            if !names(&d, &rec.base) {
                let _ = journal.finish(&rec.overlay);
                return Err(OpError::NotFound {
                    what: format!(
                        "the interrupted release of {} found its disk {} naming neither {} nor {}; nothing was removed",
                        rec.domain,
                        rec.target,
                        rec.overlay.display(),
                        rec.base.display()
                    ),
                });
            }
            if images.exists(&rec.overlay) {
                let held = images.hold(&rec.overlay)?;
                images
                    .remove_image(&rec.overlay)
                    .map_err(|detail| OpError::NotWritable {
                        what: rec.overlay.display().to_string(),
                        reason: detail,
                    })?;
                drop(held);
            }
            journal
                .finish(&rec.overlay)
                .map_err(|e| journal_error(e, journal))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(kind: &str, device: &str, driver: Option<&str>) -> DiskXml {
        DiskXml {
            target: "vda".into(),
            kind: kind.into(),
            device: device.into(),
            driver_type: driver.map(str::to_string),
            source: Some("/img/vm.qcow2".into()),
            xml_backing: None,
            pool_volume: None,
            readonly: false,
            shareable: false,
        }
    }

    #[test]
    fn the_overlay_goes_beside_the_image() {
        assert_eq!(
            overlay_path_for(Path::new("/var/lib/libvirt/images/debian.qcow2")),
            Path::new("/var/lib/libvirt/images/debian.overlay.qcow2")
        );
        assert_eq!(
            overlay_path_for(Path::new("/img/disk.raw")),
            Path::new("/img/disk.overlay.qcow2")
        );
    }

    #[test]
    fn only_private_qcow2_or_raw_image_files_can_be_adopted() {
        assert!(definition_refusal("vm", &disk("file", "disk", Some("qcow2"))).is_none());
        assert!(definition_refusal("vm", &disk("file", "disk", Some("raw"))).is_none());
        assert!(definition_refusal("vm", &disk("file", "disk", None)).is_none());
        for d in [
            disk("file", "cdrom", Some("raw")),
            disk("block", "disk", Some("raw")),
            disk("network", "disk", Some("raw")),
            disk("file", "disk", Some("vmdk")),
            DiskXml {
                shareable: true,
                ..disk("file", "disk", Some("raw"))
            },
            DiskXml {
                readonly: true,
                ..disk("file", "disk", Some("qcow2"))
            },
        ] {
            let e = definition_refusal("vm", &d).expect("refused");
            assert_eq!(e.exit_code(), 4, "{e}");
        }
    }
}
