//! The Rust qcow2 reader against QEMU's own view, on real images made with qemu-img and
//! qemu-io: every layer of `image::backing_chain` against `qemu-img info --backing-chain
//! --output=json -U`, and the reader's allocation map (and `image::changed_bytes`) against
//! `qemu-img map --output=json -U`'s `depth 0, present: true` ranges.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::images::{create_base, create_overlay, qemu_img, qemu_io};
use serde_json::Value;
use vmoverlay::overlay::image::{self, Layer};
use vmoverlay::overlay::qcow2;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn qemu_info_chain(p: &Path) -> Vec<Value> {
    let out = qemu_img(&["info", "--backing-chain", "--output=json", "-U", s(p)]);
    serde_json::from_str(&out).unwrap()
}

fn opt_str(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// `image::backing_chain` agrees with `qemu-img info --backing-chain` on every field the
/// crate reads.
fn assert_chain_matches(p: &Path) -> Vec<Layer> {
    let ours = image::backing_chain(p).unwrap();
    let theirs = qemu_info_chain(p);
    assert_eq!(ours.len(), theirs.len(), "{ours:#?}\n{theirs:#?}");
    for (o, t) in ours.iter().zip(&theirs) {
        let ctx = format!("layer {} of {}", o.filename, p.display());
        assert_eq!(Some(o.filename.clone()), opt_str(&t["filename"]), "{ctx}");
        assert_eq!(Some(o.format.clone()), opt_str(&t["format"]), "{ctx}");
        assert_eq!(Some(o.virtual_size), t["virtual-size"].as_u64(), "{ctx}");
        assert_eq!(o.cluster_size, t["cluster-size"].as_u64(), "{ctx}");
        assert_eq!(o.backing_filename, opt_str(&t["backing-filename"]), "{ctx}");
        assert_eq!(
            o.full_backing_filename,
            opt_str(&t["full-backing-filename"]),
            "{ctx}"
        );
        assert_eq!(
            o.backing_format,
            opt_str(&t["backing-filename-format"]),
            "{ctx}"
        );
        let snaps: Vec<String> = t["snapshots"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| opt_str(&s["name"])).collect())
            .unwrap_or_default();
        assert_eq!(o.snapshot_names(), snaps, "{ctx}");
        let data = &t["format-specific"]["data"];
        let bitmaps: Vec<String> = data["bitmaps"]
            .as_array()
            .map(|a| a.iter().filter_map(|b| opt_str(&b["name"])).collect())
            .unwrap_or_default();
        assert_eq!(o.bitmap_names(), bitmaps, "{ctx}");
        assert_eq!(o.data_file(), opt_str(&data["data-file"]), "{ctx}");
        assert_eq!(
            o.format_specific
                .as_ref()
                .map(|f| f.kind.clone())
                .filter(|k| k == "qcow2"),
            opt_str(&t["format-specific"]["type"]).filter(|k| k == "qcow2"),
            "{ctx}"
        );
    }
    ours
}

/// Adds `[start, start + len)` to sorted ranges, merging neighbours.
fn push_range(v: &mut Vec<(u64, u64)>, start: u64, len: u64) {
    match v.last_mut() {
        Some((s, l)) if *s + *l == start => *l += len,
        _ => v.push((start, len)),
    }
}

/// The reader's present ranges equal qemu-img map's `depth 0, present: true` ranges, and
/// `changed_bytes` is their sum. Returns that sum.
fn assert_map_matches(p: &Path) -> u64 {
    let out = qemu_img(&["map", "--output=json", "-U", "-f", "qcow2", s(p)]);
    let entries: Vec<Value> = serde_json::from_str(&out).unwrap();
    let mut theirs = Vec::new();
    for e in &entries {
        if e["depth"] == 0 && e["present"] == true {
            push_range(
                &mut theirs,
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
            );
        }
    }
    let img = qcow2::Image::open(p).unwrap();
    let mut ours = Vec::new();
    img.walk(&mut |start, len, a| {
        if a.present() {
            push_range(&mut ours, start, len)
        }
    })
    .unwrap();
    assert_eq!(ours, theirs, "present ranges of {}", p.display());
    let sum: u64 = theirs.iter().map(|(_, l)| l).sum();
    assert_eq!(image::changed_bytes(p).unwrap(), sum, "{}", p.display());
    sum
}

