#!/usr/bin/env python3
"""Writes build-aux/cargo-sources.json from Cargo.lock: every crate of the lock file as a
Flatpak source (the .crate archive with the lock file's sha256, unpacked into a vendor
directory), and the cargo configuration that builds from that directory, offline.

    build-aux/flatpak-cargo-sources.py            # rewrite build-aux/cargo-sources.json
    build-aux/flatpak-cargo-sources.py --stdout   # print it instead

Run it after every change of Cargo.lock; tests/flatpak.rs fails while the two disagree.
"""
import json
import pathlib
import sys
import tomllib

HERE = pathlib.Path(__file__).resolve().parent
REGISTRY = "registry+https://github.com/rust-lang/crates.io-index"
CRATES = "https://static.crates.io/crates"


def sources(lock):
    out = []
    for pkg in lock["package"]:
        if pkg.get("source") != REGISTRY:
            continue  # this project itself (path) has no archive
        name, version, checksum = pkg["name"], pkg["version"], pkg["checksum"]
        dest = f"cargo/vendor/{name}-{version}"
        out.append({
            "type": "archive",
            "archive-type": "tar-gzip",
            "url": f"{CRATES}/{name}/{name}-{version}.crate",
            "sha256": checksum,
            "dest": dest,
        })
        out.append({
            "type": "inline",
            "contents": json.dumps({"package": checksum, "files": {}}),
            "dest": dest,
            "dest-filename": ".cargo-checksum.json",
        })
    out.append({
        "type": "inline",
        "contents": "[source.vendored-sources]\ndirectory = \"cargo/vendor\"\n\n"
                    "[source.crates-io]\nreplace-with = \"vendored-sources\"\n",
        "dest": "cargo",
        "dest-filename": "config.toml",
    })
    return out


def main():
    lock = tomllib.loads((HERE.parent / "Cargo.lock").read_text())
    text = json.dumps(sources(lock), indent=2) + "\n"
    if "--stdout" in sys.argv:
        sys.stdout.write(text)
    else:
        (HERE / "cargo-sources.json").write_text(text)


if __name__ == "__main__":
    main()
