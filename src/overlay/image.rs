//! Reading image files: their backing chain and the bytes an overlay holds (read in Rust, see
//! [`qcow2`]), QEMU's image locks, free space, and a qcow2 header's backing reference. Nothing
//! here writes. Paths are passed to qemu-img (for formats other than qcow2 and raw) as
//! arguments, never through a shell.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use super::error::{OpError, SkipReason};
use super::qcow2;

/// One layer of `qemu-img info --backing-chain --output=json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Layer {
    pub filename: String,
    pub format: String,
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    #[serde(rename = "cluster-size")]
    pub cluster_size: Option<u64>,
    /// The backing reference exactly as written in the image header (may be relative).
    #[serde(rename = "backing-filename")]
    pub backing_filename: Option<String>,
    #[serde(rename = "full-backing-filename")]
    pub full_backing_filename: Option<String>,
    #[serde(rename = "backing-filename-format")]
    pub backing_format: Option<String>,
    /// Internal snapshots stored in the image.
    #[serde(default)]
    pub snapshots: Vec<InternalSnapshot>,
    #[serde(rename = "format-specific")]
    pub format_specific: Option<FormatSpecific>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InternalSnapshot {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FormatSpecific {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub data: Qcow2Specific,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Qcow2Specific {
    #[serde(default)]
    pub bitmaps: Vec<Bitmap>,
    #[serde(rename = "data-file")]
    pub data_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Bitmap {
    pub name: String,
}

impl Layer {
    /// Names of the persistent dirty bitmaps stored in this image.
    pub fn bitmap_names(&self) -> Vec<String> {
        self.format_specific
            .iter()
            .filter(|f| f.kind == "qcow2")
            .flat_map(|f| f.data.bitmaps.iter().map(|b| b.name.clone()))
            .collect()
    }

    /// The external data file of a qcow2 image, if it has one.
    pub fn data_file(&self) -> Option<String> {
        self.format_specific
            .as_ref()
            .filter(|f| f.kind == "qcow2")
            .and_then(|f| f.data.data_file.clone())
    }

    pub fn snapshot_names(&self) -> Vec<String> {
        self.snapshots.iter().map(|s| s.name.clone()).collect()
    }
}

pub fn qemu_img() -> Command {
    let mut c = Command::new("qemu-img");
    // qemu-img's messages are read by us, not by a person: keep them in English.
    c.env("LC_ALL", "C");
    c
}

/// The image at `path` could not be read; `detail` is the tool's own message.
fn unreadable(path: &Path, detail: impl std::fmt::Display) -> SkipReason {
    SkipReason::Unreadable {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

fn tool_message(out: &std::process::Output) -> String {
    let msg = String::from_utf8_lossy(&out.stderr);
    msg.trim().trim_start_matches("qemu-img: ").to_string()
}

/// The backing chain of `path`, top first, read without taking locks and without spawning
/// anything: qcow2 and raw layers are read in Rust ([`qcow2`]). Only a chain with a layer in
/// another format (vmdk, vdi, ...) or a backing reference that is not a local file (`nbd:`,
/// `json:`) is left to `qemu-img info --backing-chain -U`.
pub fn backing_chain(path: &Path) -> Result<Vec<Layer>, SkipReason> {
    match read_chain(path) {
        Ok(chain) => Ok(chain),
        Err(ChainError::Foreign) => backing_chain_qemu_img(path),
        Err(ChainError::Skip(reason)) => Err(reason),
    }
}

enum ChainError {
    /// Something only qemu-img reads.
    Foreign,
    Skip(SkipReason),
}

impl From<SkipReason> for ChainError {
    fn from(r: SkipReason) -> Self {
        ChainError::Skip(r)
    }
}

/// More layers than this is a loop we could not see (a file replaced while we read).
const MAX_CHAIN: usize = 1000;

fn read_chain(path: &Path) -> Result<Vec<Layer>, ChainError> {
    use std::os::unix::fs::MetadataExt;
    let mut layers: Vec<Layer> = Vec::new();
    let mut seen: Vec<(u64, u64)> = Vec::new();
    let mut name = path.display().to_string();
    // The format the layer above names for this one; probed when it names none.
    let mut format: Option<String> = None;
    loop {
        let file = match std::fs::File::open(&name) {
            Ok(f) => f,
            Err(e) => {
                return Err(match layers.last() {
                    Some(above) if e.kind() == std::io::ErrorKind::NotFound => {
                        SkipReason::BaseMissing {
                            path: PathBuf::from(&above.filename),
                            base: name,
                        }
                    }
                    _ => unreadable(path, format!("could not open '{name}': {e}")),
                }
                .into())
            }
        };
        let meta = file
            .metadata()
            .map_err(|e| unreadable(Path::new(&name), e))?;
        let id = (meta.dev(), meta.ino());
        if seen.contains(&id) || layers.len() >= MAX_CHAIN {
            return Err(unreadable(
                path,
                format!("backing file loop: {name} is already in the backing chain"),
            )
            .into());
        }
        seen.push(id);
        let kind = match format.as_deref() {
            Some(f @ ("qcow2" | "raw")) => f,
            Some(_) => return Err(ChainError::Foreign),
            None => qcow2::probe(&file).map_err(|e| unreadable(Path::new(&name), e))?,
        };
        let layer = match kind {
            "qcow2" => qcow2_layer(file, &name)?,
            "raw" => raw_layer(&meta, &name),
            _ => return Err(ChainError::Foreign),
        };
        let next = layer.full_backing_filename.clone();
        format = layer.backing_format.clone();
        layers.push(layer);
        match next {
            None => return Ok(layers),
            Some(next) if has_protocol(&next) => return Err(ChainError::Foreign),
            Some(next) => name = next,
        }
    }
}

fn raw_layer(meta: &std::fs::Metadata, name: &str) -> Layer {
    Layer {
        filename: name.to_string(),
        format: "raw".into(),
        // QEMU sees whole 512-byte sectors.
        virtual_size: meta.len().div_ceil(512) * 512,
        cluster_size: None,
        backing_filename: None,
        full_backing_filename: None,
        backing_format: None,
        snapshots: Vec::new(),
        format_specific: None,
    }
}

/// One image on its own, its backing file not opened (`qemu-img info -U` without
/// `--backing-chain`): read in Rust for qcow2 and raw, by qemu-img for other formats.
pub fn image_layer(path: &Path) -> Result<Layer, SkipReason> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| unreadable(path, e))?;
    let meta = file.metadata().map_err(|e| unreadable(path, e))?;
    let layer = match qcow2::probe(&file).map_err(|e| unreadable(path, e))? {
        "qcow2" => qcow2_layer(file, &name),
        "raw" => Ok(raw_layer(&meta, &name)),
        _ => Err(ChainError::Foreign),
    };
    match layer {
        Ok(l) => Ok(l),
        Err(ChainError::Skip(r)) => Err(r),
        Err(ChainError::Foreign) => {
            let out = qemu_img()
                .args(["info", "--output=json", "-U"])
                .arg(path)
                .output()
                .map_err(|e| unreadable(path, format!("cannot run qemu-img: {e}")))?;
            if !out.status.success() {
                return Err(unreadable(path, tool_message(&out)));
            }
            serde_json::from_slice(&out.stdout)
                .map_err(|e| unreadable(path, format!("qemu-img info output: {e}")))
        }
    }
}

fn qcow2_layer(file: std::fs::File, name: &str) -> Result<Layer, ChainError> {
    let img = qcow2::Image::from_file(file).map_err(|e| unreadable(Path::new(name), e))?;
    let full = img
        .backing_file
        .as_deref()
        .map(|b| full_backing_filename(name, b));
    Ok(Layer {
        filename: name.to_string(),
        format: "qcow2".into(),
        virtual_size: img.virtual_size(),
        cluster_size: Some(img.cluster_size()),
        backing_filename: img.backing_file.clone(),
        full_backing_filename: full,
        backing_format: img.backing_format.clone(),
        snapshots: img
            .snapshots
            .iter()
            .map(|s| InternalSnapshot {
                name: s.name.clone(),
            })
            .collect(),
        format_specific: Some(FormatSpecific {
            kind: "qcow2".into(),
            data: Qcow2Specific {
                bitmaps: img
                    .bitmaps
                    .iter()
                    .map(|b| Bitmap {
                        name: b.name.clone(),
                    })
                    .collect(),
                data_file: img.data_file.clone(),
            },
        }),
    })
}

/// QEMU's `path_has_protocol`: `nbd:...`, `json:{...}`, `file:...` (a colon before any slash).
fn has_protocol(name: &str) -> bool {
    name.find(':')
        .is_some_and(|c| !name[..c].contains('/') && c > 0)
}

/// QEMU's `path_combine`: an absolute reference as it is; a relative one from the directory
/// of the image that names it, textually (no symlinks resolved, no `..` folded).
pub fn full_backing_filename(image: &str, backing: &str) -> String {
    if backing.starts_with('/') || backing.is_empty() {
        return backing.to_string();
    }
    match image.rfind('/') {
        Some(i) => format!("{}{backing}", &image[..=i]),
        None => backing.to_string(),
    }
}

/// The chain as `qemu-img info --backing-chain --output=json -U` reports it.
fn backing_chain_qemu_img(path: &Path) -> Result<Vec<Layer>, SkipReason> {
    let out = qemu_img()
        .args(["info", "--backing-chain", "--output=json", "-U"])
        .arg(path)
        .output()
        .map_err(|e| unreadable(path, format!("cannot run qemu-img: {e}")))?;
    if !out.status.success() {
        return Err(unreadable(path, tool_message(&out)));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| unreadable(path, format!("qemu-img info output: {e}")))
}

/// Bytes the overlay itself holds (written or zeroed by the guest): what a commit would
/// move into the base, and what a discard would throw away. Read from the overlay's L2
/// tables: the same sum as `qemu-img map`'s `depth 0, present: true` entries.
pub fn changed_bytes(overlay: &Path) -> Result<u64, SkipReason> {
    qcow2::Image::open(overlay)
        .and_then(|img| img.allocated_bytes())
        .map_err(|e| unreadable(overlay, e))
}

/// QEMU locks bytes 100.. (permissions held) and 200.. (permissions refused to others) of an
/// open image with OFD locks; any lock in that range means a QEMU process (a guest, qemu-img,
/// qemu-io, qemu-nbd) has the image open.
const QEMU_LOCK_RANGE: (i64, i64) = (100, 200 + 64);

/// Is `path` open in a QEMU process? Probes with `F_OFD_GETLK`, which takes no lock itself.
pub fn is_locked(path: &Path) -> Result<bool, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut probe = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: QEMU_LOCK_RANGE.0,
        l_len: QEMU_LOCK_RANGE.1 - QEMU_LOCK_RANGE.0,
        l_pid: 0,
    };
    nix::fcntl::fcntl(
        file.as_raw_fd(),
        nix::fcntl::FcntlArg::F_OFD_GETLK(&mut probe),
    )
    .map_err(|e| format!("{}: cannot probe locks: {e}", path.display()))?;
    Ok(probe.l_type != libc::F_UNLCK as libc::c_short)
}

/// QEMU's own image locks, held by this process: shared locks on the bytes QEMU locks, as
/// QEMU itself takes them. While they are held, a QEMU that opens the image (a guest being
/// started) fails cleanly with "Failed to get "write" lock" instead of running on a file about
/// to be replaced. Released when dropped (the file is closed).
#[derive(Debug)]
pub struct QemuLocks {
    _file: std::fs::File,
}

/// Takes QEMU's locks on `path`, then makes sure nobody else holds any (locks of this open
/// file never conflict with the probe, so whoever held them before is seen, and whoever comes
/// after is refused by QEMU).
pub fn hold_qemu_locks(path: &Path) -> Result<QemuLocks, OpError> {
    let file = std::fs::File::open(path).map_err(|e| OpError::NotFound {
        what: format!("{}: {e}", path.display()),
    })?;
    let lock = libc::flock {
        l_type: libc::F_RDLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: QEMU_LOCK_RANGE.0,
        l_len: QEMU_LOCK_RANGE.1 - QEMU_LOCK_RANGE.0,
        l_pid: 0,
    };
    nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_OFD_SETLK(&lock)).map_err(
        |_| OpError::Locked {
            path: path.to_path_buf(),
        },
    )?;
    let mut probe = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        ..lock
    };
    nix::fcntl::fcntl(
        file.as_raw_fd(),
        nix::fcntl::FcntlArg::F_OFD_GETLK(&mut probe),
    )
    .map_err(|e| OpError::NotFound {
        what: format!("{}: cannot probe locks: {e}", path.display()),
    })?;
    if probe.l_type != libc::F_UNLCK as libc::c_short {
        return Err(OpError::Locked {
            path: path.to_path_buf(),
        });
    }
    Ok(QemuLocks { _file: file })
}

