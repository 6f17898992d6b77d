//! The libvirt engine: libvirtd does the work, with its own rights, on the domain's host.
//!
//! - Images are read and replaced through the storage-volume API. A directory no storage pool
//!   covers gets a transient directory pool for as long as the engine needs it.
//! - A commit starts the shut-off domain *paused*, from a minimal live definition
//!   (`virDomainCreateXML` with the domain's name and UUID: libvirt keeps the persistent
//!   definition as it is), runs an active block commit of the overlay into its base, waits
//!   until the job is ready, then ends it **without pivot**: the base now holds everything,
//!   the overlay stays the active layer, and nothing ever rewrites the persistent definition
//!   (a pivot would point it at the base). The domain is then destroyed and the overlay
//!   rebuilt. `AUTODESTROY` ends the paused domain if this process dies.
//! - The live definition carries a `<vmoverlay:job>` metadata element, so every monitor can
//!   tell this internal start from the user's.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use virt::connect::Connect;
use virt::domain::Domain;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::sys;

use super::ffi;
use crate::overlay::engine::Hold;
use crate::overlay::types::{CommitWrites, Probe};
use crate::overlay::{
    Engine, ImageEngine, ManagedDisk, OpError, Phase, Progress, SkipReason, Stamp,
};

/// Namespace of the metadata element that marks the engine's own paused start.
pub const JOB_NS: &str = "https://vmoverlay.github.io/xmlns/job/1";

/// What the engine's paused start is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunPurpose {
    Commit,
    /// Only to learn whether QEMU can take the image locks.
    LockProbe,
}

impl RunPurpose {
    fn word(&self) -> &'static str {
        match self {
            Self::Commit => "commit",
            Self::LockProbe => "lock-probe",
        }
    }
}

/// The engine's job marker of a running domain (`Some("commit")`, …), read from its live
/// definition; `None` for a start that is not the engine's (or a domain that is not running).
pub fn engine_run(dom: &Domain) -> Option<String> {
    let xml = dom
        .metadata(
            sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(JOB_NS),
            sys::VIR_DOMAIN_AFFECT_LIVE,
        )
        .ok()?;
    let doc = roxmltree::Document::parse(&xml).ok()?;
    Some(
        doc.root_element()
            .attribute("op")
            .unwrap_or("job")
            .to_string(),
    )
}

/// Whether `uri` reaches libvirtd on this machine (so paths in it are this machine's files).
pub fn is_local_uri(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return true; // an alias or a bare driver name: local
    };
    let transport = scheme.split_once('+').map(|(_, t)| t);
    let host = rest
        .split(['/', '?'])
        .next()
        .unwrap_or("")
        .rsplit('@')
        .next()
        .unwrap_or("");
    match transport {
        None | Some("unix") => host.is_empty() || host == "localhost",
        Some(_) => false,
    }
}

/// Escapes text for an XML attribute or element.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// A storage volume as its XML describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolInfo {
    pub path: PathBuf,
    pub format: String,
    pub capacity: u64,
    pub physical: u64,
    pub cluster_size: Option<u64>,
    pub compat: Option<String>,
    /// mode, owner, group
    pub permissions: Option<(String, String, String)>,
    pub mtime_ns: i128,
    pub backing: Option<PathBuf>,
    pub backing_format: Option<String>,
}

