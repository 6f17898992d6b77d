//! `vmoverlay --demo`: the real flow on a machine with no VM. A libvirt test-driver connection
//! (`test:///<dir>/node.xml`) holds one demo domain whose disk is a real qcow2 overlay over a
//! real base in the user's cache directory; "the guest" writes to its overlay with qemu-io.
//! The tray, state machine, prompt and engine are the real ones.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const DOMAIN: &str = "demo-guest";
/// The byte the demo guest writes, and where: first session, then each later one.
pub const GUEST_PATTERN: u8 = 0x5d;
pub const FIRST_WRITE: (u32, u32) = (16, 12);
pub const LATER_WRITE: (u32, u32) = (40, 8);

pub struct Demo {
    pub dir: PathBuf,
    pub uri: String,
    pub base: PathBuf,
    pub overlay: PathBuf,
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?}: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("vmoverlay")
}

impl Demo {
    /// Creates fresh demo images and the test-driver node description.
    pub fn create() -> Result<Demo, String> {
        let dir = cache_dir().join("demo");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let base = dir.join("base.qcow2");
        let overlay = dir.join("demo-guest.qcow2");
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg("256M"))?;
        run(Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write -P 0xaa 0 4M"])
            .arg(&base))?;
        run(Command::new("qemu-img")
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                "base.qcow2",
            ])
            .arg(&overlay)
            .current_dir(&dir))?;
        let node = dir.join("node.xml");
        let xml = format!(
            "<node>\n  <domain type='test'>\n    <name>{DOMAIN}</name>\n    \
             <memory>262144</memory>\n    <os><type>hvm</type></os>\n    <devices>\n      \
             <disk type='file' device='disk'>\n        <driver name='qemu' type='qcow2'/>\n        \
             <source file='{}'/>\n        <target dev='vda' bus='virtio'/>\n      </disk>\n    \
             </devices>\n  </domain>\n</node>\n",
            overlay.display()
        );
        std::fs::write(&node, xml).map_err(|e| format!("{}: {e}", node.display()))?;
        let demo = Demo {
            uri: format!("test://{}", node.display()),
            dir,
            base,
            overlay,
        };
        demo.guest_writes(FIRST_WRITE)?;
        Ok(demo)
    }

    /// What a running guest would do: write to its disk (the overlay), `(offset, length)` in MiB.
    pub fn guest_writes(&self, (offset, mib): (u32, u32)) -> Result<(), String> {
        run(Command::new("qemu-io")
            .args(["-f", "qcow2", "-c"])
            .arg(format!("write -P {GUEST_PATTERN:#x} {offset}M {mib}M"))
            .arg(&self.overlay))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts (`on`, after the guest's next session has written to its disk) or shuts down
    /// the demo guest, on the demo's own connection. `Ok(true)` when it was started.
    pub fn power(&self, conn: &virt::connect::Connect, on: bool) -> Result<bool, String> {
        let running = crate::libvirt::is_running(conn, DOMAIN).map_err(|e| e.to_string())?;
        if on && !running {
            self.guest_writes(LATER_WRITE)?;
            crate::libvirt::start(conn, DOMAIN).map_err(|e| e.to_string())?;
            return Ok(true);
        }
        if !on && running {
            crate::libvirt::shutdown(conn, DOMAIN).map_err(|e| e.to_string())?;
        }
        Ok(false)
    }
}
