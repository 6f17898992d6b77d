//! A read-only qcow2 reader: exactly what `status`, the tray, the prompt and the preconditions
//! need, without spawning `qemu-img`. It reads the header, the header extensions (backing
//! format, feature names, bitmaps, external data file), the backing file name, the snapshot
//! table, the bitmap directory, and the L1/L2 tables to tell which guest bytes the image itself
//! holds. The format is QEMU's `docs/interop/qcow2.txt`.
//!
//! Files are opened `O_RDONLY` and read with `pread`; no lock is taken or needed (like
//! `qemu-img -U`), nothing is written. The files are untrusted: every offset is checked against
//! the file's length before it is read, every allocation is bounded by it, arithmetic is
//! checked, and unknown incompatible features are refused.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const MAGIC: &[u8; 4] = b"QFI\xfb";

/// Header extension types.
pub const EXT_END: u32 = 0;
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
pub const EXT_BITMAPS: u32 = 0x2385_2875;
pub const EXT_CRYPTO: u32 = 0x0537_be77;
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Incompatible feature bits.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
/// Compatible feature bits.
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
/// Autoclear feature bits.
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const OFLAG_COPIED: u64 = 1 << 63;
const OFLAG_COMPRESSED: u64 = 1 << 62;
const OFLAG_ZERO: u64 = 1 << 0;

/// QEMU's own limits, so a hostile header cannot make us read (or allocate) without end.
const MIN_CLUSTER_BITS: u32 = 9;
const MAX_CLUSTER_BITS: u32 = 21;
const MAX_BACKING_NAME: u32 = 1023;
const MAX_L1_ENTRIES: u64 = 32 * 1024 * 1024 / 8;
const MAX_SNAPSHOTS: u32 = 65536;
const MAX_SNAPSHOT_EXTRA: u32 = 1024;
const MAX_BITMAPS: u32 = 65535;
const MAX_BITMAP_DIRECTORY: u64 = 64 * 1024 * 1024;
const MAX_BITMAP_NAME: u16 = 1023;
const SUBCLUSTERS: u64 = 32;
const SECTOR: u64 = 512;

/// Why an image could not be read. The messages are for people, in QEMU's terms.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a qcow2 image")]
    NotQcow2,
    #[error("unsupported qcow2 version {0}")]
    Version(u32),
    #[error("unsupported qcow2 feature(s): {0}")]
    Unsupported(String),
    #[error("corrupt qcow2 image: {0}")]
    Corrupt(String),
    #[error("truncated qcow2 image: {what} ends at byte {end}, the file has {len}")]
    Truncated { what: String, end: u64, len: u64 },
}

fn corrupt(s: impl Into<String>) -> Error {
    Error::Corrupt(s.into())
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// The fixed part of a qcow2 header (version 2 fields, and version 3 ones with their defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    /// Virtual size in bytes, as stored.
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    /// 0 zlib, 1 zstd.
    pub compression_type: u8,
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }

    pub fn has_data_file(&self) -> bool {
        self.incompatible_features & INCOMPAT_DATA_FILE != 0
    }

    /// `compat` as `qemu-img info` names it.
    pub fn compat(&self) -> &'static str {
        if self.version == 2 {
            "0.10"
        } else {
            "1.1"
        }
    }

    /// Bytes of one L2 entry: 16 with extended L2 (an allocation bitmap follows), else 8.
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2() {
            16
        } else {
            8
        }
    }

    /// The virtual size QEMU presents: whole 512-byte sectors.
    pub fn virtual_size(&self) -> u64 {
        self.size / SECTOR * SECTOR
    }
}