/// Parses `virStorageVolGetXMLDesc` output.
pub fn parse_vol(xml: &str) -> Result<VolInfo, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("volume XML: {e}"))?;
    let root = doc.root_element();
    type Node<'a, 'i> = roxmltree::Node<'a, 'i>;
    fn child<'a, 'i>(n: Node<'a, 'i>, tag: &str) -> Option<Node<'a, 'i>> {
        n.children().find(|c| c.has_tag_name(tag))
    }
    fn text(n: Option<Node>) -> Option<String> {
        n.and_then(|n| n.text()).map(|t| t.trim().to_string())
    }
    fn num(n: Option<Node>) -> Option<u64> {
        text(n).and_then(|t| t.parse::<u64>().ok())
    }
    let target = child(root, "target").ok_or("volume XML has no <target>")?;
    let perms = child(target, "permissions");
    let stamps = child(target, "timestamps");
    let mtime_ns = text(stamps.and_then(|s| child(s, "mtime")))
        .map(|t| {
            let (s, ns) = t.split_once('.').unwrap_or((&t, "0"));
            let ns = format!("{ns:0<9}");
            s.parse::<i128>().unwrap_or(0) * 1_000_000_000 + ns[..9].parse::<i128>().unwrap_or(0)
        })
        .unwrap_or(0);
    let backing = child(root, "backingStore");
    Ok(VolInfo {
        path: text(child(target, "path"))
            .ok_or("volume XML has no path")?
            .into(),
        format: child(target, "format")
            .and_then(|f| f.attribute("type"))
            .unwrap_or("raw")
            .to_string(),
        capacity: num(child(root, "capacity")).unwrap_or(0),
        physical: num(child(root, "physical"))
            .or_else(|| num(child(root, "allocation")))
            .unwrap_or(0),
        cluster_size: num(child(target, "clusterSize")),
        compat: text(child(target, "compat")),
        permissions: perms.and_then(|p| {
            Some((
                text(child(p, "mode"))?,
                text(child(p, "owner"))?,
                text(child(p, "group"))?,
            ))
        }),
        mtime_ns,
        backing: text(backing.and_then(|b| child(b, "path"))).map(PathBuf::from),
        backing_format: backing
            .and_then(|b| child(b, "format"))
            .and_then(|f| f.attribute("type"))
            .map(str::to_string),
    })
}

/// A volume as libvirtd reads it now.
fn read_vol(vol: &StorageVol) -> Result<VolInfo, String> {
    parse_vol(&vol.xml_desc(0).map_err(|e| e.message().to_string())?)
}

/// Size of an empty qcow2 overlay of `capacity` bytes: header, refcount table, one refcount
/// block, then the L1 table. Any guest write adds at least an L2 table cluster after it.
pub fn empty_qcow2_len(capacity: u64, cluster: u64) -> u64 {
    let per_l2 = cluster * (cluster / 8);
    let l1_entries = capacity.div_ceil(per_l2).max(1);
    3 * cluster + l1_entries * 8
}

/// Bytes the guest wrote to an overlay, estimated from the file's size: libvirt cannot map
/// clusters, so the L2 tables are counted too. Zero exactly when nothing was written.
pub fn estimated_changes(vol: &VolInfo) -> u64 {
    let cluster = vol.cluster_size.unwrap_or(65536);
    let empty = empty_qcow2_len(vol.capacity, cluster).next_multiple_of(cluster);
    vol.physical.saturating_sub(empty)
}

/// The libvirt engine for one domain on one connection (read-write).
pub struct LibvirtEngine {
    conn: Connect,
    domain: String,
    /// The connection reaches this machine: files readable here are the domain's files.
    local: bool,
    /// The commit's paused run, started by the last check before the write.
    prepared: std::sync::Mutex<Option<PausedRun>>,
    /// QEMU held the image locks until a moment ago (the commit's run just ended).
    locks_just_held: std::sync::atomic::AtomicBool,
}

impl LibvirtEngine {
    pub fn new(conn: Connect, uri: &str, domain: &str) -> LibvirtEngine {
        LibvirtEngine {
            conn,
            domain: domain.to_string(),
            local: is_local_uri(uri),
            prepared: Default::default(),
            locks_just_held: Default::default(),
        }
    }

    /// The read-write connection the engine works on.
    pub fn connection(&self) -> &Connect {
        &self.conn
    }

    fn msg(e: virt::error::Error) -> String {
        e.message().to_string()
    }

