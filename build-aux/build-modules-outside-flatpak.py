#!/usr/bin/env python3
"""Builds the Flatpak manifest's dependency modules (everything but the app) on this machine,
outside Flatpak, with the manifest's own sources, checksums and options, into PREFIX.

It builds each module with exactly the manifest's options on the host, which is quicker to
debug than a module failing inside flatpak-builder. The Flatpak itself is built (against
stand-in runtimes made from Debian packages) by build-aux/flatpak-build.sh, which the tests
in tests/flatpak.rs run.

    build-aux/build-modules-outside-flatpak.py PREFIX [--cache DIR] [--only MODULE]

Needs the usual build tools (meson, ninja, a C compiler) and the -dev packages of what the
GNOME SDK provides (glib, libxml2, gnutls).
"""
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import tarfile
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
MANIFEST = HERE / "io.github.vmoverlay.VMOverlay.json"


def fetch(source, cache):
    name = source["url"].rsplit("/", 1)[1].replace("%2B", "+")
    path = cache / name
    if not path.exists():
        print(f"fetching {source['url']}", flush=True)
        with urllib.request.urlopen(source["url"]) as r, open(path, "wb") as f:
            f.write(r.read())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != source["sha256"]:
        sys.exit(f"{name}: sha256 {digest}, the manifest says {source['sha256']}")
    print(f"{name}: sha256 matches the manifest", flush=True)
    return path


def run(cmd, cwd, env):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def build(module, prefix, cache, work):
    (source,) = [s for s in module["sources"] if isinstance(s, dict) and s["type"] == "archive"]
    archive = fetch(source, cache)
    with tarfile.open(archive) as t:
        top = t.getnames()[0].split("/")[0]
        t.extractall(work, filter="tar")
    src = work / top
    env = dict(os.environ)
    env["PKG_CONFIG_PATH"] = f"{prefix}/lib/pkgconfig:{prefix}/lib/x86_64-linux-gnu/pkgconfig"
    env["PATH"] = f"{prefix}/bin:{env['PATH']}"
    cflags = module.get("build-options", {}).get("cflags", "").replace("/app", str(prefix))
    env["CFLAGS"] = (env.get("CFLAGS", "") + " " + cflags).strip()
    opts = module.get("config-opts", [])
    jobs = str(os.cpu_count() or 2)
    if module.get("buildsystem") == "meson":
        run(["meson", "setup", "_build", f"--prefix={prefix}", "--libdir=lib", *opts], src, env)
        run(["ninja", "-C", "_build", "-j", jobs], src, env)
        run(["ninja", "-C", "_build", "install"], src, env)
    else:
        run(["./configure", f"--prefix={prefix}", *opts], src, env)
        run(["make", "-j", jobs], src, env)
        run(["make", "install"], src, env)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    prefix = pathlib.Path(sys.argv[1]).resolve()
    cache = pathlib.Path(sys.argv[sys.argv.index("--cache") + 1]) if "--cache" in sys.argv else prefix / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    work = prefix / "work"
    work.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(MANIFEST.read_text())
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    for module in manifest["modules"]:
        if module["name"] == "vmoverlay" or only not in (None, module["name"]):
            continue
        print(f"== {module['name']}", flush=True)
        build(module, prefix, cache, work)
    print("all modules built", flush=True)


if __name__ == "__main__":
    main()
