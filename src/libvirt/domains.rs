//! What the overlay operations ask libvirt about a domain: its disks, whether it runs,
//! whether libvirt keeps state that needs its images as they are (a managed save, snapshots,
//! checkpoints), and who else uses a base, on every connection this process knows.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use virt::connect::Connect;
use virt::domain::Domain;

use super::engine::{is_local_uri, LibvirtEngine};
use super::events::DomainState;
use super::ffi;
use crate::overlay::discover::parse_disks;
use crate::overlay::qemu_img::locally_writable;
use crate::overlay::{
    image, DomainCheck, DomainDisks, Engine, EngineChoice, ImageEngine, ManagedDisk, OpError,
    QemuImgEngine, Record, SkipReason,
};

pub fn state(dom: &Domain) -> Result<DomainState, virt::error::Error> {
    let (s, r) = ffi::domain_state(dom)?;
    Ok(DomainState::from_raw(s, r))
}

fn not_found(what: String) -> OpError {
    OpError::NotFound { what }
}

/// A domain's disks as the operations see them: its current definition, with the user's
/// pins, each disk with the engine `choice` gives it.
pub fn domain_disks(
    check: &LibvirtCheck,
    choice: EngineChoice,
    pins: &[crate::overlay::Pin],
) -> Result<DomainDisks, OpError> {
    let xml = check.xml(0)?;
    let local = is_local_uri(&check.uri);
    let via_libvirt = |target: &str, source: &Path| -> Result<ManagedDisk, SkipReason> {
        check
            .libvirt_engine()
            .map_err(|e| SkipReason::Unreadable {
                path: source.to_path_buf(),
                detail: e.to_string(),
            })?
            .inspect(target, source)
    };
    let inspect = |target: &str, source: &Path| -> Result<ManagedDisk, SkipReason> {
        match choice {
            EngineChoice::Only(Engine::QemuImg) if !local => Err(SkipReason::RemoteOnly {
                path: source.to_path_buf(),
                uri: check.uri.clone(),
            }),
            EngineChoice::Only(Engine::QemuImg) => QemuImgEngine.inspect(target, source),
            EngineChoice::Only(Engine::Libvirt) => via_libvirt(target, source),
            EngineChoice::Auto if !local => via_libvirt(target, source),
            EngineChoice::Auto => match QemuImgEngine.inspect(target, source) {
                Ok(disk) if locally_writable(&disk) => Ok(disk),
                // Readable but not writable here: let libvirtd work.
                Ok(disk) => via_libvirt(target, source).or(Ok(disk)),
                // Not even readable here (or not here at all, as in a sandbox): libvirtd.
                // A refusal about the image itself (a symlink, no backing file) stands.
                Err(e) if std::fs::File::open(source).is_err() => via_libvirt(target, source)
                    .map_err(|lv| SkipReason::NotThroughLibvirt {
                        detail: e.to_string(),
                        libvirt: lv.to_string(),
                    }),
                Err(e) => Err(e),
            },
        }
    };
    crate::overlay::discover_with(&xml, pins, &inspect).map_err(not_found)
}

/// The check for the domain a journal record names, over a new read-only connection to the
/// record's URI (how interrupted operations are resumed). The domain is found by its UUID
/// when the record has one, so a renamed domain is still found.
pub fn check_for_record(rec: &Record) -> Result<Box<dyn DomainCheck>, OpError> {
    check_for(&rec.uri, &rec.domain, rec.uuid.as_deref())
}

/// The check of a domain a journal record names, found by UUID first.
pub fn check_for(
    uri: &str,
    domain: &str,
    uuid: Option<&str>,
) -> Result<Box<dyn DomainCheck>, OpError> {
    let conn = super::open(uri, true)
        .map_err(|e| not_found(format!("cannot connect to '{uri}': {}", e.message())))?;
    let name = uuid
        .and_then(|u| conn.lookup_domain_by_uuid_string(u).ok())
        .and_then(|d| d.name().ok())
        .unwrap_or_else(|| domain.to_string());
    Ok(Box::new(LibvirtCheck::new(conn, uri, &name)))
}

/// What one listing per kind says about every domain of a connection: the UUIDs of those with
/// a managed save, with snapshots, with checkpoints (`None`: the driver cannot filter on it).
/// Three calls instead of three per domain, for looking at many domains at once (`status`).
#[derive(Debug, Clone, Default)]
pub struct KeptState {
    pub saved: Option<std::collections::HashSet<String>>,
    pub snapshots: Option<std::collections::HashSet<String>>,
    pub checkpoints: Option<std::collections::HashSet<String>>,
}