fn check(p: &Path) -> u64 {
    assert_chain_matches(p);
    assert_map_matches(p)
}

fn create(p: &Path, opts: &[&str], size: &str) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    args.extend_from_slice(opts);
    args.push(s(p));
    args.push(size);
    qemu_img(&args);
}

/// An overlay over `base` with extra `-o` options, backing reference as given.
fn overlay_with(p: &Path, backing: &str, opts: &str) {
    let mut c = Command::new("qemu-img");
    c.args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing]);
    if !opts.is_empty() {
        c.args(["-o", opts]);
    }
    let out = c
        .arg(p)
        .current_dir(p.parent().unwrap())
        .output()
        .expect("qemu-img is installed (qemu-utils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The usual mix of guest writes: data, zeroes, a discard, a write across a cluster edge.
const WRITES: &[&str] = &[
    "write -P 0x11 0 100k",
    "write -z 1M 128k",
    "write -P 0x22 2M 64k",
    "discard 2M 64k",
    "write -P 0x33 3M 3k",
    "write -P 0x44 4194300 8",
    "write -z 5M 4k",
];

fn based(dir: &Path) -> PathBuf {
    let base = dir.join("base.qcow2");
    create_base(&base, "64M");
    qemu_io(&base, &["write -P 0xaa 0 8M"]);
    base
}

#[test]
fn empty_and_written_overlays_with_absolute_and_relative_references() {
    let dir = tempfile::tempdir().unwrap();
    let base = based(dir.path());
    let abs = dir.path().join("abs.qcow2");
    let rel = dir.path().join("rel.qcow2");
    create_overlay(&abs, s(&base));
    create_overlay(&rel, "base.qcow2");
    assert_eq!(check(&abs), 0);
    assert_eq!(check(&rel), 0);
    let chain = assert_chain_matches(&rel);
    assert_eq!(chain[0].backing_filename.as_deref(), Some("base.qcow2"));
    assert_eq!(
        chain[0].full_backing_filename.as_deref(),
        Some(s(&base)),
        "resolved from the overlay's directory"
    );
    assert_eq!(chain[0].backing_format.as_deref(), Some("qcow2"));
    qemu_io(&abs, WRITES);
    qemu_io(&rel, WRITES);
    let n = check(&abs);
    assert!(n > 0);
    assert_eq!(check(&rel), n);
    // Relative to a subdirectory, and through `..`.
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let up = dir.path().join("sub/up.qcow2");
    create_overlay(&up, "../base.qcow2");
    qemu_io(&up, &["write -P 1 7M 1M"]);
    assert_eq!(check(&up), 1 << 20);
}

#[test]
fn zero_and_discarded_clusters_with_and_without_a_backing_file() {
    let dir = tempfile::tempdir().unwrap();
    let base = based(dir.path());
    let ov = dir.path().join("ov.qcow2");
    create_overlay(&ov, s(&base));
    qemu_io(
        &ov,
        &[
            "write -z 0 256k",
            "write -z -u 1M 64k",
            "write -P 1 2M 1M",
            "discard 2M 512k",
            "write -P 2 4M 64k",
            "write -z 4M 64k",
        ],
    );
    check(&ov);
    let lone = dir.path().join("lone.qcow2");
    create_base(&lone, "16M");
    qemu_io(
        &lone,
        &["write -z 0 1M", "write -P 1 2M 1M", "discard 2M 512k"],
    );
    check(&lone);
}

#[test]
fn compressed_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let base = based(dir.path());
    let packed = dir.path().join("packed.qcow2");
    qemu_img(&["convert", "-c", "-O", "qcow2", s(&base), s(&packed)]);
    check(&packed);
    let ov = dir.path().join("ov.qcow2");
    create_overlay(&ov, s(&base));
    qemu_io(&ov, &["write -c -P 5 1M 64k", "write -P 6 2M 64k"]);
    assert_eq!(check(&ov), 128 * 1024);
    let x = dir.path().join("x.qcow2");
    overlay_with(&x, s(&base), "extended_l2=on");
    qemu_io(&x, &["write -c -P 5 1M 64k", "write -P 6 2M 3k"]);
    check(&x);
}