/// Parses and checks the fixed header at the start of `b` (which holds at least the first
/// 104 bytes of the file, or the whole file if shorter). Unknown incompatible features are
/// refused later, by [`check_incompatible`], once the feature name table is read.
pub fn parse_header(b: &[u8]) -> Result<Header, Error> {
    if b.len() < 4 || &b[0..4] != MAGIC {
        return Err(Error::NotQcow2);
    }
    if b.len() < 72 {
        return Err(Error::Truncated {
            what: "the header".into(),
            end: 72,
            len: b.len() as u64,
        });
    }
    let version = be32(b, 4);
    if version != 2 && version != 3 {
        return Err(Error::Version(version));
    }
    let mut h = Header {
        version,
        backing_file_offset: be64(b, 8),
        backing_file_size: be32(b, 16),
        cluster_bits: be32(b, 20),
        size: be64(b, 24),
        crypt_method: be32(b, 32),
        l1_size: be32(b, 36),
        l1_table_offset: be64(b, 40),
        refcount_table_offset: be64(b, 48),
        refcount_table_clusters: be32(b, 56),
        nb_snapshots: be32(b, 60),
        snapshots_offset: be64(b, 64),
        incompatible_features: 0,
        compatible_features: 0,
        autoclear_features: 0,
        refcount_order: 4,
        header_length: 72,
        compression_type: 0,
    };
    if version == 3 {
        if b.len() < 104 {
            return Err(Error::Truncated {
                what: "the version 3 header".into(),
                end: 104,
                len: b.len() as u64,
            });
        }
        h.incompatible_features = be64(b, 72);
        h.compatible_features = be64(b, 80);
        h.autoclear_features = be64(b, 88);
        h.refcount_order = be32(b, 96);
        h.header_length = be32(b, 100);
        if h.header_length < 104 {
            return Err(corrupt(format!(
                "header length {} is too small",
                h.header_length
            )));
        }
        if h.header_length > 104 {
            if b.len() < 105 {
                return Err(Error::Truncated {
                    what: "the header".into(),
                    end: 105,
                    len: b.len() as u64,
                });
            }
            h.compression_type = b[104];
        }
    }
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&h.cluster_bits) {
        return Err(corrupt(format!(
            "cluster bits {} out of range",
            h.cluster_bits
        )));
    }
    if u64::from(h.header_length) > h.cluster_size() {
        return Err(corrupt("the header is larger than a cluster"));
    }
    if h.refcount_order > 6 {
        return Err(corrupt(format!(
            "refcount order {} out of range",
            h.refcount_order
        )));
    }
    if h.compression_type > 1 {
        return Err(Error::Unsupported(format!(
            "compression type {}",
            h.compression_type
        )));
    }
    if (h.compression_type != 0) != (h.incompatible_features & INCOMPAT_COMPRESSION != 0) {
        return Err(corrupt(
            "the compression type and its incompatible feature bit disagree",
        ));
    }
    if h.extended_l2() && h.cluster_bits < 14 {
        return Err(corrupt(
            "extended L2 entries need clusters of at least 16 KiB",
        ));
    }
    if h.backing_file_offset != 0 {
        if h.backing_file_offset > h.cluster_size() {
            return Err(corrupt("invalid backing file offset"));
        }
        if h.backing_file_size > MAX_BACKING_NAME {
            return Err(corrupt("backing file name too long"));
        }
    }
    Ok(h)
}

/// One header extension: its type and its data (padding removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension<'a> {
    pub kind: u32,
    pub data: &'a [u8],
}

/// Parses the header extensions in `area` (the bytes from the end of the fixed header to the
/// backing file name, or to the end of the first cluster).
pub fn parse_extensions(area: &[u8]) -> Result<Vec<Extension<'_>>, Error> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < area.len() {
        if area.len() - at < 8 {
            return Err(corrupt("a header extension is cut off"));
        }
        let kind = be32(area, at);
        let len = be32(area, at + 4) as usize;
        at += 8;
        if kind == EXT_END {
            return Ok(out);
        }
        if len > area.len() - at {
            return Err(corrupt("header extension too large"));
        }
        out.push(Extension {
            kind,
            data: &area[at..at + len],
        });
        // Each extension is padded to a multiple of 8 bytes.
        at = at.saturating_add(len.div_ceil(8) * 8);
    }
    Ok(out)
}

/// Names from the feature name table: (type 0 incompatible / 1 compatible / 2 autoclear, bit).
pub fn parse_feature_names(data: &[u8]) -> Vec<(u8, u8, String)> {
    data.chunks_exact(48)
        .map(|e| {
            let name = &e[2..];
            let end = name.iter().position(|c| *c == 0).unwrap_or(name.len());
            (
                e[0],
                e[1],
                String::from_utf8_lossy(&name[..end]).into_owned(),
            )
        })
        .collect()
}