/// Tests only (`VMOVERLAY_TEST_PAUSE_BEFORE_REPLACE=FILE`): with QEMU's locks held and the new
/// overlay ready, says so on the test hook and waits until FILE exists, so a test can start
/// the guest at exactly that moment.
pub fn test_pause_before_replace(overlay: &Path) {
    let Some(go) = std::env::var_os("VMOVERLAY_TEST_PAUSE_BEFORE_REPLACE") else {
        return;
    };
    crate::hook::emit_global("before-replace", serde_json::json!({ "overlay": overlay }));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !Path::new(&go).exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Free bytes for an unprivileged writer on the filesystem holding `path`.
pub fn free_space(path: &Path) -> Result<u64, String> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| format!("{}: {e}", path.display()))?;
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

pub fn is_writable(path: &Path) -> Result<(), String> {
    nix::unistd::access(path, nix::unistd::AccessFlags::W_OK)
        .map_err(|e| format!("{}: {}", path.display(), e.desc()))
}

/// Makes `p` absolute against the current directory without resolving symlinks.
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The same file, or (for images this process cannot see) the same path. Canonical paths,
/// so symlinks and `..` do not hide a match.
pub fn same_path(a: &Path, b: &Path) -> bool {
    a == b || same_file(a, b)
}

pub fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Reads the backing file reference from a qcow2 header, without qemu-img (fast enough to scan
/// a directory). `None` for files that are not qcow2 or have no backing file.
pub fn qcow2_backing(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let mut hdr = [0u8; 20];
    f.read_exact(&mut hdr).ok()?;
    if &hdr[0..4] != b"QFI\xfb" {
        return None;
    }
    let offset = u64::from_be_bytes(hdr[8..16].try_into().ok()?);
    let size = u32::from_be_bytes(hdr[16..20].try_into().ok()?) as usize;
    if offset == 0 || size == 0 || size > 4096 {
        return None;
    }
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut name = vec![0u8; size];
    f.read_exact(&mut name).ok()?;
    String::from_utf8(name).ok()
}

/// Other qcow2 images in `dir` whose backing file is `base` (they would be corrupted by a
/// commit into it). `except` is the overlay being operated on.
pub fn other_overlays_of(dir: &Path, base: &Path, except: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && !same_file(p, except) && !same_file(p, base))
        // A new overlay VM Overlay left half-made (`.NAME.vmoverlay-new`, killed before its
        // rename) is no user of the base: the next rebuild replaces it.
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(".vmoverlay-new"))
        })
        .filter(|p| {
            qcow2_backing(p).is_some_and(|r| {
                let r = Path::new(&r);
                let resolved = if r.is_absolute() {
                    r.to_path_buf()
                } else {
                    p.parent().unwrap_or(Path::new("/")).join(r)
                };
                same_file(&resolved, base)
            })
        })
        .collect()
}

/// `OpError::Locked` if either image is open elsewhere.
pub fn ensure_unlocked(paths: &[&Path]) -> Result<(), OpError> {
    for p in paths {
        match is_locked(p) {
            Ok(false) => {}
            Ok(true) => {
                return Err(OpError::Locked {
                    path: p.to_path_buf(),
                })
            }
            Err(e) => return Err(OpError::NotFound { what: e }),
        }
    }
    Ok(())
}