#[test]
fn extended_l2_subclusters() {
    let dir = tempfile::tempdir().unwrap();
    let base = based(dir.path());
    for cs in ["16k", "64k", "2M"] {
        let ov = dir.path().join(format!("x{cs}.qcow2"));
        overlay_with(&ov, s(&base), &format!("extended_l2=on,cluster_size={cs}"));
        assert_eq!(check(&ov), 0);
        qemu_io(&ov, WRITES);
        qemu_io(
            &ov,
            &["write -P 7 70k 100", "write -z 9M 2k", "discard 3M 1k"],
        );
        check(&ov);
    }
    // Without a backing file: zero subclusters in unallocated clusters.
    let lone = dir.path().join("lone.qcow2");
    create(&lone, &["-o", "extended_l2=on"], "16M");
    qemu_io(&lone, &["write -z 0 4k", "write -P 1 64k 2k"]);
    check(&lone);
}

#[test]
fn cluster_sizes_and_odd_virtual_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let base = based(dir.path());
    for cs in ["4k", "64k", "2M"] {
        let ov = dir.path().join(format!("c{cs}.qcow2"));
        overlay_with(&ov, s(&base), &format!("cluster_size={cs}"));
        qemu_io(&ov, WRITES);
        check(&ov);
        // A virtual size that is no multiple of the cluster size, written to its last byte.
        let odd = dir.path().join(format!("odd{cs}.qcow2"));
        create(&odd, &["-o", &format!("cluster_size={cs}")], "4999680");
        qemu_io(&odd, &["write -P 1 4999168 512", "write -P 1 0 1"]);
        check(&odd);
    }
    // An overlay larger than its base: the part past the base's end is not the overlay's.
    let big = dir.path().join("big.qcow2");
    let mut c = Command::new("qemu-img");
    c.args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&big)
        .arg("200M");
    assert!(c.status().unwrap().success());
    qemu_io(&big, &["write -P 1 100M 1M", "write -z 150M 64k"]);
    assert_eq!(check(&big), (1 << 20) + 65536);
}

#[test]
fn compat_0_10_and_1_1() {
    let dir = tempfile::tempdir().unwrap();
    let base = based(dir.path());
    for compat in ["0.10", "1.1"] {
        let ov = dir.path().join(format!("v{compat}.qcow2"));
        overlay_with(&ov, s(&base), &format!("compat={compat}"));
        qemu_io(&ov, WRITES);
        check(&ov);
        let img = qcow2::Image::open(&ov).unwrap();
        assert_eq!(img.header.compat(), compat);
        let lone = dir.path().join(format!("lone{compat}.qcow2"));
        create(&lone, &["-o", &format!("compat={compat}")], "16M");
        qemu_io(&lone, &["write -P 1 0 1M", "write -z 2M 1M"]);
        check(&lone);
    }
    // Lazy refcounts (a compatible feature) change nothing for a reader.
    let lazy = dir.path().join("lazy.qcow2");
    overlay_with(&lazy, s(&base), "lazy_refcounts=on");
    qemu_io(&lazy, WRITES);
    check(&lazy);
    let img = qcow2::Image::open(&lazy).unwrap();
    assert_ne!(
        img.header.compatible_features & qcow2::COMPAT_LAZY_REFCOUNTS,
        0
    );
}

#[test]
fn external_data_files() {
    let dir = tempfile::tempdir().unwrap();
    let base = based(dir.path());
    for raw in ["off", "on"] {
        // Absolute: QEMU 7.2 resolves a relative data file name from its working directory.
        let lone = dir.path().join(format!("df-{raw}.qcow2"));
        let df = dir.path().join(format!("df-{raw}.raw"));
        create(
            &lone,
            &["-o", &format!("data_file={},data_file_raw={raw}", s(&df))],
            "16M",
        );
        qemu_io(&lone, &["write -P 1 0 64k", "write -z 1M 64k"]);
        let chain = assert_chain_matches(&lone);
        assert_eq!(chain[0].data_file(), Some(s(&df).to_string()));
        assert_map_matches(&lone);
    }
    let ov = dir.path().join("df-ov.qcow2");
    let df = dir.path().join("df-ov.raw");
    overlay_with(&ov, s(&base), &format!("data_file={}", s(&df)));
    qemu_io(&ov, &["write -P 1 0 64k", "write -P 2 3M 1M"]);
    let chain = assert_chain_matches(&ov);
    assert_eq!(chain[0].data_file(), Some(s(&df).to_string()));
    assert_map_matches(&ov);
    // The overlay is not managed: its data lives elsewhere.
    let e = vmoverlay::overlay::discover::inspect_overlay("vda", &ov).unwrap_err();
    assert!(e.to_string().contains("df-ov.raw"), "{e}");
}