/// The refusal of unknown incompatible features, named from the image's own table if it has one.
pub fn check_incompatible(h: &Header, names: &[(u8, u8, String)]) -> Result<(), Error> {
    let unknown = h.incompatible_features & !INCOMPAT_KNOWN;
    if unknown == 0 {
        return Ok(());
    }
    let list: Vec<String> = (0..64u8)
        .filter(|b| unknown & (1 << b) != 0)
        .map(|b| {
            names
                .iter()
                .find(|(t, bit, _)| *t == 0 && *bit == b)
                .map_or_else(
                    || format!("incompatible bit {b}"),
                    |(_, _, n)| format!("{n} (incompatible bit {b})"),
                )
        })
        .collect();
    Err(Error::Unsupported(list.join(", ")))
}

/// How a guest (sub)cluster reads, from its L2 entry: what `qemu-img map` calls present at
/// depth 0 is anything but `Unallocated` (data, compressed data, and zeros that hide the
/// backing file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alloc {
    /// Read from the backing file (or zeros without one).
    Unallocated,
    Data,
    Compressed,
    Zero,
}

impl Alloc {
    pub fn present(self) -> bool {
        self != Alloc::Unallocated
    }
}

/// What the decoder of an L2 entry needs to know about the image.
#[derive(Debug, Clone, Copy)]
pub struct L2Context {
    pub version: u32,
    pub cluster_bits: u32,
    pub extended_l2: bool,
    pub data_file: bool,
}

impl L2Context {
    pub fn of(h: &Header) -> L2Context {
        L2Context {
            version: h.version,
            cluster_bits: h.cluster_bits,
            extended_l2: h.extended_l2(),
            data_file: h.has_data_file(),
        }
    }
}

/// Decodes one L2 entry (with its subcluster bitmap when the image has extended L2 entries)
/// into how each of its subclusters reads: one value per cluster without extended L2, 32 with.
/// Mirrors QEMU's `qcow2_get_subcluster_type`, including what QEMU calls corruption.
pub fn decode_l2(ctx: L2Context, entry: u64, bitmap: u64) -> Result<Vec<Alloc>, Error> {
    let n = if ctx.extended_l2 {
        SUBCLUSTERS as usize
    } else {
        1
    };
    if entry & OFLAG_COMPRESSED != 0 {
        return Ok(vec![Alloc::Compressed; n]);
    }
    let offset = entry & L2E_OFFSET_MASK;
    let cluster_mask = (1u64 << ctx.cluster_bits) - 1;
    if offset & cluster_mask != 0 {
        return Err(corrupt(format!(
            "cluster offset {offset:#x} is not aligned to a cluster"
        )));
    }
    // Offset 0 means unallocated, except in an external data file, where it is a real offset
    // (told apart by the COPIED flag: data file clusters always have refcount 1).
    let allocated = offset != 0 || (ctx.data_file && entry & OFLAG_COPIED != 0);
    if !ctx.extended_l2 {
        let a = if entry & OFLAG_ZERO != 0 {
            if ctx.version < 3 {
                return Err(corrupt("zero cluster entry in a version 2 image"));
            }
            Alloc::Zero
        } else if allocated {
            Alloc::Data
        } else {
            Alloc::Unallocated
        };
        return Ok(vec![a]);
    }
    let alloc_bits = bitmap & 0xffff_ffff;
    let zero_bits = bitmap >> 32;
    if allocated {
        if alloc_bits & zero_bits != 0 {
            return Err(corrupt("a subcluster is both allocated and zero"));
        }
    } else if alloc_bits != 0 {
        return Err(corrupt("allocated subclusters in an unallocated cluster"));
    }
    Ok((0..SUBCLUSTERS)
        .map(|i| {
            if zero_bits & (1 << i) != 0 {
                Alloc::Zero
            } else if alloc_bits & (1 << i) != 0 {
                Alloc::Data
            } else {
                Alloc::Unallocated
            }
        })
        .collect())
}

