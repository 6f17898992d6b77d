//! The Flatpak manifest, as far as it can be checked without a Flatpak remote: it parses, it
//! names the app as the rest of the project does, every file it names exists, every archive
//! has a sha256, its finish-args are exactly the documented ones, and its crate sources are
//! exactly Cargo.lock's (and what build-aux/flatpak-cargo-sources.py writes).
//! build-aux/build-modules-outside-flatpak.py builds the dependency modules with the same
//! sources and options (not part of this suite: it downloads and compiles for ~20 minutes).

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

const MANIFEST: &str = "build-aux/io.github.vmoverlay.VMOverlay.json";

fn read_json(rel: &str) -> Value {
    let path = common::manifest_dir().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel} is not JSON: {e}"))
}

fn modules(manifest: &Value) -> Vec<&Value> {
    manifest["modules"]
        .as_array()
        .expect("modules")
        .iter()
        .collect()
}

#[test]
fn the_manifest_names_the_app_and_only_what_exists() {
    let m = read_json(MANIFEST);
    assert_eq!(m["id"], vmoverlay::config::APP_ID);
    assert_eq!(m["command"], "vmoverlay");
    assert_eq!(m["runtime"], "org.gnome.Platform");
    assert_eq!(m["sdk"], "org.gnome.Sdk");
    assert!(m["sdk-extensions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "org.freedesktop.Sdk.Extension.rust-stable"));
    let names: Vec<&str> = modules(&m)
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "libtirpc",
            "rpcsvc-proto",
            "libvirt",
            "qemu-img",
            "vmoverlay"
        ]
    );
    let build_aux = common::manifest_dir().join("build-aux");
    for module in modules(&m) {
        for source in module["sources"].as_array().unwrap() {
            match source {
                // A file of generated sources, relative to the manifest.
                Value::String(file) => {
                    assert!(build_aux.join(file).is_file(), "{file} is missing")
                }
                s if s["type"] == "archive" => {
                    let sha = s["sha256"].as_str().unwrap_or("");
                    assert!(
                        sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
                        "{}: no sha256",
                        module["name"]
                    );
                    assert!(s["url"].as_str().unwrap().starts_with("https://"));
                }
                s if s["type"] == "dir" => {
                    let dir = build_aux.join(s["path"].as_str().unwrap());
                    assert!(dir.join("meson.build").is_file(), "{dir:?}");
                }
                other => panic!("unexpected source {other}"),
            }
        }
    }
    // The app module is built by the project's meson (which drives cargo), offline.
    let app = modules(&m)[4];
    assert_eq!(app["buildsystem"], "meson");
    assert_eq!(app["build-options"]["env"]["CARGO_NET_OFFLINE"], "true");
    // libvirt: the client library only, with the remote and test drivers.
    let opts: BTreeSet<&str> = modules(&m)[2]["config-opts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    for o in [
        "-Ddriver_remote=enabled",
        "-Ddriver_test=enabled",
        "-Ddriver_libvirtd=disabled",
        "-Ddriver_qemu=disabled",
    ] {
        assert!(opts.contains(o), "libvirt lacks {o}");
    }
    let qemu: Vec<&str> = modules(&m)[3]["config-opts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    assert!(qemu.contains(&"--enable-tools") && qemu.contains(&"--disable-system"));
}

#[test]
fn finish_args_are_exactly_the_documented_ones() {
    let m = read_json(MANIFEST);
    let args: BTreeSet<&str> = m["finish-args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let expected: BTreeSet<&str> = [
        "--socket=wayland",
        "--socket=fallback-x11",
        "--share=ipc",
        "--device=dri",
        "--filesystem=/run/libvirt",
        "--filesystem=xdg-run/libvirt",
        "--talk-name=org.kde.StatusNotifierWatcher",
    ]
    .into();
    assert_eq!(args, expected);
    // The README documents each of them.
    let readme = std::fs::read_to_string(common::manifest_dir().join("README.md")).unwrap();
    for a in &args {
        assert!(readme.contains(a), "README does not mention {a}");
    }
}

/// `(name, version, checksum)` of every registry package in Cargo.lock.
fn locked_crates() -> BTreeSet<(String, String, String)> {
    let lock = std::fs::read_to_string(common::manifest_dir().join("Cargo.lock")).unwrap();
    let mut out = BTreeSet::new();
    for block in lock.split("[[package]]").skip(1) {
        let field = |key: &str| {
            block.lines().find_map(|l| {
                l.strip_prefix(&format!("{key} = \""))
                    .and_then(|v| v.strip_suffix('"'))
                    .map(str::to_string)
            })
        };
        if field("source").is_some_and(|s| s.starts_with("registry+")) {
            out.insert((
                field("name").unwrap(),
                field("version").unwrap(),
                field("checksum").expect("a registry package has a checksum"),
            ));
        }
    }
    out
}

#[test]
fn crate_sources_are_exactly_cargo_lock() {
    let sources = read_json("build-aux/cargo-sources.json");
    let sources = sources.as_array().unwrap();
    let mut archives = BTreeSet::new();
    let mut checksum_files = BTreeSet::new();
    for s in sources {
        match s["type"].as_str().unwrap() {
            "archive" => {
                let url = s["url"].as_str().unwrap();
                let mut parts = url.rsplit('/');
                let file = parts.next().unwrap();
                let name = parts.next().unwrap();
                let version = file
                    .strip_prefix(&format!("{name}-"))
                    .and_then(|f| f.strip_suffix(".crate"))
                    .unwrap_or_else(|| panic!("{url}"));
                assert_eq!(s["dest"], format!("cargo/vendor/{name}-{version}"));
                archives.insert((
                    name.to_string(),
                    version.to_string(),
                    s["sha256"].as_str().unwrap().to_string(),
                ));
            }
            "inline" if s["dest-filename"] == ".cargo-checksum.json" => {
                let v: Value = serde_json::from_str(s["contents"].as_str().unwrap()).unwrap();
                checksum_files.insert(v["package"].as_str().unwrap().to_string());
            }
            "inline" if s["dest-filename"] == "config" => {
                assert!(s["contents"]
                    .as_str()
                    .unwrap()
                    .contains("replace-with = \"vendored-sources\""));
            }
            other => panic!("unexpected source type {other}"),
        }
    }
    let locked = locked_crates();
    assert!(locked.len() > 100, "Cargo.lock parsed: {}", locked.len());
    let missing: Vec<_> = locked.difference(&archives).collect();
    let extra: Vec<_> = archives.difference(&locked).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "run build-aux/flatpak-cargo-sources.py: missing {missing:?}, extra {extra:?}"
    );
    let sums: BTreeSet<String> = locked.iter().map(|(_, _, c)| c.clone()).collect();
    assert_eq!(checksum_files, sums);
}

#[test]
fn the_generator_reproduces_the_committed_crate_sources() {
    let out = Command::new("python3")
        .arg(common::manifest_dir().join("build-aux/flatpak-cargo-sources.py"))
        .arg("--stdout")
        .output()
        .expect("python3 runs build-aux/flatpak-cargo-sources.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed =
        std::fs::read_to_string(common::manifest_dir().join("build-aux/cargo-sources.json"))
            .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout) == committed,
        "build-aux/cargo-sources.json is stale: run build-aux/flatpak-cargo-sources.py"
    );
}
