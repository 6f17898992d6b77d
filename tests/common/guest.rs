//! The tiny real guest: Debian's cloud kernel with an initramfs (built here, cpio newc + gzip)
//! holding a static busybox and the virtio block modules. Its `/init` writes a marker to
//! `/dev/vda` at an offset, syncs, optionally waits, and powers off (a guest-initiated ACPI
//! power-off). Parameters travel on the kernel command line.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// virtio is modular in the cloud kernel; these must be inserted in exactly this order.
const MODULES: &[&str] = &[
    "virtio/virtio_ring",
    "virtio/virtio",
    "virtio/virtio_pci_modern_dev",
    "virtio/virtio_pci_legacy_dev",
    "virtio/virtio_pci",
    "block/virtio_blk",
];

const INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
    $B insmod /lib/$m.ko
done
marker=; offset=1048576; hold=0
for arg in $($B cat /proc/cmdline); do
    case "$arg" in
        vmo.marker=*) marker=${arg#vmo.marker=} ;;
        vmo.offset=*) offset=${arg#vmo.offset=} ;;
        vmo.hold=*) hold=${arg#vmo.hold=} ;;
    esac
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do $B sleep 0.05; i=$((i+1)); done
if [ -n "$marker" ]; then
    $B printf '%s' "$marker" | $B dd of=/dev/vda bs=1 seek=$offset conv=notrunc,fsync 2>/dev/null
    $B sync
    echo "vmoverlay-guest: wrote $marker at $offset"
fi
$B sleep $hold
$B poweroff -f
"#;

/// Kernel and initramfs, built once per target directory.
pub struct Kit {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

fn kernel_release() -> String {
    let boot = fs::read_dir("/boot").expect("/boot exists");
    let mut releases: Vec<String> = boot
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .filter(|r| r.ends_with("-cloud-amd64"))
                .map(str::to_string)
        })
        .collect();
    releases.sort();
    releases.pop().expect(
        "the tiny test guest needs /boot/vmlinuz-*-cloud-amd64 \
         (apt-get install linux-image-cloud-amd64; the README's test command does it)",
    )
}

fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
    let header = format!(
        "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        ino,
        mode,
        0,
        0,
        1,
        0,
        data.len(),
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() + 1,
        0
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn build_initrd(release: &str, path: &Path) {
    let busybox = fs::read("/bin/busybox")
        .expect("the tiny test guest needs a static /bin/busybox (apt-get install busybox-static)");
    let mut cpio = Vec::new();
    let mut ino = 1;
    let mut add = |cpio: &mut Vec<u8>, name: &str, mode: u32, data: &[u8], rdev| {
        cpio_entry(cpio, ino, name, mode, data, rdev);
        ino += 1;
    };
    for dir in ["bin", "dev", "proc", "sys", "lib"] {
        add(&mut cpio, dir, 0o040755, &[], (0, 0));
    }
    add(&mut cpio, "dev/console", 0o020600, &[], (5, 1));
    add(&mut cpio, "bin/busybox", 0o100755, &busybox, (0, 0));
    add(&mut cpio, "init", 0o100755, INIT.as_bytes(), (0, 0));
    for m in MODULES {
        let src = format!("/lib/modules/{release}/kernel/drivers/{m}.ko");
        let data = fs::read(&src).unwrap_or_else(|e| panic!("kernel module {src}: {e}"));
        let name = format!("lib/{}.ko", m.rsplit('/').next().unwrap());
        add(&mut cpio, &name, 0o100644, &data, (0, 0));
    }
    add(&mut cpio, "TRAILER!!!", 0, &[], (0, 0));
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut gz =
        flate2::write::GzEncoder::new(fs::File::create(&tmp).unwrap(), flate2::Compression::fast());
    gz.write_all(&cpio).unwrap();
    gz.finish().unwrap().sync_all().unwrap();
    fs::rename(&tmp, path).unwrap();
}

pub fn kit() -> &'static Kit {
    static KIT: OnceLock<Kit> = OnceLock::new();
    KIT.get_or_init(|| {
        let release = kernel_release();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest");
        fs::create_dir_all(&dir).unwrap();
        let initrd = dir.join(format!("initrd-{release}.gz"));
        // Rebuilt when the /init script changes: its hash is part of the name.
        let stamp = dir.join(format!("init-{:x}", fxhash(INIT)));
        if !initrd.exists() || !stamp.exists() {
            build_initrd(&release, &initrd);
            fs::write(&stamp, "").unwrap();
        }
        Kit {
            kernel: PathBuf::from(format!("/boot/vmlinuz-{release}")),
            initrd,
        }
    })
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// What the guest does once booted.
#[derive(Clone, Debug)]
pub struct Behaviour {
    /// Written at `offset` of /dev/vda.
    pub marker: Option<String>,
    pub offset: u64,
    /// Seconds to stay up before powering off.
    pub hold_secs: u32,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            marker: None,
            offset: 1 << 20,
            hold_secs: 0,
        }
    }
}