/// An internal snapshot of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: String,
    pub name: String,
}

/// A persistent dirty bitmap stored in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    pub name: String,
    pub granularity: u64,
    pub flags: u32,
}

/// Parses the bitmap directory (`count` entries).
pub fn parse_bitmap_directory(dir: &[u8], count: u32) -> Result<Vec<Bitmap>, Error> {
    let mut out = Vec::new();
    let mut at = 0usize;
    for _ in 0..count {
        if dir.len().saturating_sub(at) < 24 {
            return Err(corrupt("the bitmap directory is cut off"));
        }
        let e = &dir[at..];
        let flags = be32(e, 12);
        let granularity_bits = u32::from(e[17]);
        let name_size = be16(e, 18);
        let extra = be32(e, 20) as usize;
        if name_size == 0 || name_size > MAX_BITMAP_NAME || !(9..=31).contains(&granularity_bits) {
            return Err(corrupt("invalid bitmap directory entry"));
        }
        let name_at = 24usize.saturating_add(extra);
        let end = name_at.saturating_add(usize::from(name_size));
        if end > e.len() {
            return Err(corrupt("the bitmap directory is cut off"));
        }
        out.push(Bitmap {
            name: String::from_utf8_lossy(&e[name_at..end]).into_owned(),
            granularity: 1 << granularity_bits,
            flags,
        });
        at = at.saturating_add(end.div_ceil(8) * 8);
    }
    Ok(out)
}

/// A qcow2 image opened for reading its metadata.
#[derive(Debug)]
pub struct Image {
    file: File,
    len: u64,
    pub header: Header,
    /// The backing file name exactly as stored (may be relative).
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub data_file: Option<String>,
    pub snapshots: Vec<Snapshot>,
    pub bitmaps: Vec<Bitmap>,
}

/// How much of the start of the file is read at once: header, extensions and backing name
/// nearly always fit.
const FIRST_READ: u64 = 64 * 1024;

impl Image {
    /// Opens `path` read-only (no locks) and reads its metadata.
    pub fn open(path: &Path) -> Result<Image, Error> {
        Image::from_file(File::open(path)?)
    }

    pub fn from_file(file: File) -> Result<Image, Error> {
        let len = file.metadata()?.len();
        let mut first = read_at(&file, len, 0, FIRST_READ.min(len), None)?;
        let header = parse_header(&first)?;
        // Extensions end where the backing file name starts, or at the end of the first
        // cluster.
        let ext_end = if header.backing_file_offset != 0 {
            header.backing_file_offset
        } else {
            header.cluster_size()
        };
        let name_end = header.backing_file_offset + u64::from(header.backing_file_size);
        let need = ext_end.max(name_end).min(len);
        if need > first.len() as u64 {
            first = read_at(&file, len, 0, need, None)?;
        }
        let ext_area = first
            .get(header.header_length as usize..(ext_end.min(len) as usize))
            .unwrap_or(&[]);
        let exts = parse_extensions(ext_area)?;
        let names = exts
            .iter()
            .find(|e| e.kind == EXT_FEATURE_TABLE)
            .map(|e| parse_feature_names(e.data))
            .unwrap_or_default();
        check_incompatible(&header, &names)?;

        let text = |d: &[u8], what: &str| -> Result<String, Error> {
            String::from_utf8(d.to_vec()).map_err(|_| corrupt(format!("{what} is not UTF-8")))
        };
        let backing_file = if header.backing_file_offset != 0 && header.backing_file_size != 0 {
            if name_end > len {
                return Err(Error::Truncated {
                    what: "the backing file name".into(),
                    end: name_end,
                    len,
                });
            }
            let at = header.backing_file_offset as usize;
            Some(text(
                &first[at..at + header.backing_file_size as usize],
                "the backing file name",
            )?)
        } else {
            None
        };
        let mut image = Image {
            backing_file,
            backing_format: None,
            data_file: None,
            snapshots: Vec::new(),
            bitmaps: Vec::new(),
            header,
            file,
            len,
        };
        let mut bitmaps_ext = None;
        for e in &exts {
            match e.kind {
                EXT_BACKING_FORMAT => {
                    if e.data.len() >= 16 {
                        return Err(corrupt("backing format name too long"));
                    }
                    image.backing_format = Some(text(e.data, "the backing format")?);
                }
                EXT_DATA_FILE => image.data_file = Some(text(e.data, "the data file name")?),
                EXT_BITMAPS => {
                    if e.data.len() != 24 {
                        return Err(corrupt("invalid bitmaps extension length"));
                    }
                    bitmaps_ext = Some(e.data);
                }
                _ => {}
            }
        }
        match (image.header.has_data_file(), &image.data_file) {
            (true, None) => {
                return Err(corrupt(
                    "the image uses an external data file but does not name it",
                ))
            }
            (false, Some(_)) => {
                return Err(corrupt(
                    "a data file is named but the image does not use one",
                ))
            }
            _ => {}
        }
        // Without the autoclear bit, a program that knows nothing of bitmaps wrote to the
        // image since: QEMU then ignores the extension, and so do we.
        if let Some(b) =
            bitmaps_ext.filter(|_| image.header.autoclear_features & AUTOCLEAR_BITMAPS != 0)
        {
            image.bitmaps = image.read_bitmaps(b)?;
        }
        image.snapshots = image.read_snapshots()?;
        Ok(image)
    }