    /// The active pool whose target is `dir`, creating a transient one if none covers it.
    /// That pool is left in place: another process (the app inspecting, a CLI committing) may
    /// be using it at the same time, and libvirtd forgets it when it restarts.
    fn pool_for(&self, dir: &Path) -> Result<StoragePool, String> {
        let dir_s = dir.to_string_lossy();
        if let Ok(pool) = self.conn.lookup_storage_pool_by_target_path(&dir_s) {
            if !pool.is_active().unwrap_or(false) {
                let name = pool.name().unwrap_or_default();
                return Err(format!(
                    "the storage pool '{name}' of {dir_s} is not active (start it with `virsh pool-start {name}`)"
                ));
            }
            return Ok(pool);
        }
        let hash = dir_s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        let xml = format!(
            "<pool type='dir'><name>vmoverlay-{hash:016x}</name><target><path>{}</path></target></pool>",
            esc(&dir_s)
        );
        match self.conn.create_storage_pool_xml(&xml, 0) {
            Ok(pool) => {
                log::info!("created transient storage pool for {dir_s}");
                Ok(pool)
            }
            // Another process created it a moment ago.
            Err(e) => self
                .conn
                .lookup_storage_pool_by_target_path(&dir_s)
                .map_err(|_| {
                    format!(
                        "no storage pool covers {dir_s}, and creating one failed: {}",
                        e.message()
                    )
                }),
        }
    }

    /// The volume at `path`. Reading a volume's XML makes libvirtd re-read its file, so the
    /// whole directory is only rescanned (a pool refresh probes every image in it) when the
    /// pool does not know the file yet, or no longer finds it.
    fn volume(&self, path: &Path) -> Result<(StoragePool, StorageVol, VolInfo), String> {
        let dir = path.parent().ok_or("an image path has no directory")?;
        let pool = self.pool_for(dir)?;
        let lookup = || {
            let vol = self
                .conn
                .lookup_storage_vol_by_path(&path.to_string_lossy())
                .map_err(|e| format!("{}: {}", path.display(), e.message()))?;
            let info = read_vol(&vol)?;
            Ok::<_, String>((vol, info))
        };
        let (vol, info) = match lookup() {
            Ok(found) => found,
            Err(_) => {
                pool.refresh(0).map_err(Self::msg)?;
                lookup()?
            }
        };
        Ok((pool, vol, info))
    }

    /// The backing file of the image at `path`, as libvirtd reads it.
    pub fn backing_of(&self, path: &Path) -> Option<PathBuf> {
        self.volume(path).ok()?.2.backing
    }

    fn domain(&self) -> Result<Domain, String> {
        self.conn
            .lookup_domain_by_name(&self.domain)
            .map_err(|e| format!("domain '{}': {}", self.domain, e.message()))
    }

    /// The live definition of the engine's paused start: the domain's name, UUID, type,
    /// machine and emulator, the one disk, and nothing else (no network, no display).
    fn live_xml(&self, disk: &ManagedDisk, purpose: RunPurpose) -> Result<String, String> {
        let xml = self
            .domain()?
            .xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
            .map_err(Self::msg)?;
        let doc = roxmltree::Document::parse(&xml).map_err(|e| format!("domain XML: {e}"))?;
        let root = doc.root_element();
        let find = |tag: &str| root.descendants().find(|n| n.has_tag_name(tag));
        let text = |tag: &str| {
            find(tag)
                .and_then(|n| n.text())
                .unwrap_or("")
                .trim()
                .to_string()
        };
        let os_type = find("os").and_then(|os| os.children().find(|c| c.has_tag_name("type")));
        let mut os_attrs = String::new();
        for a in ["arch", "machine"] {
            if let Some(v) = os_type.and_then(|t| t.attribute(a)) {
                os_attrs += &format!(" {a}='{}'", esc(v));
            }
        }
        let bus = root
            .descendants()
            .filter(|n| n.has_tag_name("disk"))
            .filter_map(|d| d.children().find(|c| c.has_tag_name("target")))
            .find(|t| t.attribute("dev") == Some(disk.target.as_str()))
            .and_then(|t| t.attribute("bus"))
            .unwrap_or("virtio");
        let emulator = match text("emulator") {
            e if e.is_empty() => String::new(),
            e => format!("<emulator>{}</emulator>", esc(&e)),
        };
        Ok(format!(
            "<domain type='{kind}'>\
               <name>{name}</name><uuid>{uuid}</uuid>\
               <metadata><vmoverlay:job xmlns:vmoverlay='{ns}' op='{op}' disk='{target}'/></metadata>\
               <memory unit='MiB'>64</memory><vcpu>1</vcpu>\
               <os><type{os_attrs}>{os}</type></os>\
               <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>\
               <devices>{emulator}\
                 <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
                   <source file='{overlay}'/><target dev='{target}' bus='{bus}'/></disk>\
               </devices>\
             </domain>",
            kind = esc(root.attribute("type").unwrap_or("qemu")),
            name = esc(&text("name")),
            uuid = esc(&text("uuid")),
            ns = JOB_NS,
            op = purpose.word(),
            target = esc(&disk.target),
            os = esc(os_type.and_then(|t| t.text()).unwrap_or("hvm")),
            overlay = esc(&disk.overlay.to_string_lossy()),
            bus = esc(bus),
        ))
    }

