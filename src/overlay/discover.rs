//! Discovery of managed disks: file-backed qcow2 disks whose image has a backing file.
//! The overlay is the top image; the base is the image directly below it. When the domain's
//! definition names the backing file itself (`<backingStore>`), QEMU uses that one: it must
//! agree with the image's header, or the disk is refused.

use std::path::Path;

use super::error::SkipReason;
use super::image;
use super::types::{Engine, ManagedDisk, Pin};

/// A `<disk>` of a domain definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskXml {
    pub target: String,
    /// `file`, `block`, `network`, `volume`, `dir`
    pub kind: String,
    /// `disk`, `cdrom`, `floppy`, `lun`
    pub device: String,
    pub driver_type: Option<String>,
    pub source: Option<String>,
    /// The first `<backingStore>` below the source, if the XML has a chain (live XML, or a
    /// persistent definition where the user wrote one).
    pub xml_backing: Option<String>,
    /// `<source pool= volume=>` of a `type='volume'` disk.
    pub pool_volume: Option<(String, String)>,
    /// `<readonly/>` or `<shareable/>`: the guest does not own the image alone.
    pub readonly: bool,
    pub shareable: bool,
}

/// Parses the `<disk>` elements of a domain XML.
pub fn parse_disks(xml: &str) -> Result<Vec<DiskXml>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("domain XML: {e}"))?;
    let mut out = Vec::new();
    for disk in doc
        .descendants()
        .filter(|n| n.has_tag_name("disk") && n.parent().is_some_and(|p| p.has_tag_name("devices")))
    {
        let child = |name: &str| disk.children().find(|c| c.has_tag_name(name));
        let source = child("source").and_then(|s| {
            s.attribute("file")
                .or_else(|| s.attribute("dev"))
                .or_else(|| s.attribute("name"))
                .or_else(|| s.attribute("dir"))
                .map(str::to_string)
        });
        let xml_backing = child("backingStore")
            .and_then(|b| b.children().find(|c| c.has_tag_name("source")))
            .and_then(|s| s.attribute("file"))
            .map(str::to_string);
        out.push(DiskXml {
            target: child("target")
                .and_then(|t| t.attribute("dev"))
                .unwrap_or("?")
                .to_string(),
            kind: disk.attribute("type").unwrap_or("file").to_string(),
            device: disk.attribute("device").unwrap_or("disk").to_string(),
            driver_type: child("driver")
                .and_then(|d| d.attribute("type"))
                .map(str::to_string),
            readonly: child("readonly").is_some(),
            shareable: child("shareable").is_some(),
            pool_volume: child("source").and_then(|s| {
                Some((
                    s.attribute("pool")?.to_string(),
                    s.attribute("volume")?.to_string(),
                ))
            }),
            source,
            xml_backing,
        });
    }
    Ok(out)
}

/// A disk that is listed but not managed, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedDisk {
    pub target: String,
    pub source: Option<String>,
    pub reason: SkipReason,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainDisks {
    pub managed: Vec<ManagedDisk>,
    pub skipped: Vec<SkippedDisk>,
}