    pub fn cluster_size(&self) -> u64 {
        self.header.cluster_size()
    }

    pub fn virtual_size(&self) -> u64 {
        self.header.virtual_size()
    }

    fn read(&self, offset: u64, n: u64, what: &str) -> Result<Vec<u8>, Error> {
        read_at(&self.file, self.len, offset, n, Some(what))
    }

    fn read_bitmaps(&self, ext: &[u8]) -> Result<Vec<Bitmap>, Error> {
        let count = be32(ext, 0);
        let size = be64(ext, 8);
        let offset = be64(ext, 16);
        if count == 0 || count > MAX_BITMAPS {
            return Err(corrupt(format!("invalid number of bitmaps {count}")));
        }
        if size > MAX_BITMAP_DIRECTORY || !offset.is_multiple_of(self.cluster_size()) {
            return Err(corrupt("invalid bitmap directory"));
        }
        let dir = self.read(offset, size, "the bitmap directory")?;
        parse_bitmap_directory(&dir, count)
    }

    fn read_snapshots(&self) -> Result<Vec<Snapshot>, Error> {
        let h = &self.header;
        if h.nb_snapshots == 0 {
            return Ok(Vec::new());
        }
        if h.nb_snapshots > MAX_SNAPSHOTS || !h.snapshots_offset.is_multiple_of(h.cluster_size()) {
            return Err(corrupt("invalid snapshot table"));
        }
        let mut out = Vec::new();
        let mut at = h.snapshots_offset;
        for _ in 0..h.nb_snapshots {
            let e = self.read(at, 40, "the snapshot table")?;
            let id_len = u64::from(be16(&e, 12));
            let name_len = u64::from(be16(&e, 14));
            let extra = be32(&e, 36);
            if extra > MAX_SNAPSHOT_EXTRA {
                return Err(corrupt("snapshot extra data too large"));
            }
            let strings_at = at + 40 + u64::from(extra);
            let s = self.read(strings_at, id_len + name_len, "the snapshot table")?;
            let (id, name) = s.split_at(id_len as usize);
            out.push(Snapshot {
                id: String::from_utf8_lossy(id).into_owned(),
                name: String::from_utf8_lossy(name).into_owned(),
            });
            at = (strings_at + id_len + name_len).div_ceil(8) * 8;
        }
        Ok(out)
    }

    /// Bytes of the guest disk this image itself holds (data, compressed data, or zeros that
    /// hide the backing file): what `qemu-img map` reports as `depth 0, present: true`.
    pub fn allocated_bytes(&self) -> Result<u64, Error> {
        let mut total = 0u64;
        self.walk(&mut |_, len, a| {
            if a.present() {
                total += len;
            }
        })?;
        Ok(total)
    }