#[test]
fn internal_snapshots_and_bitmaps() {
    let dir = tempfile::tempdir().unwrap();
    let base = based(dir.path());
    let ov = dir.path().join("ov.qcow2");
    create_overlay(&ov, s(&base));
    qemu_io(&ov, &["write -P 1 0 1M"]);
    qemu_img(&["snapshot", "-c", "before update", s(&ov)]);
    qemu_io(&ov, &["write -P 2 512k 1M"]);
    qemu_img(&["snapshot", "-c", "nächster", s(&ov)]);
    qemu_img(&["bitmap", "--add", s(&ov), "backup-0"]);
    qemu_img(&["bitmap", "--add", "-g", "128k", "--disable", s(&ov), "b1"]);
    let chain = assert_chain_matches(&ov);
    assert_eq!(chain[0].snapshot_names(), ["before update", "nächster"]);
    assert_eq!(chain[0].bitmap_names(), ["backup-0", "b1"]);
    assert_map_matches(&ov);
    // In the base too (the preconditions look at both).
    qemu_img(&["bitmap", "--add", s(&base), "base-bm"]);
    qemu_img(&["snapshot", "-c", "golden", s(&base)]);
    let chain = assert_chain_matches(&ov);
    assert_eq!(chain[1].bitmap_names(), ["base-bm"]);
    assert_eq!(chain[1].snapshot_names(), ["golden"]);
    // A deleted snapshot leaves the table.
    qemu_img(&["snapshot", "-d", "before update", s(&ov)]);
    assert_eq!(assert_chain_matches(&ov)[0].snapshot_names(), ["nächster"]);
    assert_map_matches(&ov);
}

#[test]
fn three_level_chain_and_a_raw_base() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let raw = d.join("disk.raw");
    qemu_img(&["create", "-q", "-f", "raw", s(&raw), "32M"]);
    let mid = d.join("mid.qcow2");
    let top = d.join("top.qcow2");
    let mut c = Command::new("qemu-img");
    c.args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b", "disk.raw"])
        .arg(&mid)
        .current_dir(d);
    assert!(c.status().unwrap().success());
    qemu_io(&mid, &["write -P 1 0 2M"]);
    create_overlay(&top, "mid.qcow2");
    qemu_io(&top, &["write -P 2 1M 2M"]);
    let chain = assert_chain_matches(&top);
    assert_eq!(
        chain.iter().map(|l| l.format.as_str()).collect::<Vec<_>>(),
        ["qcow2", "qcow2", "raw"]
    );
    assert_eq!(chain[2].filename, s(&raw));
    assert_eq!(check(&top), 2 << 20);
    assert_eq!(check(&mid), 2 << 20);
    // A base named without its format is probed, as QEMU does (qemu-img no longer creates
    // such images: hide the backing format extension behind an unknown type).
    let named = d.join("named.qcow2");
    create_overlay(&named, "mid.qcow2");
    let bytes = std::fs::read(&named).unwrap();
    let at = bytes[..4096]
        .windows(4)
        .position(|w| w == 0xe279_2acau32.to_be_bytes())
        .unwrap();
    let probed = patched(
        &named,
        "probed.qcow2",
        at as u64,
        &0x1234_5678u32.to_be_bytes(),
    );
    let chain = assert_chain_matches(&probed);
    assert_eq!(chain.len(), 3);
    assert_eq!(chain[0].backing_format, None);
    // Four levels through a relative reference in a subdirectory.
    std::fs::create_dir(d.join("deeper")).unwrap();
    let deep = d.join("deeper/deep.qcow2");
    create_overlay(&deep, "../top.qcow2");
    assert_eq!(assert_chain_matches(&deep).len(), 4);
}