impl KeptState {
    pub fn list(conn: &Connect) -> KeptState {
        let uuids = |flag| -> Option<std::collections::HashSet<String>> {
            let doms = conn.list_all_domains(flag).ok()?;
            doms.iter().map(|d| d.uuid_string().ok()).collect()
        };
        KeptState {
            saved: uuids(virt::sys::VIR_CONNECT_LIST_DOMAINS_MANAGEDSAVE),
            snapshots: uuids(virt::sys::VIR_CONNECT_LIST_DOMAINS_HAS_SNAPSHOT),
            checkpoints: uuids(virt::sys::VIR_CONNECT_LIST_DOMAINS_HAS_CHECKPOINT),
        }
    }

    /// For domain `uuid`: whether it has each (`None`: ask libvirt).
    fn of(&self, uuid: &str) -> [Option<bool>; 3] {
        [&self.saved, &self.snapshots, &self.checkpoints]
            .map(|s| s.as_ref().map(|s| s.contains(uuid)))
    }
}

/// The operations' view of one domain: is it running, does libvirt keep state that needs its
/// images, who else uses a base, and (when libvirt does the work) the libvirt engine on a
/// read-write connection of its own.
pub struct LibvirtCheck {
    conn: Connect,
    uri: String,
    domain: String,
    /// Every other connection this process knows (`--connect`, the app's monitors): a base
    /// may be used by a domain on any of them.
    others: Vec<(String, Connect)>,
    /// Directories the user listed where unregistered images may live.
    scan_dirs: Vec<PathBuf>,
    handle: OnceLock<Domain>,
    libvirt: OnceLock<Result<LibvirtEngine, String>>,
    /// Only for looking (`status`, the app's inspections), never for an operation, which
    /// asks libvirt afresh before each write: the definition read once per kind (live or
    /// inactive), and for a domain known to be shut off, once for both.
    definitions: Option<std::sync::Mutex<std::collections::HashMap<u32, String>>>,
    known_inactive: bool,
    /// Only for looking: a managed save, snapshots, checkpoints, as a listing just said.
    listed: [Option<bool>; 3],
}

impl LibvirtCheck {
    pub fn new(conn: Connect, uri: &str, domain: &str) -> LibvirtCheck {
        LibvirtCheck {
            conn,
            uri: uri.to_string(),
            domain: domain.to_string(),
            others: Vec::new(),
            scan_dirs: Vec::new(),
            handle: OnceLock::new(),
            libvirt: OnceLock::new(),
            definitions: None,
            known_inactive: false,
            listed: [None; 3],
        }
    }

    /// Only for looking: what `kept` (listed just now) says domain `uuid` has, so libvirt is
    /// asked only about what it has.
    pub fn with_listed_state(mut self, kept: &KeptState, uuid: &str) -> LibvirtCheck {
        self.listed = kept.of(uuid);
        self
    }

    /// A check that only looks: the definition is read once (see `definitions`); `inactive`
    /// when the domain was just listed as shut off (its live and inactive definitions are then
    /// the same).
    pub fn inspecting(mut self, inactive: bool) -> LibvirtCheck {
        self.definitions = Some(Default::default());
        self.known_inactive = inactive;
        self
    }

    /// The domain's handle, already known (from a listing), so it is not looked up again.
    pub fn with_handle(self, dom: Domain) -> LibvirtCheck {
        let _ = self.handle.set(dom);
        self
    }

    /// The domain's definition (`flags`: 0 for the live one, or `VIR_DOMAIN_XML_INACTIVE`).
    fn xml(&self, flags: u32) -> Result<String, OpError> {
        let key = if self.known_inactive {
            flags & !virt::sys::VIR_DOMAIN_XML_INACTIVE
        } else {
            flags
        };
        if let Some(xml) = self
            .definitions
            .as_ref()
            .and_then(|c| c.lock().ok()?.get(&key).cloned())
        {
            return Ok(xml);
        }
        let xml = self
            .domain()?
            .xml_desc(flags)
            .map_err(|e| not_found(format!("definition of '{}': {}", self.domain, e.message())))?;
        if let Some(Ok(mut c)) = self.definitions.as_ref().map(|c| c.lock()) {
            c.insert(key, xml.clone());
        }
        Ok(xml)
    }