    /// Starts the domain paused from [`Self::live_xml`]; the guard destroys it when dropped.
    fn start_paused(&self, disk: &ManagedDisk, purpose: RunPurpose) -> Result<PausedRun, String> {
        let xml = self.live_xml(disk, purpose)?;
        let flags = sys::VIR_DOMAIN_START_PAUSED | sys::VIR_DOMAIN_START_AUTODESTROY;
        let dom = self
            .conn
            .create_domain_xml(&xml, flags)
            .map_err(Self::msg)?;
        log::debug!("{}: paused run for {} started", self.domain, purpose.word());
        Ok(PausedRun { dom })
    }
}

/// The engine's paused domain; destroyed on drop, gracefully first so QEMU flushes the images.
struct PausedRun {
    dom: Domain,
}

impl PausedRun {
    fn end(&self) -> Result<(), String> {
        log::debug!("ending the paused run");
        match self.dom.destroy_flags(sys::VIR_DOMAIN_DESTROY_GRACEFUL) {
            Ok(()) => Ok(()),
            Err(_) if !self.dom.is_active().unwrap_or(false) => Ok(()),
            Err(e) => {
                log::warn!("graceful end of the paused run failed: {}", e.message());
                self.dom.destroy().map_err(|e| e.message().to_string())
            }
        }
    }
}

impl Drop for PausedRun {
    fn drop(&mut self) {
        if self.dom.is_active().unwrap_or(false) {
            if let Err(e) = self.end() {
                log::error!("could not end the engine's paused domain: {e}");
            }
        }
    }
}

fn is_lock_error(msg: &str) -> bool {
    msg.contains("lock")
}

/// Block-job event statuses (`virConnectDomainEventBlockJobStatus`).
const JOB_COMPLETED: i32 = 0;
const JOB_FAILED: i32 = 1;
const JOB_CANCELED: i32 = 2;
const JOB_READY: i32 = 3;

impl ImageEngine for LibvirtEngine {
    fn kind(&self) -> Engine {
        Engine::Libvirt
    }

    fn inspect(&self, target: &str, overlay: &Path) -> Result<ManagedDisk, SkipReason> {
        let path = overlay.to_path_buf();
        let (_, _, vol) = self
            .volume(overlay)
            .map_err(|detail| SkipReason::Unreadable {
                path: path.clone(),
                detail,
            })?;
        if vol.path != overlay {
            return Err(SkipReason::Symlink { path });
        }
        if vol.format != "qcow2" {
            return Err(SkipReason::NotQcow2 {
                path,
                format: vol.format,
            });
        }
        let base = vol
            .backing
            .clone()
            .ok_or(SkipReason::NoBackingFile { path: path.clone() })?;
        let (_, _, base_vol) = self.volume(&base).map_err(|_| SkipReason::BaseMissing {
            path: path.clone(),
            base: base.display().to_string(),
        })?;
        Ok(ManagedDisk {
            target: target.to_string(),
            overlay: overlay.to_path_buf(),
            backing_ref: base.to_string_lossy().into_owned(),
            base,
            base_format: vol.backing_format.clone().unwrap_or(base_vol.format),
            virtual_size: vol.capacity,
            cluster_size: vol.cluster_size,
            engine: Engine::Libvirt,
        })
    }