pub fn qemu_img(args: &[&str]) -> String {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is installed (qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A persistent domain on the test bed whose disk is a qcow2 overlay over a qcow2 base, both in
/// a temporary directory. Undefined and destroyed on drop.
pub struct TestVm {
    pub uri: String,
    pub name: String,
    pub dir: tempfile::TempDir,
    pub base: PathBuf,
    pub overlay: PathBuf,
}

impl TestVm {
    pub fn define(uri: &str, name: &str, behaviour: &Behaviour) -> TestVm {
        let kit = kit();
        let dir = tempfile::Builder::new()
            .prefix("vmoverlay-vm-")
            .tempdir()
            .unwrap();
        let base = dir.path().join("base.qcow2");
        let overlay = dir.path().join("overlay.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "16M"]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            base.to_str().unwrap(),
            "-F",
            "qcow2",
            overlay.to_str().unwrap(),
        ]);
        let mut cmdline = format!(
            "console=ttyS0 panic=-1 quiet vmo.offset={} vmo.hold={}",
            behaviour.offset, behaviour.hold_secs
        );
        if let Some(m) = &behaviour.marker {
            cmdline.push_str(&format!(" vmo.marker={m}"));
        }
        let xml = format!(
            r#"<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>160</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{overlay}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'>
      <source path='{console}'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
"#,
            kernel = kit.kernel.display(),
            initrd = kit.initrd.display(),
            overlay = overlay.display(),
            console = dir.path().join("console.log").display(),
        );
        let xml_path = dir.path().join("domain.xml");
        fs::write(&xml_path, xml).unwrap();
        // A leftover from an interrupted earlier run would make define fail or confuse events.
        let _ = Command::new("virsh")
            .args(["-q", "-c", uri, "destroy", name])
            .output();
        let _ = Command::new("virsh")
            .args(["-q", "-c", uri, "undefine", name])
            .output();
        super::virsh(uri, &["define", xml_path.to_str().unwrap()]);
        TestVm {
            uri: uri.to_string(),
            name: name.to_string(),
            dir,
            base,
            overlay,
        }
    }

    pub fn start(&self) {
        super::virsh(&self.uri, &["start", &self.name]);
    }

    pub fn destroy(&self) {
        super::virsh(&self.uri, &["destroy", &self.name]);
    }

    /// `virsh domstate --reason`, e.g. "shut off (shutdown)".
    pub fn domstate(&self) -> String {
        super::virsh(&self.uri, &["domstate", "--reason", &self.name])
            .trim()
            .to_string()
    }

    /// The PID of the guest's QEMU process (from libvirt's pid file).
    pub fn qemu_pid(&self) -> i32 {
        let p = format!("/run/libvirt/qemu/{}.pid", self.name);
        fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Waits until the domain is shut off (the guest powers itself off), failing with its
    /// console after `within`.
    pub fn wait_shut_off(&self, within: std::time::Duration) {
        let deadline = std::time::Instant::now() + within;
        while !self.domstate().starts_with("shut off") {
            assert!(
                std::time::Instant::now() < deadline,
                "{} still {} after {within:?}; console:\n{}",
                self.name,
                self.domstate(),
                self.console()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Boots the guest and waits until it has powered itself off cleanly.
    pub fn boot_to_power_off(&self) {
        self.start();
        self.wait_shut_off(std::time::Duration::from_secs(90));
        assert_eq!(self.domstate(), "shut off (shutdown)", "{}", self.console());
    }

    pub fn console(&self) -> String {
        fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        let _ = Command::new("virsh")
            .args(["-q", "-c", &self.uri, "destroy", &self.name])
            .output();
        let _ = Command::new("virsh")
            .args(["-q", "-c", &self.uri, "undefine", &self.name])
            .output();
    }
}

/// A guest that wrote `marker` at `offset` of its overlay and powered itself off.
pub fn marker_guest(uri: &str, name: &str, marker: &str, offset: u64) -> TestVm {
    let vm = TestVm::define(
        uri,
        name,
        &Behaviour {
            marker: Some(marker.into()),
            offset,
            hold_secs: 0,
        },
    );
    vm.boot_to_power_off();
    assert_eq!(
        read_image(&vm.overlay, offset, marker.len()),
        marker.as_bytes()
    );
    vm
}

/// Reads `len` bytes at `offset` of an image through QEMU's block layer (`qemu-io -U`, read-only).
pub fn read_image(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let out = Command::new("qemu-io")
        .args(["-U", "-r", "-f", "qcow2", "-c"])
        .arg(format!("read -v {offset} {len}"))
        .arg(path)
        .output()
        .expect("qemu-io is installed (qemu-utils)");
    assert!(
        out.status.success(),
        "qemu-io: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `read -v` prints hex dump lines: "00100000:  4d 41 52 ...  MAR..."
    let text = String::from_utf8_lossy(&out.stdout);
    let mut bytes = Vec::new();
    for line in text.lines() {
        let Some((addr, rest)) = line.split_once(":  ") else {
            continue;
        };
        if u64::from_str_radix(addr.trim(), 16).is_err() {
            continue;
        }
        // 16 hex bytes per line, then the ASCII column (which we must not read as hex).
        let want = (len - bytes.len()).min(16);
        for tok in rest.split_whitespace().take(want) {
            bytes.push(u8::from_str_radix(tok, 16).expect("qemu-io hex dump"));
        }
        if bytes.len() == len {
            break;
        }
    }
    bytes.truncate(len);
    bytes
}