    /// Also looks for overlays of a base in these directories (the `scan-dirs.json` setting).
    pub fn with_scan_dirs(mut self, dirs: Vec<PathBuf>) -> LibvirtCheck {
        self.scan_dirs = dirs;
        self
    }

    /// Also looks for users of a base on these connections (those to `uri` itself are
    /// skipped).
    pub fn with_others(mut self, others: Vec<(String, Connect)>) -> LibvirtCheck {
        self.others = others.into_iter().filter(|(u, _)| *u != self.uri).collect();
        self
    }

    pub fn connection(&self) -> &Connect {
        &self.conn
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The domain, looked up once: every question after that is asked of libvirt afresh
    /// (a handle names the domain by UUID, so a domain replaced meanwhile is not mistaken for
    /// it: the calls fail).
    fn domain(&self) -> Result<Domain, OpError> {
        if let Some(d) = self.handle.get() {
            return Ok(d.clone());
        }
        let d = self
            .conn
            .lookup_domain_by_name(&self.domain)
            .map_err(|e| not_found(format!("domain '{}': {}", self.domain, e.message())))?;
        Ok(self.handle.get_or_init(|| d).clone())
    }

    fn libvirt_engine(&self) -> Result<&LibvirtEngine, OpError> {
        self.libvirt
            .get_or_init(|| {
                let conn = super::open(&self.uri, false).map_err(|e| {
                    format!(
                        "the libvirt engine needs a read-write connection to {}: {}",
                        self.uri,
                        e.message()
                    )
                })?;
                Ok(LibvirtEngine::new(conn, &self.uri, &self.domain))
            })
            .as_ref()
            .map_err(|what| not_found(what.clone()))
    }

    /// Users of `base` other than `overlay` on one connection: disks of every domain (files
    /// and pool volumes) whose chain contains it, and every pool volume backed by it.
    fn users_on(
        &self,
        conn: &Connect,
        uri: &str,
        base: &Path,
        overlay: &Path,
    ) -> Result<Vec<String>, OpError> {
        // A remote host's paths name its files, not ours: compare them as written, and ask
        // libvirtd (never this machine) what backs an image.
        let local = is_local_uri(uri);
        let same = |a: &Path, b: &Path| {
            if local {
                image::same_path(a, b)
            } else {
                a == b
            }
        };
        let backed_by_base = |src: &Path| -> bool {
            match local.then(|| image::backing_chain(src)) {
                Some(Ok(chain)) => chain
                    .iter()
                    .skip(1)
                    .any(|l| image::same_file(Path::new(&l.filename), base)),
                // Remote, or not readable here: libvirtd reads the backing file (on this
                // domain's connection through the libvirt engine, which can make a transient
                // pool for a directory no pool covers).
                _ => if uri == self.uri {
                    self.libvirt_engine().ok().and_then(|lv| lv.backing_of(src))
                } else {
                    volume_backing(conn, src)
                }
                .is_some_and(|b| same(&b, base)),
            }
        };
        let here = if uri == self.uri {
            String::new()
        } else {
            format!(" on {uri}")
        };
        let domains = conn
            .list_all_domains(0)
            .map_err(|e| not_found(format!("listing domains on {uri}: {}", e.message())))?;
        let mut users = Vec::new();
        for dom in domains {
            let (Ok(name), Ok(xml)) = (dom.name(), dom.xml_desc(0)) else {
                continue;
            };
            for disk in parse_disks(&xml).unwrap_or_default() {
                let src = match (disk.kind.as_str(), &disk.source, &disk.pool_volume) {
                    ("file", Some(src), _) => PathBuf::from(src),
                    ("volume", _, Some((pool, vol))) => match volume_path(conn, pool, vol) {
                        Some(p) => p,
                        None => continue,
                    },
                    _ => continue,
                };
                if same(&src, overlay) {
                    continue;
                }
                if same(&src, base) || backed_by_base(&src) {
                    users.push(format!("domain {name} ({}){here}", disk.target));
                }
            }
        }
        // Images no domain uses yet, in directories libvirt knows as pools.
        for pool in conn
            .list_all_storage_pools(virt::sys::VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
            .unwrap_or_default()
        {
            let _ = pool.refresh(0);
            for vol in pool.list_all_volumes(0).unwrap_or_default() {
                let Ok(xml) = vol.xml_desc(0) else { continue };
                let Ok(info) = super::engine::parse_vol(&xml) else {
                    continue;
                };
                // (and a new overlay VM Overlay left half-made: the next rebuild replaces it)
                let half_made = info.path.to_string_lossy().ends_with(".vmoverlay-new");
                if half_made || same(&info.path, overlay) || same(&info.path, base) {
                    continue;
                }
                if info.backing.as_deref().is_some_and(|b| same(b, base)) {
                    let user = format!("{}{here}", info.path.display());
                    if !users.iter().any(|u: &String| u.contains(&user)) {
                        users.push(user);
                    }
                }
            }
        }
        Ok(users)
    }
}

/// `xml` with disk `target`'s `<source file=…>` set to `source` and its `<driver type=…>` to
/// `driver_type`, and every other byte as it was.
pub fn edit_disk_source(
    xml: &str,
    target: &str,
    source: &str,
    driver_type: &str,
) -> Result<String, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("domain XML: {e}"))?;
    let disk = doc
        .descendants()
        .filter(|n| n.has_tag_name("disk"))
        .find(|d| {
            d.children()
                .any(|c| c.has_tag_name("target") && c.attribute("dev") == Some(target))
        })
        .ok_or_else(|| format!("the definition has no disk {target}"))?;
    let child = |name: &str| disk.children().find(|c| c.has_tag_name(name));
    let file = child("source")
        .and_then(|s| s.attributes().find(|a| a.name() == "file"))
        .ok_or_else(|| format!("disk {target} has no <source file=…>"))?;
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('\'', "&apos;")
            .replace('"', "&quot;")
    };
    // Replacements from the end of the document backwards, so earlier ranges stay valid.
    let mut edits = vec![(file.range_value(), esc(source))];
    match child("driver") {
        Some(driver) => match driver.attributes().find(|a| a.name() == "type") {
            Some(t) => edits.push((t.range_value(), esc(driver_type))),
            None => {
                let tag_end = driver.range().start + "<driver".len();
                edits.push((tag_end..tag_end, format!(" type='{}'", esc(driver_type))));
            }
        },
        None => {
            let at = child("source")
                .map(|s| s.range().start)
                .unwrap_or(file.range().start);
            edits.push((
                at..at,
                format!("<driver name='qemu' type='{}'/>\n      ", esc(driver_type)),
            ));
        }
    }
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut out = xml.to_string();
    for (range, text) in edits {
        out.replace_range(range, &text);
    }
    Ok(out)
}