    /// Calls `f(guest offset, length, how it reads)` for every (sub)cluster of the virtual
    /// disk, in order; the last one is cut at the virtual size.
    pub fn walk(&self, f: &mut dyn FnMut(u64, u64, Alloc)) -> Result<(), Error> {
        let h = &self.header;
        let size = h.virtual_size();
        let cs = h.cluster_size();
        let entry_size = h.l2_entry_size();
        let per_l2 = cs / entry_size;
        let clusters = size.div_ceil(cs);
        let l1_needed = clusters.div_ceil(per_l2);
        if l1_needed > u64::from(h.l1_size) {
            return Err(corrupt("the L1 table is too small for the virtual size"));
        }
        if l1_needed > MAX_L1_ENTRIES {
            return Err(Error::Unsupported("an image this large".into()));
        }
        if l1_needed == 0 {
            return Ok(());
        }
        if !h.l1_table_offset.is_multiple_of(cs) {
            return Err(corrupt("the L1 table is not aligned to a cluster"));
        }
        let l1 = self.read(h.l1_table_offset, l1_needed * 8, "the L1 table")?;
        let ctx = L2Context::of(h);
        let sub = if ctx.extended_l2 {
            cs / SUBCLUSTERS
        } else {
            cs
        };
        for (i, l1e) in l1.chunks_exact(8).enumerate() {
            let l1e = be64(l1e, 0);
            let first_cluster = i as u64 * per_l2;
            let n = per_l2.min(clusters - first_cluster);
            let l2_offset = l1e & L1E_OFFSET_MASK;
            if l2_offset == 0 {
                let start = first_cluster * cs;
                f(start, (n * cs).min(size - start), Alloc::Unallocated);
                continue;
            }
            if !l2_offset.is_multiple_of(cs) {
                return Err(corrupt(format!(
                    "L2 table offset {l2_offset:#x} is not aligned to a cluster"
                )));
            }
            let l2 = self.read(l2_offset, n * entry_size, "an L2 table")?;
            for (j, e) in l2.chunks_exact(entry_size as usize).enumerate() {
                let entry = be64(e, 0);
                let bitmap = if ctx.extended_l2 { be64(e, 8) } else { 0 };
                let cluster_start = (first_cluster + j as u64) * cs;
                for (k, a) in decode_l2(ctx, entry, bitmap)?.into_iter().enumerate() {
                    let start = cluster_start + k as u64 * sub;
                    if start >= size {
                        break;
                    }
                    f(start, sub.min(size - start), a);
                }
            }
        }
        Ok(())
    }
}

