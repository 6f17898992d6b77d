//! Reading image files: qemu-img's view (`info`, `map`), QEMU's image locks, free space, and
//! a qcow2 header's backing reference. Nothing here writes. Paths are passed to qemu-img as
//! arguments, never through a shell.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use super::error::{OpError, SkipReason};

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

/// The backing chain of `path`, top first, read without taking locks (`-U`).
pub fn backing_chain(path: &Path) -> Result<Vec<Layer>, SkipReason> {
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

#[derive(Debug, Deserialize)]
struct MapEntry {
    length: u64,
    depth: u32,
    present: bool,
}

/// Bytes the overlay itself holds (written or zeroed by the guest): what a commit would
/// move into the base, and what a discard would throw away.
pub fn changed_bytes(overlay: &Path) -> Result<u64, SkipReason> {
    let out = qemu_img()
        .args(["map", "--output=json", "-U", "-f", "qcow2"])
        .arg(overlay)
        .output()
        .map_err(|e| unreadable(overlay, format!("cannot run qemu-img: {e}")))?;
    if !out.status.success() {
        return Err(unreadable(overlay, tool_message(&out)));
    }
    let entries: Vec<MapEntry> = serde_json::from_slice(&out.stdout)
        .map_err(|e| unreadable(overlay, format!("qemu-img map output: {e}")))?;
    Ok(entries
        .iter()
        .filter(|e| e.depth == 0 && e.present)
        .map(|e| e.length)
        .sum())
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
