//! Undo deltas: how a raw base keeps revisions. A raw file has no internal snapshots, so
//! before a commit writes a raw base, the bytes it is about to overwrite (every cluster the
//! overlay holds) are copied into a small qcow2 file whose backing file is the base. Read
//! through that file, the disk is the base as it was; `qemu-img commit -d` of it writes those
//! bytes back. Only what the commit will overwrite is copied; a cluster that reads as zeros
//! costs no data (a qcow2 zero cluster).
//!
//! The file is written in one pass, data first, then its tables, then its header, to a
//! temporary name that is renamed into place once it is on the disk: a delta that exists is
//! whole.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use super::journal::sync_dir;

const CLUSTER_BITS: u32 = 16;
const CS: u64 = 1 << CLUSTER_BITS;
/// L2 entries per table (8 bytes each).
const PER_L2: u64 = CS / 8;
/// Clusters one refcount block counts (16-bit refcounts).
const PER_REFBLOCK: u64 = CS / 2;
const COPIED: u64 = 1 << 63;
/// An L2 entry that reads as zeros without a data cluster (qcow2 v3).
const ZERO: u64 = 1;
const BACKING_FORMAT_EXT: u32 = 0xE279_2ACA;

/// Writes to `out` the bytes `base` (a raw file) holds now in `ranges` (guest offsets and
/// lengths; rounded out to 64 KiB clusters) as a qcow2 image of `size` bytes whose backing
/// file is `base`. Returns the bytes of data it holds.
pub fn write(base: &Path, ranges: &[(u64, u64)], size: u64, out: &Path) -> std::io::Result<u64> {
    let mut clusters = BTreeSet::new();
    for &(start, len) in ranges {
        let end = (start + len).min(size);
        if start < end {
            clusters.extend(start / CS..end.div_ceil(CS));
        }
    }
    let dir = out.parent().unwrap_or(Path::new("/"));
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = write_file(base, &clusters, size, &tmp).and_then(|held| {
        fs::rename(&tmp, out)?;
        sync_dir(dir)?;
        Ok(held)
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_file(
    base: &Path,
    clusters: &BTreeSet<u64>,
    size: u64,
    path: &Path,
) -> std::io::Result<u64> {
    let src = File::open(base)?;
    // A copy of the guest's data: readable by its owner only, whatever the base's mode.
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // Data clusters from cluster 1 on, in guest order; the L2 entry of each guest cluster.
    let mut entries: Vec<(u64, u64)> = Vec::with_capacity(clusters.len());
    let mut next = 1u64;
    let mut buf = vec![0u8; CS as usize];
    let zeros = vec![0u8; CS as usize];
    for &c in clusters {
        buf.fill(0);
        let mut got = 0;
        while got < buf.len() {
            let n = src.read_at(&mut buf[got..], c * CS + got as u64)?;
            if n == 0 {
                break; // past the end of the raw file: zeros
            }
            got += n;
        }
        // (A slice comparison is a memcmp; a byte loop took a second per GiB.)
        if buf == zeros {
            entries.push((c, ZERO));
        } else {
            f.write_all_at(&buf, next * CS)?;
            entries.push((c, (next * CS) | COPIED));
            next += 1;
        }
    }
    let held = (next - 1) * CS;
    // L2 tables, one per 512 MiB of the disk that has an entry.
    let l1_size = size.div_ceil(CS).div_ceil(PER_L2);
    let mut l1 = vec![0u64; l1_size as usize];
    let mut i = 0;
    while i < entries.len() {
        let table = entries[i].0 / PER_L2;
        let mut l2 = vec![0u8; CS as usize];
        while i < entries.len() && entries[i].0 / PER_L2 == table {
            let at = ((entries[i].0 % PER_L2) * 8) as usize;
            l2[at..at + 8].copy_from_slice(&entries[i].1.to_be_bytes());
            i += 1;
        }
        f.write_all_at(&l2, next * CS)?;
        l1[table as usize] = (next * CS) | COPIED;
        next += 1;
    }
    let l1_offset = next * CS;
    let l1_bytes: Vec<u8> = l1.iter().flat_map(|e| e.to_be_bytes()).collect();
    f.write_all_at(&l1_bytes, l1_offset)?;
    next += (l1_size * 8).div_ceil(CS).max(1);
    // Reference counts: every cluster of the file, these included, is used once.
    let (mut blocks, mut table) = (1u64, 1u64);
    loop {
        let total = next + table + blocks;
        let (b, t) = (
            total.div_ceil(PER_REFBLOCK),
            (total.div_ceil(PER_REFBLOCK) * 8).div_ceil(CS),
        );
        if (b, t) == (blocks, table) {
            break;
        }
        (blocks, table) = (b.max(blocks), t.max(table));
    }
    let table_offset = next * CS;
    let first_block = next + table;
    let total = first_block + blocks;
    let offsets: Vec<u8> = (0..blocks)
        .flat_map(|k| ((first_block + k) * CS).to_be_bytes())
        .collect();
    f.write_all_at(&offsets, table_offset)?;
    for k in 0..blocks {
        let mut block = vec![0u8; CS as usize];
        for c in k * PER_REFBLOCK..((k + 1) * PER_REFBLOCK).min(total) {
            let at = ((c % PER_REFBLOCK) * 2) as usize;
            block[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
        }
        f.write_all_at(&block, (first_block + k) * CS)?;
    }
    f.set_len(total * CS)?;
    // The header last, with the backing file's name and format.
    let backing = base.to_string_lossy();
    let mut h = Vec::with_capacity(CS as usize);
    h.extend(0x5146_49fbu32.to_be_bytes()); // "QFI\xfb"
    h.extend(3u32.to_be_bytes());
    let name_at = 104 + 16 + 8;
    h.extend((name_at as u64).to_be_bytes());
    h.extend((backing.len() as u32).to_be_bytes());
    h.extend(CLUSTER_BITS.to_be_bytes());
    h.extend(size.to_be_bytes());
    h.extend(0u32.to_be_bytes()); // no encryption
    h.extend((l1_size as u32).to_be_bytes());
    h.extend(l1_offset.to_be_bytes());
    h.extend(table_offset.to_be_bytes());
    h.extend((table as u32).to_be_bytes());
    h.extend(0u32.to_be_bytes()); // no snapshots
    h.extend(0u64.to_be_bytes());
    h.extend([0u8; 24]); // incompatible, compatible and autoclear features
    h.extend(4u32.to_be_bytes()); // 16-bit refcounts
    h.extend(104u32.to_be_bytes());
    h.extend(BACKING_FORMAT_EXT.to_be_bytes());
    h.extend(3u32.to_be_bytes());
    h.extend(b"raw\0\0\0\0\0");
    h.extend([0u8; 8]); // end of the extensions
    h.extend(backing.as_bytes());
    if h.len() > CS as usize {
        return Err(std::io::Error::other(
            "the base's path is too long for a header",
        ));
    }
    f.write_all_at(&h, 0)?;
    f.sync_all()?;
    Ok(held)
}

/// The guest ranges a delta (or any qcow2 image) holds itself, merged where they touch.
pub fn held_ranges(path: &Path) -> Result<Vec<(u64, u64)>, String> {
    let img = super::qcow2::Image::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out: Vec<(u64, u64)> = Vec::new();
    img.walk(&mut |start, len, a| {
        if a.present() {
            match out.last_mut() {
                Some((s, l)) if *s + *l == start => *l += len,
                _ => out.push((start, len)),
            }
        }
    })
    .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn qemu_img(args: &[&str]) -> std::process::Output {
        Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img")
    }

    /// A delta of a raw file holds its bytes where asked (zeros as zero clusters), passes
    /// `qemu-img check`, and `qemu-img commit -d` of it writes them back.
    #[test]
    fn a_delta_holds_the_bases_bytes_and_commits_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        let size = 1200u64 << 20; // three L2 tables' worth
        let far = (1100u64 << 20) + 12345;
        let f = File::create(&base).unwrap();
        f.set_len(size).unwrap();
        f.write_all_at(&[0x11; 100_000], 5 << 20).unwrap();
        f.write_all_at(&[0x22; 70_000], far).unwrap();
        drop(f);
        let original = dir.path().join("original.raw");
        let cp = Command::new("cp")
            .arg("--sparse=always")
            .arg(&base)
            .arg(&original)
            .status();
        assert!(cp.unwrap().success());
        let delta = dir.path().join("delta.qcow2");
        let ranges = [(5 << 20, 200_000), (600 << 20, 1 << 20), (far, 70_000)];
        let held = write(&base, &ranges, size, &delta).unwrap();
        assert_eq!(
            held,
            4 * CS,
            "data clusters only where the bytes are not zeros"
        );
        let check = qemu_img(&["check", "-f", "qcow2", delta.to_str().unwrap()]);
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stdout)
        );
        let held_now = held_ranges(&delta).unwrap();
        assert_eq!(held_now[0], (5 << 20, 4 * CS), "{held_now:?}");
        assert_eq!(held_now[1], (600 << 20, 1 << 20), "{held_now:?}");
        // Overwritten where the delta holds the old bytes, then written back.
        let f = fs::OpenOptions::new().write(true).open(&base).unwrap();
        f.write_all_at(&[0x33; 150_000], 5 << 20).unwrap();
        f.write_all_at(&[0x44; 4096], 600 << 20).unwrap();
        f.write_all_at(&[0x55; 1000], far + 5000).unwrap();
        drop(f);
        let out = qemu_img(&["commit", "-q", "-d", "-f", "qcow2", delta.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let same = Command::new("cmp").arg(&base).arg(&original).status();
        assert!(same.unwrap().success(), "the base is back byte for byte");
    }
}