#[test]
fn files_that_are_not_qcow2() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a disk image\n").unwrap();
    let chain = assert_chain_matches(&text);
    assert_eq!(
        (chain[0].format.as_str(), chain[0].virtual_size),
        ("raw", 512)
    );
    let e = image::changed_bytes(&text).unwrap_err().to_string();
    assert!(e.contains("not a qcow2 image"), "{e}");
    let empty = dir.path().join("empty.img");
    std::fs::write(&empty, "").unwrap();
    assert_chain_matches(&empty);
    // Other image formats are still read (by qemu-img).
    let vmdk = dir.path().join("d.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", s(&vmdk), "16M"]);
    assert_eq!(assert_chain_matches(&vmdk)[0].format, "vmdk");
}

/// Writes `bytes` at `offset` into a copy of `src` named `name`.
fn patched(src: &Path, name: &str, offset: u64, bytes: &[u8]) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let dst = src.with_file_name(name);
    std::fs::copy(src, &dst).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&dst).unwrap();
    f.write_all_at(bytes, offset).unwrap();
    dst
}

/// Both the chain and the changed bytes fail with a message containing `needle`.
fn assert_bad(p: &Path, needle: &str) {
    let e = image::backing_chain(p).unwrap_err().to_string();
    assert!(e.contains(needle), "{}: {e}", p.display());
    assert!(e.contains(s(p)), "names the file: {e}");
    let e = image::changed_bytes(p).unwrap_err().to_string();
    assert!(e.contains(needle), "{}: {e}", p.display());
}

#[test]
fn truncated_and_corrupt_images_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = based(dir.path());
    let ov = dir.path().join("ov.qcow2");
    create_overlay(&ov, s(&base));
    qemu_io(&ov, &["write -P 1 0 1M"]);
    let bytes = std::fs::read(&ov).unwrap();
    // Cut anywhere in the header, the extensions, the backing name, or the tables.
    for cut in [4u64, 20, 71, 100, 103, 150, 300, 70_000] {
        let p = dir.path().join(format!("cut{cut}.qcow2"));
        std::fs::write(&p, &bytes[..cut as usize]).unwrap();
        let chain = image::backing_chain(&p);
        let changed = image::changed_bytes(&p);
        assert!(
            chain.is_err() || changed.is_err(),
            "cut at {cut}: {chain:?} {changed:?}"
        );
        if let Err(e) = chain {
            assert!(
                e.to_string().contains("truncated") || e.to_string().contains("corrupt"),
                "cut at {cut}: {e}"
            );
        }
    }
    assert_bad(
        &patched(&ov, "v9.qcow2", 4, &9u32.to_be_bytes()),
        "version 9",
    );
    assert_bad(
        &patched(&ov, "cb.qcow2", 20, &30u32.to_be_bytes()),
        "cluster bits",
    );
    // Tables are only read for the changed bytes.
    let l1 = patched(&ov, "l1.qcow2", 40, &(1u64 << 40).to_be_bytes());
    let e = image::changed_bytes(&l1).unwrap_err().to_string();
    assert!(e.contains("truncated") && e.contains("L1 table"), "{e}");
    // An L2 entry pointing into the middle of a cluster.
    let be = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
    let l2_offset = be(be(40) as usize) & 0x00ff_ffff_ffff_fe00;
    let l2 = patched(
        &ov,
        "l2.qcow2",
        l2_offset,
        &(1u64 << 63 | 0x50200).to_be_bytes(),
    );
    let e = image::changed_bytes(&l2).unwrap_err().to_string();
    assert!(e.contains("corrupt") && e.contains("not aligned"), "{e}");
    let out = Command::new("qemu-img")
        .args(["map", "--output=json", "-U"])
        .arg(&l2)
        .output()
        .expect("qemu-img is installed (qemu-utils)");
    assert!(!out.status.success(), "QEMU calls it corrupt too");
    let header_length = u32::from_be_bytes(bytes[100..104].try_into().unwrap());
    assert_bad(
        &patched(
            &ov,
            "ext.qcow2",
            u64::from(header_length) + 4,
            &[0xff, 0xff, 0xff, 0xf0],
        ),
        "header extension too large",
    );
    // An incompatible feature this reader does not know.
    let future = patched(&ov, "future.qcow2", 72, &(1u64 << 13).to_be_bytes());
    assert_bad(&future, "unsupported qcow2 feature");
    let e = qemu_img_fails(&future);
    assert!(
        e.contains("Unsupported") || e.contains("unsupported"),
        "{e}"
    );
    // Random bytes after a valid magic never panic.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..200 {
        let mut b = bytes[..4096.min(bytes.len())].to_vec();
        for _ in 0..8 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = 4 + (state % 200) as usize;
            b[at] = (state >> 32) as u8;
        }
        let p = dir.path().join("fuzz.qcow2");
        std::fs::write(&p, &b).unwrap();
        let _ = image::backing_chain(&p);
        let _ = image::changed_bytes(&p);
    }
}