    fn changed_bytes(&self, disk: &ManagedDisk) -> Result<u64, SkipReason> {
        let (_, _, vol) = self
            .volume(&disk.overlay)
            .map_err(|detail| SkipReason::Unreadable {
                path: disk.overlay.clone(),
                detail,
            })?;
        Ok(estimated_changes(&vol))
    }

    fn ensure_nothing_inside(&self, disk: &ManagedDisk, commit: bool) -> Result<(), OpError> {
        // The volume API shows neither internal snapshots nor bitmaps. Where the files are
        // readable here, read them; elsewhere libvirt's own snapshots and checkpoints (asked
        // by the domain check) are what can be known.
        let readable = [&disk.overlay, &disk.base]
            .iter()
            .all(|p| std::fs::File::open(p).is_ok());
        if self.local && readable {
            return crate::overlay::qemu_img::ensure_nothing_inside(disk, commit);
        }
        Ok(())
    }

    fn ensure_unlocked(&self, disk: &ManagedDisk, base_too: bool) -> Result<(), OpError> {
        // Where this process can open the images, ask the kernel about QEMU's locks; else
        // the check waits for `prepare_write`, where QEMU itself is asked.
        let mut paths = vec![disk.overlay.as_path()];
        if base_too {
            paths.push(&disk.base);
        }
        if self.local && paths.iter().all(|p| std::fs::File::open(p).is_ok()) {
            return crate::overlay::image::ensure_unlocked(&paths);
        }
        Ok(())
    }

    fn prepare_write(&self, disk: &ManagedDisk, phase: Phase) -> Result<(), OpError> {
        self.ensure_unlocked(disk, phase == Phase::Committing)?;
        let purpose = match phase {
            // The commit's own run: QEMU takes the locks of the whole chain, or fails.
            Phase::Committing => RunPurpose::Commit,
            // Our commit's QEMU held them until a moment ago.
            Phase::Rebuilding if self.locks_just_held.swap(false, Ordering::SeqCst) => {
                return Ok(())
            }
            // An interrupted rebuild: no overlay, nothing to hold.
            Phase::Rebuilding if self.volume(&disk.overlay).is_err() => return Ok(()),
            Phase::Rebuilding => RunPurpose::LockProbe,
        };
        let run = match self.start_paused(disk, purpose) {
            Ok(run) => run,
            Err(msg) if is_lock_error(&msg) => {
                return Err(OpError::Locked {
                    path: disk.overlay.clone(),
                })
            }
            Err(msg) if msg.contains("already active") => {
                return Err(OpError::DomainActive {
                    domain: self.domain.clone(),
                    state: "running".into(),
                })
            }
            Err(what) => return Err(OpError::NotFound { what }),
        };
        match purpose {
            RunPurpose::Commit => {
                *self.prepared.lock().unwrap_or_else(|p| p.into_inner()) = Some(run)
            }
            RunPurpose::LockProbe => run.end().map_err(|what| OpError::NotFound { what })?,
        }
        Ok(())
    }

    fn ensure_writable(&self, _disk: &ManagedDisk, _base_too: bool) -> Result<(), OpError> {
        Ok(()) // libvirtd writes with its own rights; a refusal surfaces as a failed start
    }

    fn other_overlays(&self, disk: &ManagedDisk) -> Vec<String> {
        let mut dirs = vec![disk.overlay.parent(), disk.base.parent()];
        dirs.dedup();
        let mut out = Vec::new();
        for dir in dirs.into_iter().flatten() {
            let Ok(pool) = self.pool_for(dir) else {
                continue;
            };
            let _ = pool.refresh(0);
            for vol in pool.list_all_volumes(0).unwrap_or_default() {
                let Ok(info) = read_vol(&vol) else {
                    continue;
                };
                if info.path != disk.overlay && info.backing.as_deref() == Some(disk.base.as_path())
                {
                    out.push(info.path.display().to_string());
                }
            }
        }
        out
    }

    fn free_space(&self, disk: &ManagedDisk) -> Result<u64, String> {
        let (pool, _, _) = self.volume(&disk.base)?;
        Ok(pool.info().map_err(Self::msg)?.available)
    }