/// Inspects one image as an overlay: `Ok` if it is a qcow2 with a readable backing file.
pub fn inspect_overlay(target: &str, overlay: &Path) -> Result<ManagedDisk, SkipReason> {
    let path = overlay.to_path_buf();
    let meta = std::fs::symlink_metadata(overlay).map_err(|e| SkipReason::Missing {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    if meta.file_type().is_symlink() {
        return Err(SkipReason::Symlink { path });
    }
    if !meta.is_file() {
        return Err(SkipReason::NotRegularFile { path });
    }
    let chain = image::backing_chain(overlay)?;
    let top = chain.first().ok_or_else(|| SkipReason::Unreadable {
        path: path.clone(),
        detail: "qemu-img returned an empty chain".into(),
    })?;
    if top.format != "qcow2" {
        return Err(SkipReason::NotQcow2 {
            path,
            format: top.format.clone(),
        });
    }
    if let Some(data_file) = top.data_file() {
        return Err(SkipReason::ExternalDataFile { path, data_file });
    }
    let (Some(backing_ref), Some(full)) = (&top.backing_filename, &top.full_backing_filename)
    else {
        return Err(SkipReason::NoBackingFile { path });
    };
    let base = chain.get(1).ok_or_else(|| SkipReason::BaseMissing {
        path: path.clone(),
        base: full.clone(),
    })?;
    Ok(ManagedDisk {
        target: target.to_string(),
        overlay: image::absolute(overlay),
        base: image::absolute(Path::new(full)),
        backing_ref: backing_ref.clone(),
        base_format: top
            .backing_format
            .clone()
            .unwrap_or_else(|| base.format.clone()),
        virtual_size: top.virtual_size,
        cluster_size: top.cluster_size,
        engine: Engine::QemuImg,
    })
}

/// Finds the managed disks of a domain from its XML, inspecting each with `qemu-img`.
/// `pins` fix the base of a given overlay.
pub fn discover(xml: &str, pins: &[Pin]) -> Result<DomainDisks, String> {
    discover_with(xml, pins, &inspect_overlay)
}

/// As [`discover`], with `inspect(target, source)` choosing the engine of each disk.
pub fn discover_with(
    xml: &str,
    pins: &[Pin],
    inspect: &dyn Fn(&str, &Path) -> Result<ManagedDisk, SkipReason>,
) -> Result<DomainDisks, String> {
    let mut out = DomainDisks::default();
    for d in parse_disks(xml)? {
        let skip = |reason: SkipReason| SkippedDisk {
            target: d.target.clone(),
            source: d.source.clone(),
            reason,
        };
        if d.device == "cdrom" || d.device == "floppy" {
            out.skipped.push(skip(SkipReason::Drive {
                device: d.device.clone(),
            }));
            continue;
        }
        if d.kind != "file" {
            out.skipped.push(skip(match d.kind.as_str() {
                "network" => SkipReason::NetworkDisk,
                "block" => SkipReason::BlockDevice,
                "volume" => SkipReason::PoolVolume,
                _ => SkipReason::NotAFile,
            }));
            continue;
        }
        let Some(source) = &d.source else {
            out.skipped.push(skip(SkipReason::NoImage));
            continue;
        };
        if let Some(t) = d.driver_type.as_deref().filter(|t| *t != "qcow2") {
            out.skipped.push(skip(SkipReason::DefinedNotQcow2 {
                format: t.to_string(),
            }));
            continue;
        }
        match inspect(&d.target, Path::new(source)) {
            Ok(mut disk) => {
                if let Some(pin) = pins
                    .iter()
                    .find(|p| image::same_path(&p.overlay, &disk.overlay))
                {
                    if !image::same_path(&pin.base, &disk.base) {
                        out.skipped.push(skip(SkipReason::PinMismatch {
                            pin: pin.base.clone(),
                            path: disk.overlay.clone(),
                            base: disk.base.clone(),
                        }));
                        continue;
                    }
                    disk.base = image::absolute(&pin.base);
                }
                // The definition's chain is what QEMU opens: it must name the same base.
                if let Some(xml_base) = d.xml_backing.as_deref().map(Path::new) {
                    if !image::same_path(xml_base, &disk.base) {
                        out.skipped.push(skip(SkipReason::BackingMismatch {
                            overlay: disk.overlay.clone(),
                            xml_base: xml_base.to_path_buf(),
                            header_base: disk.base.clone(),
                        }));
                        continue;
                    }
                }
                out.managed.push(disk)
            }
            Err(reason) => out.skipped.push(skip(reason)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<domain type='kvm'><name>x</name><devices>
      <disk type='file' device='disk'>
        <driver name='qemu' type='qcow2'/>
        <source file='/var/lib/libvirt/images/x.qcow2' index='2'/>
        <backingStore type='file' index='1'><format type='qcow2'/><source file='/var/lib/libvirt/images/base.qcow2'/><backingStore/></backingStore>
        <target dev='vda' bus='virtio'/>
      </disk>
      <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/iso/x.iso'/><target dev='sda' bus='sata'/></disk>
      <disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='rbd' name='pool/img'/><target dev='vdb' bus='virtio'/></disk>
      <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/sdz'/><target dev='vdc' bus='virtio'/></disk>
      <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/img/raw.img'/><target dev='vdd' bus='virtio'/></disk>
    </devices></domain>"#;

    #[test]
    fn parses_every_disk_kind() {
        let disks = parse_disks(XML).unwrap();
        assert_eq!(disks.len(), 5);
        assert_eq!(disks[0].target, "vda");
        assert_eq!(
            disks[0].source.as_deref(),
            Some("/var/lib/libvirt/images/x.qcow2")
        );
        assert_eq!(
            disks[0].xml_backing.as_deref(),
            Some("/var/lib/libvirt/images/base.qcow2")
        );
        assert_eq!(disks[1].device, "cdrom");
        assert_eq!(disks[2].kind, "network");
        assert_eq!(disks[2].source.as_deref(), Some("pool/img"));
        assert_eq!(disks[3].source.as_deref(), Some("/dev/sdz"));
        assert_eq!(disks[4].driver_type.as_deref(), Some("raw"));
    }

    #[test]
    fn unmanaged_disks_are_listed_with_reasons() {
        let found = discover(XML, &[]).unwrap();
        let reasons: Vec<_> = found
            .skipped
            .iter()
            .map(|s| (s.target.as_str(), s.reason.to_string()))
            .collect();
        assert_eq!(reasons[1], ("sda", "cdrom drive".to_string()));
        assert_eq!(reasons[2], ("vdb", "network disk".to_string()));
        assert_eq!(reasons[3], ("vdc", "block device".to_string()));
        assert_eq!(
            reasons[4],
            (
                "vdd",
                "raw image: only qcow2 overlays are managed".to_string()
            )
        );
        // The first one's image does not exist on this machine.
        assert!(reasons[0].1.contains("missing"), "{:?}", reasons[0]);
        assert!(found.managed.is_empty());
    }

    #[test]
    fn bad_xml_is_an_error() {
        assert!(parse_disks("<domain><devices>").is_err());
    }
}
