#!/usr/bin/env bash
# What building and running VM Overlay needs on Debian 12, and nothing more (the test suite's
# test bed — a guest kernel, desktops, portals — is installed by tests/testbed/testbed.sh).
# Run as root, or it asks sudo for the package step only.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# Build: the C libraries the crates bind to, meson and gettext. Run: libvirt's client tools
# and qemu-img/qemu-io (the demo's images and the qemu-img engine).
$SUDO apt-get install -y -q --no-install-recommends \
    libvirt-dev libgtk-4-dev libadwaita-1-dev pkg-config gcc meson gettext \
    libvirt-clients qemu-utils
if ! command -v cargo >/dev/null; then
    echo "install-deps: cargo is not installed; get Rust from https://rustup.rs" >&2
    exit 1
fi