    /// libvirtd's block commit always writes in QEMU's order (`writes` is not used).
    fn commit(
        &self,
        disk: &ManagedDisk,
        _writes: CommitWrites,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), String> {
        let prepared = self
            .prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let run = match prepared {
            Some(run) => run,
            None => self
                .start_paused(disk, RunPurpose::Commit)
                .map_err(|e| format!("starting {} paused for the commit: {e}", self.domain))?,
        };
        let (tx, rx) = mpsc::channel();
        let target = disk.target.clone();
        let _events = ffi::register_block_job(&self.conn, &run.dom, move |ev| {
            if ev.disk == target
                && ev.job_type == sys::VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT as i32
            {
                let _ = tx.send(ev.status);
            }
        })
        .map_err(Self::msg)?;
        log::debug!("{}: block commit of {} starts", self.domain, disk.target);
        ffi::block_commit(
            &run.dom,
            &disk.target,
            &disk.base.to_string_lossy(),
            sys::VIR_DOMAIN_BLOCK_COMMIT_ACTIVE,
        )?;
        // Events arrive where glib's default context runs (the app, `watch`); the job info
        // gives the progress, and readiness where nobody runs that loop. It is asked often at
        // first (a small commit is ready within milliseconds), then every 200 ms.
        let mut wait = Duration::from_millis(5);
        loop {
            let waited = rx.recv_timeout(wait);
            wait = (wait * 2).min(Duration::from_millis(200));
            match waited {
                Ok(JOB_READY) => break,
                Ok(status @ (JOB_COMPLETED | JOB_FAILED | JOB_CANCELED)) => {
                    return Err(format!(
                        "the block commit ended before it was ready ({})",
                        match status {
                            JOB_FAILED => "failed",
                            JOB_CANCELED => "canceled",
                            _ => "completed",
                        }
                    ))
                }
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            match ffi::block_job_info(&run.dom, &disk.target) {
                Ok(Some((cur, end))) if end > 0 => {
                    progress(Progress::Committing(cur as f64 / end as f64));
                    if cur == end {
                        break;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err("the block commit job disappeared".into()),
                Err(e) => return Err(format!("the domain's QEMU stopped during the commit: {e}")),
            }
        }
        progress(Progress::Committing(1.0));
        log::debug!("{}: block commit of {} ready", self.domain, disk.target);
        // Ready: the base holds every cluster of the overlay. End the job without pivot, so
        // the overlay stays the active layer and no definition is rewritten.
        ffi::block_job_abort(&run.dom, &disk.target, 0)?;
        run.end()?;
        self.locks_just_held.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn check_base(&self, disk: &ManagedDisk) -> Result<(), String> {
        // No qemu-img on the domain's host through libvirt; the base must still read as an
        // image of its format.
        let (_, _, vol) = self.volume(&disk.base)?;
        if vol.format != disk.base_format {
            return Err(format!(
                "the base {} now reads as {}, not {}",
                disk.base.display(),
                vol.format,
                disk.base_format
            ));
        }
        Ok(())
    }

    fn stamp(&self, disk: &ManagedDisk) -> Option<Stamp> {
        let (_, _, vol) = self.volume(&disk.overlay).ok()?;
        Some(Stamp {
            len: vol.physical,
            mtime_ns: vol.mtime_ns,
        })
    }

    fn rebuild(&self, disk: &ManagedDisk) -> Result<(), String> {
        let dir = disk
            .overlay
            .parent()
            .ok_or("the overlay has no directory")?;
        let pool = self.pool_for(dir)?;
        pool.refresh(0).map_err(Self::msg)?;
        let old = self
            .conn
            .lookup_storage_vol_by_path(&disk.overlay.to_string_lossy())
            .ok()
            .map(|v| read_vol(&v).map(|i| (v, i)))
            .transpose()?;
        let name = disk
            .overlay
            .file_name()
            .ok_or("the overlay has no file name")?
            .to_string_lossy()
            .into_owned();
        let mut target = String::from("<format type='qcow2'/>");
        if let Some((_, info)) = &old {
            if let Some((mode, owner, group)) = &info.permissions {
                target += &format!(
                    "<permissions><mode>{}</mode><owner>{}</owner><group>{}</group></permissions>",
                    esc(mode),
                    esc(owner),
                    esc(group)
                );
            }
            if let Some(compat) = &info.compat {
                target += &format!("<compat>{}</compat>", esc(compat));
            }
        }
        if let Some(cs) = disk.cluster_size {
            target += &format!("<clusterSize unit='B'>{cs}</clusterSize>");
        }
        let xml = format!(
            "<volume type='file'><name>{}</name>\
               <capacity unit='bytes'>{}</capacity><allocation unit='bytes'>0</allocation>\
               <target>{target}</target>\
               <backingStore><path>{}</path><format type='{}'/></backingStore>\
             </volume>",
            esc(&name),
            disk.virtual_size,
            esc(&disk.base.to_string_lossy()),
            esc(&disk.base_format),
        );
        // Where the overlay is readable here, QEMU's locks on it are held until it is gone:
        // a guest started meanwhile fails to start instead of writing into it.
        let _held = if self.local && std::fs::File::open(&disk.overlay).is_ok() {
            Some(crate::overlay::image::hold_qemu_locks(&disk.overlay).map_err(|e| e.to_string())?)
        } else {
            None
        };
        crate::overlay::image::test_pause_before_replace(&disk.overlay);
        // No rename in the volume API: delete, then create. The journal's rebuild phase
        // covers the moment in between (a resume creates the missing overlay).
        if let Some((vol, _)) = old {
            vol.delete(0)
                .map_err(|e| format!("deleting the old overlay: {}", e.message()))?;
        }
        StorageVol::create_xml(&pool, &xml, 0)
            .map(|_| ())
            .map_err(|e| format!("creating the new overlay: {}", e.message()))
    }

    fn probe(&self, path: &Path) -> Result<Probe, SkipReason> {
        let (_, _, vol) = self.volume(path).map_err(|detail| SkipReason::Unreadable {
            path: path.to_path_buf(),
            detail,
        })?;
        // The volume API shows neither internal snapshots nor bitmaps; read them where the
        // file is readable here.
        let inside = if self.local && std::fs::File::open(path).is_ok() {
            crate::overlay::qemu_img::probe(path).ok()
        } else {
            None
        };
        Ok(Probe {
            format: vol.format,
            virtual_size: vol.capacity,
            backing: vol.backing.map(|b| b.display().to_string()),
            snapshots: inside
                .as_ref()
                .map(|p| p.snapshots.clone())
                .unwrap_or_default(),
            bitmaps: inside.map(|p| p.bitmaps).unwrap_or_default(),
        })
    }

    fn exists(&self, path: &Path) -> bool {
        self.volume(path).is_ok()
    }

    fn ensure_can_create(&self, image: &Path) -> Result<(), OpError> {
        // libvirtd creates the file with its own rights; its pool must exist or be creatable.
        let dir = image.parent().unwrap_or(Path::new("/"));
        self.pool_for(dir)
            .map(|_| ())
            .map_err(|reason| OpError::NotWritable {
                what: format!("the directory {}", dir.display()),
                reason,
            })
    }

    fn create_overlay(
        &self,
        base: &Path,
        base_format: &str,
        virtual_size: u64,
        overlay: &Path,
    ) -> Result<(), String> {
        let dir = overlay.parent().ok_or("the overlay has no directory")?;
        let pool = self.pool_for(dir)?;
        let (_, _, base_vol) = self.volume(base)?;
        let name = overlay
            .file_name()
            .ok_or("the overlay has no file name")?
            .to_string_lossy()
            .into_owned();
        let mut target = String::from("<format type='qcow2'/>");
        if let Some((mode, owner, group)) = &base_vol.permissions {
            target += &format!(
                "<permissions><mode>{}</mode><owner>{}</owner><group>{}</group></permissions>",
                esc(mode),
                esc(owner),
                esc(group)
            );
        }
        let xml = format!(
            "<volume type='file'><name>{}</name>\
               <capacity unit='bytes'>{virtual_size}</capacity><allocation unit='bytes'>0</allocation>\
               <target>{target}</target>\
               <backingStore><path>{}</path><format type='{}'/></backingStore>\
             </volume>",
            esc(&name),
            esc(&base.to_string_lossy()),
            esc(base_format),
        );
        // The volume API refuses a name that exists: nothing is ever replaced.
        StorageVol::create_xml(&pool, &xml, 0)
            .map(|_| ())
            .map_err(|e| format!("creating {}: {}", overlay.display(), e.message()))
    }

    fn remove_image(&self, path: &Path) -> Result<(), String> {
        let (_, vol, _) = self.volume(path)?;
        vol.delete(0)
            .map_err(|e| format!("deleting {}: {}", path.display(), e.message()))
    }

    fn hold(&self, path: &Path) -> Result<Hold, OpError> {
        if self.local && std::fs::File::open(path).is_ok() {
            return crate::overlay::image::hold_qemu_locks(path).map(|l| Hold(Some(l)));
        }
        Ok(Hold(None))
    }

    fn clean_up_interrupted(&self) -> Result<(), OpError> {
        let Ok(dom) = self.domain() else {
            return Ok(());
        };
        if dom.is_active().unwrap_or(false) && engine_run(&dom).is_some() {
            log::info!(
                "{}: ending the paused run an interrupted operation left",
                self.domain
            );
            PausedRun { dom }
                .end()
                .map_err(|what| OpError::NotFound { what })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_and_remote_uris() {
        for uri in [
            "qemu:///system",
            "qemu:///session",
            "qemu+unix:///system?socket=/run/x/libvirt-sock",
            "test:///default",
            "qemu://localhost/system",
        ] {
            assert!(is_local_uri(uri), "{uri}");
        }
        for uri in [
            "qemu+ssh://root@host/system",
            "qemu+tcp://10.0.0.2/system",
            "qemu+tls://host.example/system",
            "qemu://host.example/system",
        ] {
            assert!(!is_local_uri(uri), "{uri}");
        }
    }

    #[test]
    fn empty_overlay_length_matches_qemu_img() {
        // `qemu-img create -f qcow2 -b … 64M` writes 196 616 bytes (one L1 entry).
        assert_eq!(empty_qcow2_len(64 << 20, 65536), 196_616);
        // 1 TiB with 64 KiB clusters: 2 048 L1 entries.
        assert_eq!(empty_qcow2_len(1 << 40, 65536), 3 * 65536 + 2048 * 8);
    }

    #[test]
    fn volume_xml_parses() {
        let xml = "<volume type='file'><name>ov.qcow2</name>\
            <capacity unit='bytes'>67108864</capacity><allocation unit='bytes'>2363392</allocation>\
            <physical unit='bytes'>2424832</physical><target><path>/i/ov.qcow2</path>\
            <format type='qcow2'/><permissions><mode>0600</mode><owner>0</owner><group>0</group>\
            </permissions><timestamps><mtime>1795326594.3009</mtime></timestamps>\
            <compat>1.1</compat><clusterSize unit='B'>65536</clusterSize></target>\
            <backingStore><path>/i/base.qcow2</path><format type='qcow2'/></backingStore></volume>";
        let v = parse_vol(xml).unwrap();
        assert_eq!(v.path, PathBuf::from("/i/ov.qcow2"));
        assert_eq!((v.capacity, v.physical), (64 << 20, 2_424_832));
        assert_eq!(v.cluster_size, Some(65536));
        assert_eq!(v.compat.as_deref(), Some("1.1"));
        assert_eq!(v.backing, Some(PathBuf::from("/i/base.qcow2")));
        assert_eq!(v.mtime_ns, 1_795_326_594_300_900_000);
        assert_eq!(v.permissions, Some(("0600".into(), "0".into(), "0".into())));
        assert_eq!(estimated_changes(&v), 2_424_832 - 4 * 65536);
        let empty = VolInfo {
            physical: 196_616,
            ..v
        };
        assert_eq!(estimated_changes(&empty), 0);
    }
}