/// The `<os><nvram>` file of a domain definition.
pub fn nvram_of(xml: &str) -> Option<PathBuf> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let os = doc
        .root_element()
        .children()
        .find(|n| n.has_tag_name("os"))?;
    let nvram = os.children().find(|n| n.has_tag_name("nvram"))?;
    nvram
        .text()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(PathBuf::from)
}

/// The file of volume `vol` in pool `pool`.
fn volume_path(conn: &Connect, pool: &str, vol: &str) -> Option<PathBuf> {
    let pool = conn.lookup_storage_pool_by_name(pool).ok()?;
    let vol = pool.lookup_storage_vol_by_name(vol).ok()?;
    vol.path().ok().map(PathBuf::from)
}

/// The backing file of the image at `path`, as libvirtd reads it (when a pool knows it).
fn volume_backing(conn: &Connect, path: &Path) -> Option<PathBuf> {
    let vol = conn
        .lookup_storage_vol_by_path(&path.to_string_lossy())
        .ok()?;
    super::engine::parse_vol(&vol.xml_desc(0).ok()?)
        .ok()?
        .backing
}

impl DomainCheck for LibvirtCheck {
    fn ensure_inactive(&self) -> Result<(), OpError> {
        let dom = self.domain()?;
        let st = state(&dom)
            .map_err(|e| not_found(format!("state of '{}': {}", self.domain, e.message())))?;
        if st.kind.is_active() {
            return Err(OpError::DomainActive {
                domain: self.domain.clone(),
                state: format!("{} ({})", st.kind.word(), st.reason_word()),
            });
        }
        Ok(())
    }

