//! Discovery of managed disks: file-backed qcow2 disks whose image has a backing file.
//! The overlay is the top image; the base is the image directly below it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::backend::EngineKind;
use super::image;

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
    /// The first `<backingStore>` below the source, if the XML has a chain (live XML).
    pub xml_backing: Option<String>,
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
            source,
            xml_backing,
        });
    }
    Ok(out)
}

/// A disk whose overlay VM Overlay manages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
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
    pub engine: EngineKind,
}

/// A disk that is listed but not managed, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedDisk {
    pub target: String,
    pub source: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DomainDisks {
    pub managed: Vec<ManagedDisk>,
    pub skipped: Vec<SkippedDisk>,
}

/// An overlay/base pair fixed by the user (old command line, or the per-VM setting) instead
/// of discovered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Pin {
    pub overlay: PathBuf,
    pub base: PathBuf,
}

/// Inspects one image as an overlay: `Ok` if it is a qcow2 with a readable backing file.
pub fn inspect_overlay(target: &str, overlay: &Path) -> Result<ManagedDisk, String> {
    let meta = std::fs::symlink_metadata(overlay)
        .map_err(|e| format!("overlay {} is missing: {e}", overlay.display()))?;
    if meta.file_type().is_symlink() {
        return Err(format!(
            "overlay {} is a symlink; name the real file so it can be replaced safely",
            overlay.display()
        ));
    }
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", overlay.display()));
    }
    let chain = image::backing_chain(overlay)?;
    let top = chain.first().ok_or("qemu-img returned an empty chain")?;
    if top.format != "qcow2" {
        return Err(format!(
            "{} is a {} image, not a qcow2 overlay",
            overlay.display(),
            top.format
        ));
    }
    let (Some(backing_ref), Some(full)) = (&top.backing_filename, &top.full_backing_filename)
    else {
        return Err(format!(
            "{} has no backing file: it is not an overlay",
            overlay.display()
        ));
    };
    let base = chain
        .get(1)
        .ok_or_else(|| format!("the base {full} of {} is missing", overlay.display()))?;
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
        engine: EngineKind::QemuImg,
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
    inspect: &dyn Fn(&str, &Path) -> Result<ManagedDisk, String>,
) -> Result<DomainDisks, String> {
    let mut out = DomainDisks::default();
    for d in parse_disks(xml)? {
        let skip = |reason: String| SkippedDisk {
            target: d.target.clone(),
            source: d.source.clone(),
            reason,
        };
        if d.device == "cdrom" || d.device == "floppy" {
            out.skipped.push(skip(format!("{} drive", d.device)));
            continue;
        }
        if d.kind != "file" {
            let what = match d.kind.as_str() {
                "network" => "network disk",
                "block" => "block device",
                "volume" => "storage-pool volume",
                _ => "not a file",
            };
            out.skipped.push(skip(what.to_string()));
            continue;
        }
        let Some(source) = &d.source else {
            out.skipped.push(skip("no image".into()));
            continue;
        };
        if let Some(t) = d.driver_type.as_deref().filter(|t| *t != "qcow2") {
            out.skipped
                .push(skip(format!("{t} image: only qcow2 overlays are managed")));
            continue;
        }
        match inspect(&d.target, Path::new(source)) {
            Ok(mut disk) => {
                if let Some(pin) = pins
                    .iter()
                    .find(|p| image::same_path(&p.overlay, &disk.overlay))
                {
                    if !image::same_path(&pin.base, &disk.base) {
                        out.skipped.push(skip(format!(
                            "pinned base {} is not the backing file of {} (which is {})",
                            pin.base.display(),
                            disk.overlay.display(),
                            disk.base.display()
                        )));
                        continue;
                    }
                    disk.base = image::absolute(&pin.base);
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
            .map(|s| (s.target.as_str(), s.reason.as_str()))
            .collect();
        assert_eq!(reasons[1], ("sda", "cdrom drive"));
        assert_eq!(reasons[2], ("vdb", "network disk"));
        assert_eq!(reasons[3], ("vdc", "block device"));
        assert_eq!(
            reasons[4],
            ("vdd", "raw image: only qcow2 overlays are managed")
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