fn qemu_img_fails(p: &Path) -> String {
    let out = Command::new("qemu-img")
        .args(["info", "-U"])
        .arg(p)
        .output()
        .expect("qemu-img is installed (qemu-utils)");
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn backing_loops_and_missing_bases() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    create_base(&p("a.qcow2"), "16M");
    create_overlay(&p("b.qcow2"), "a.qcow2");
    qemu_img(&[
        "rebase",
        "-u",
        "-F",
        "qcow2",
        "-b",
        "b.qcow2",
        s(&p("a.qcow2")),
    ]);
    let e = image::backing_chain(&p("b.qcow2")).unwrap_err().to_string();
    assert!(e.contains("loop"), "{e}");
    // Its own backing file.
    create_base(&p("self.qcow2"), "16M");
    qemu_img(&[
        "rebase",
        "-u",
        "-F",
        "qcow2",
        "-b",
        "self.qcow2",
        s(&p("self.qcow2")),
    ]);
    let e = image::backing_chain(&p("self.qcow2"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("loop"), "{e}");
    // The bottom of a three-level chain is gone.
    create_base(&p("gone.qcow2"), "16M");
    create_overlay(&p("mid.qcow2"), "gone.qcow2");
    create_overlay(&p("top.qcow2"), "mid.qcow2");
    std::fs::remove_file(p("gone.qcow2")).unwrap();
    let e = image::backing_chain(&p("top.qcow2"))
        .unwrap_err()
        .to_string();
    assert!(e.contains(s(&p("gone.qcow2"))), "{e}");
    assert!(e.contains("missing"), "{e}");
    // The top's own changes are still known, and so is the image on its own (as `qemu-img
    // info` without `--backing-chain` sees it).
    assert_eq!(image::changed_bytes(&p("top.qcow2")).unwrap(), 0);
    let one = image::image_layer(&p("top.qcow2")).unwrap();
    let info: Value = serde_json::from_str(&qemu_img(&[
        "info",
        "--output=json",
        "-U",
        s(&p("top.qcow2")),
    ]))
    .unwrap();
    assert_eq!(one.backing_filename, opt_str(&info["backing-filename"]));
    assert_eq!(Some(one.virtual_size), info["virtual-size"].as_u64());
    assert_eq!(one.format, "qcow2");
}

/// Reading a chain and its changes starts no process: run in a child of this test binary
/// whose PATH has no qemu-img, so any spawn would fail the reading.
#[test]
fn reading_spawns_nothing() {
    if let Some(p) = std::env::var_os("QCOW2_READER_CHILD") {
        let p = PathBuf::from(p);
        let chain = image::backing_chain(&p).unwrap();
        assert_eq!(chain.len(), 3);
        assert_eq!(image::changed_bytes(&p).unwrap(), 1 << 20);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = based(dir.path());
    let mid = dir.path().join("mid.qcow2");
    let top = dir.path().join("top.qcow2");
    create_overlay(&mid, s(&base));
    create_overlay(&top, "mid.qcow2");
    qemu_io(&top, &["write -P 1 0 1M"]);
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "reading_spawns_nothing", "--nocapture"])
        .env("QCOW2_READER_CHILD", &top)
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