    fn ensure_no_saved_state(&self) -> Result<(), OpError> {
        let dom = self.domain()?;
        let vm = self.domain.clone();
        let [saved, snapshots, checkpoints] = self.listed.map(|l| l != Some(false));
        if saved
            && dom
                .has_managed_save(0)
                .map_err(|e| not_found(format!("managed save of '{vm}': {}", e.message())))?
        {
            return Err(OpError::SavedState { vm });
        }
        if snapshots {
            let names: Vec<String> = dom
                .list_all_snapshots(0)
                .map_err(|e| not_found(format!("snapshots of '{vm}': {}", e.message())))?
                .iter()
                .filter_map(|s| s.name().ok())
                .collect();
            if !names.is_empty() {
                return Err(OpError::Snapshots { vm, names });
            }
        }
        if checkpoints {
            let names = ffi::checkpoint_names(&dom)
                .map_err(|e| not_found(format!("checkpoints of '{vm}': {e}")))?;
            if !names.is_empty() {
                return Err(OpError::Checkpoints { vm, names });
            }
        }
        Ok(())
    }

    fn other_users(&self, base: &Path, overlay: &Path) -> Result<Vec<String>, OpError> {
        let mut users = self.users_on(&self.conn, &self.uri, base, overlay)?;
        if is_local_uri(&self.uri) {
            for dir in &self.scan_dirs {
                users.extend(
                    image::other_overlays_of(dir, base, overlay)
                        .into_iter()
                        .map(|p| p.display().to_string()),
                );
            }
        }
        for (uri, conn) in &self.others {
            // Paths on another host name other files: only local connections share files.
            if is_local_uri(uri) && is_local_uri(&self.uri) {
                users.extend(self.users_on(conn, uri, base, overlay)?);
            }
        }
        Ok(users)
    }

    fn inactive_xml(&self) -> Result<String, OpError> {
        self.xml(virt::sys::VIR_DOMAIN_XML_INACTIVE)
    }

    fn redefine_disk(&self, target: &str, source: &Path, driver_type: &str) -> Result<(), OpError> {
        // A read-write connection, and the secure XML: passwords and keys in the definition
        // (a display's password, a disk's secret) are kept, not dropped.
        let conn = self.libvirt_engine()?.connection();
        let dom = conn
            .lookup_domain_by_name(&self.domain)
            .map_err(|e| not_found(format!("domain '{}': {}", self.domain, e.message())))?;
        let xml = dom
            .xml_desc(virt::sys::VIR_DOMAIN_XML_INACTIVE | virt::sys::VIR_DOMAIN_XML_SECURE)
            .map_err(|e| not_found(format!("definition of '{}': {}", self.domain, e.message())))?;
        let edited = edit_disk_source(&xml, target, &source.to_string_lossy(), driver_type)
            .map_err(not_found)?;
        conn.define_domain_xml(&edited)
            .map_err(|e| OpError::NotWritable {
                what: format!("the definition of {}", self.domain),
                reason: e.message().to_string(),
            })?;
        Ok(())
    }

    fn nvram(&self) -> Option<PathBuf> {
        nvram_of(&self.xml(virt::sys::VIR_DOMAIN_XML_INACTIVE).ok()?)
    }

    fn uuid(&self) -> Option<String> {
        self.domain().ok()?.uuid_string().ok()
    }

    fn images(&self, kind: Engine) -> Result<&dyn ImageEngine, OpError> {
        match kind {
            Engine::QemuImg => Ok(&QemuImgEngine),
            Engine::Libvirt => Ok(self.libvirt_engine()?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::edit_disk_source;

    const XML: &str = "<domain type='kvm'>\n  <name>vm</name>\n  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw' cache='none'/>\n      <source file='/img/vm.raw'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n    <disk type=\"file\" device=\"disk\">\n      <driver name=\"qemu\" type=\"qcow2\"/>\n      <source file=\"/img/data.qcow2\"/>\n      <target dev=\"vdb\" bus=\"virtio\"/>\n    </disk>\n    <graphics type='vnc' passwd='s3cret'/>\n  </devices>\n</domain>\n";

    #[test]
    fn only_the_disks_source_and_driver_type_change() {
        let out = edit_disk_source(XML, "vda", "/img/vm.overlay.qcow2", "qcow2").unwrap();
        assert_eq!(
            out,
            XML.replace("type='raw'", "type='qcow2'")
                .replace("/img/vm.raw", "/img/vm.overlay.qcow2")
        );
        let back = edit_disk_source(&out, "vda", "/img/vm.raw", "raw").unwrap();
        assert_eq!(back, XML);
        let other = edit_disk_source(XML, "vdb", "/img/a&b.qcow2", "qcow2").unwrap();
        assert!(
            other.contains("<source file=\"/img/a&amp;b.qcow2\"/>"),
            "{other}"
        );
        assert!(edit_disk_source(XML, "vdz", "/x", "raw").is_err());
    }
}