/// Reads `n` bytes at `offset`, refusing to read past the end of a file of `len` bytes (so
/// nothing is allocated beyond what the file holds). `what` names the structure for the
/// error; `None` reads what there is (the start of the file).
fn read_at(
    file: &File,
    len: u64,
    offset: u64,
    n: u64,
    what: Option<&str>,
) -> Result<Vec<u8>, Error> {
    let end = offset.saturating_add(n);
    let n = match what {
        Some(what) if end > len => {
            return Err(Error::Truncated {
                what: what.to_string(),
                end,
                len,
            })
        }
        Some(_) => n,
        None => n.min(len.saturating_sub(offset)),
    };
    let mut buf = vec![0u8; n as usize];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// What a file that is not qcow2 is, by its magic: `raw` when QEMU would call it raw, or the
/// name of another image format this reader does not read.
pub fn probe(file: &File) -> Result<&'static str, Error> {
    let len = file.metadata()?.len();
    let b = read_at(file, len, 0, 512.min(len), None)?;
    let starts = |m: &[u8]| b.starts_with(m);
    Ok(if starts(MAGIC) {
        if b.len() >= 8 && be32(&b, 4) == 1 {
            "qcow"
        } else {
            "qcow2"
        }
    } else if starts(b"QED\0") {
        "qed"
    } else if starts(b"KDMV") || starts(b"COWD") || starts(b"# Disk DescriptorFile") {
        "vmdk"
    } else if b.len() >= 68 && be32(&b, 64) == 0xbeda_107f {
        "vdi"
    } else if starts(b"conectix") {
        "vpc"
    } else if starts(b"vhdxfile") {
        "vhdx"
    } else if starts(b"LUKS\xba\xbe") {
        "luks"
    } else if starts(b"WithoutFreeSpace") || starts(b"WithouFreSpacExt") {
        "parallels"
    } else if starts(b"Bochs Virtual HD Image") {
        "bochs"
    } else {
        "raw"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version 3 header with 64 KiB clusters and the given features.
    fn header_bytes(version: u32, incompat: u64) -> Vec<u8> {
        let mut b = vec![0u8; 112];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&version.to_be_bytes());
        b[20..24].copy_from_slice(&16u32.to_be_bytes());
        b[24..32].copy_from_slice(&(64u64 << 20).to_be_bytes());
        b[36..40].copy_from_slice(&1u32.to_be_bytes());
        b[40..48].copy_from_slice(&0x30000u64.to_be_bytes());
        b[72..80].copy_from_slice(&incompat.to_be_bytes());
        b[96..100].copy_from_slice(&4u32.to_be_bytes());
        b[100..104].copy_from_slice(&112u32.to_be_bytes());
        b
    }

    #[test]
    fn parses_a_version_3_header() {
        let h = parse_header(&header_bytes(3, 0)).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.cluster_size(), 65536);
        assert_eq!(h.virtual_size(), 64 << 20);
        assert_eq!(h.l1_table_offset, 0x30000);
        assert_eq!(h.header_length, 112);
        assert_eq!(h.compat(), "1.1");
        assert_eq!(h.l2_entry_size(), 8);
    }

    #[test]
    fn version_2_has_defaults_for_version_3_fields() {
        let h = parse_header(&header_bytes(2, 0xff)[..72]).unwrap();
        assert_eq!((h.header_length, h.refcount_order), (72, 4));
        assert_eq!(h.incompatible_features, 0, "v2 has no feature fields");
        assert_eq!(h.compat(), "0.10");
    }

    #[test]
    fn bad_headers_are_errors_not_panics() {
        assert!(matches!(parse_header(b""), Err(Error::NotQcow2)));
        assert!(matches!(parse_header(b"QFI"), Err(Error::NotQcow2)));
        assert!(matches!(parse_header(b"RAW\xfbxxxx"), Err(Error::NotQcow2)));
        let full = header_bytes(3, 0);
        for cut in 4..104 {
            assert!(
                matches!(parse_header(&full[..cut]), Err(Error::Truncated { .. })),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            parse_header(&header_bytes(4, 0)),
            Err(Error::Version(4))
        ));
        let mut b = header_bytes(3, 0);
        b[20..24].copy_from_slice(&40u32.to_be_bytes());
        assert!(matches!(parse_header(&b), Err(Error::Corrupt(_))));
        let mut b = header_bytes(3, 0);
        b[100..104].copy_from_slice(&0x10_0000u32.to_be_bytes());
        assert!(matches!(parse_header(&b), Err(Error::Corrupt(_))));
        let mut b = header_bytes(3, 0);
        b[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(parse_header(&b), Err(Error::Corrupt(_))));
    }

    #[test]
    fn unknown_incompatible_features_are_refused_by_name() {
        let h = parse_header(&header_bytes(3, INCOMPAT_DIRTY | INCOMPAT_EXTL2)).unwrap();
        check_incompatible(&h, &[]).unwrap();
        let h = parse_header(&header_bytes(3, 1 << 5 | 1 << 40)).unwrap();
        let mut table = vec![0u8; 48];
        table[1] = 40;
        table[2..9].copy_from_slice(b"quantum");
        let names = parse_feature_names(&table);
        let e = check_incompatible(&h, &names).unwrap_err().to_string();
        assert_eq!(
            e,
            "unsupported qcow2 feature(s): incompatible bit 5, quantum (incompatible bit 40)"
        );
    }

    #[test]
    fn extensions_are_walked_with_padding_and_bounds() {
        let mut a = Vec::new();
        a.extend_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
        a.extend_from_slice(&5u32.to_be_bytes());
        a.extend_from_slice(b"qcow2\0\0\0");
        a.extend_from_slice(&EXT_DATA_FILE.to_be_bytes());
        a.extend_from_slice(&8u32.to_be_bytes());
        a.extend_from_slice(b"data.raw");
        a.extend_from_slice(&[0u8; 8]);
        a.extend_from_slice(b"garbage after the end");
        let e = parse_extensions(&a).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].kind, e[0].data), (EXT_BACKING_FORMAT, &b"qcow2"[..]));
        assert_eq!((e[1].kind, e[1].data), (EXT_DATA_FILE, &b"data.raw"[..]));
        // A length beyond the area, and an extension header cut off.
        let mut bad = EXT_DATA_FILE.to_be_bytes().to_vec();
        bad.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_extensions(&bad).is_err());
        assert!(parse_extensions(&bad[..6]).is_err());
        assert!(parse_extensions(&[]).unwrap().is_empty());
    }

    const V3: L2Context = L2Context {
        version: 3,
        cluster_bits: 16,
        extended_l2: false,
        data_file: false,
    };

    #[test]
    fn l2_entries_decode_like_qemu() {
        use Alloc::*;
        let d = |ctx, e| decode_l2(ctx, e, 0).unwrap();
        assert_eq!(d(V3, 0), vec![Unallocated]);
        assert_eq!(d(V3, OFLAG_COPIED | 0x50000), vec![Data]);
        assert_eq!(d(V3, 0x50000), vec![Data], "shared with a snapshot");
        assert_eq!(d(V3, OFLAG_ZERO), vec![Zero]);
        assert_eq!(d(V3, OFLAG_COPIED | 0x50000 | OFLAG_ZERO), vec![Zero]);
        // Compressed: the low bits are a byte offset, not flags.
        assert_eq!(d(V3, OFLAG_COMPRESSED | 0x12345), vec![Compressed]);
        // Offset 0 in an external data file is a real offset when COPIED is set.
        let df = L2Context {
            data_file: true,
            ..V3
        };
        assert_eq!(d(df, OFLAG_COPIED), vec![Data]);
        assert_eq!(d(df, 0), vec![Unallocated]);
        assert_eq!(d(V3, OFLAG_COPIED), vec![Unallocated]);
        // Corruption.
        assert!(decode_l2(V3, 0x50200, 0).is_err(), "unaligned");
        let v2 = L2Context { version: 2, ..V3 };
        assert!(decode_l2(v2, OFLAG_ZERO, 0).is_err(), "zero flag in v2");
    }

    #[test]
    fn extended_l2_entries_decode_per_subcluster() {
        use Alloc::*;
        let x = L2Context {
            extended_l2: true,
            ..V3
        };
        let s = decode_l2(x, 0x50000, 0b101 | (0b10 << 32)).unwrap();
        assert_eq!(s.len(), 32);
        assert_eq!(&s[..4], &[Data, Zero, Data, Unallocated]);
        // Zero subclusters in an unallocated cluster; the old zero flag is ignored.
        let s = decode_l2(x, OFLAG_ZERO, 1 << 63).unwrap();
        assert_eq!((s[0], s[31]), (Unallocated, Zero));
        assert_eq!(
            decode_l2(x, OFLAG_COMPRESSED | 7, 0).unwrap()[5],
            Compressed
        );
        assert!(decode_l2(x, 0x50000, 1 | 1 << 32).is_err(), "both");
        assert!(decode_l2(x, 0, 1).is_err(), "allocated without a cluster");
    }

    #[test]
    fn bitmap_directory_entries() {
        let mut d = vec![0u8; 24];
        d[12..16].copy_from_slice(&2u32.to_be_bytes());
        d[17] = 16;
        d[18..20].copy_from_slice(&4u16.to_be_bytes());
        d.extend_from_slice(b"bm-0\0\0\0\0");
        let b = parse_bitmap_directory(&d, 1).unwrap();
        assert_eq!(
            b,
            vec![Bitmap {
                name: "bm-0".into(),
                granularity: 65536,
                flags: 2
            }]
        );
        assert!(parse_bitmap_directory(&d, 2).is_err(), "past the end");
        assert!(parse_bitmap_directory(&d[..20], 1).is_err());
        d[20..24].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_bitmap_directory(&d, 1).is_err(), "huge extra data");
    }
}
