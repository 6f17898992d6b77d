#!/usr/bin/env bash
# Stand-in Flatpak runtimes made from Debian 12 packages, under the manifest's own names
# (org.gnome.Platform, org.gnome.Sdk and org.freedesktop.Sdk.Extension.rust-stable), for
# machines that cannot reach Flathub. They are exported to an ostree repository and installed
# into a private Flatpak installation, so the manifest builds and runs unmodified:
#
#   build-aux/stand-in-runtimes.sh          # as root; prints nothing else on a cached run
#
# Everything lives under $VMOVERLAY_FLATPAK_CACHE (default /var/cache/vmoverlay-flatpak):
#   debs/        the downloaded .debs (reused when a package list changes)
#   repo/        the ostree repository (bare-user-only) with the three runtimes
#   flatpak/     the private installation: use FLATPAK_USER_DIR=<this> on every flatpak call
#   stamps/      one file per runtime: the hash of what it was made from
# A runtime is remade only when its package list, this script, or (for the rust extension)
# the host's toolchain changes; a second run takes a second or two.
#
# These are not GNOME 49 / freedesktop 25.08: they are Debian 12's GTK 4.8, libadwaita 1.2,
# glib 2.74 and the host's rust toolchain under those names. See the README.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
MANIFEST=$HERE/io.github.vmoverlay.VMOverlay.json
CACHE=${VMOVERLAY_FLATPAK_CACHE:-/var/cache/vmoverlay-flatpak}
SUITE=bookworm
MIRROR=http://deb.debian.org/debian
ARCH=x86_64
# The freedesktop SDK that GNOME 49 is built on: the rust extension's branch.
FDO_BRANCH=25.08

export FLATPAK_USER_DIR=$CACHE/flatpak
say() { echo "stand-in-runtimes: $*" >&2; }

field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))$1)" "$MANIFEST"; }
PLATFORM=$(field '["runtime"]')
SDK=$(field '["sdk"]')
BRANCH=$(field '["runtime-version"]')
RUST=$(field '["sdk-extensions"][0]')

# What the app and the manifest's modules need at run time.
PLATFORM_PKGS=(
    libgtk-4-1 libadwaita-1-0 libglib2.0-0 libglib2.0-bin dbus libxml2 libgnutls30 zlib1g
    fonts-dejavu-core adwaita-icon-theme hicolor-icon-theme shared-mime-info
    libgl1-mesa-dri libegl-mesa0 libglx-mesa0
)
# ... and to build them: the same plus compilers, build systems and headers.
SDK_PKGS=(
    "${PLATFORM_PKGS[@]}"
    build-essential meson ninja-build pkgconf python3 python3-distutils perl gettext
    appstream desktop-file-utils libxml2-utils xsltproc
    libgtk-4-dev libadwaita-1-dev libglib2.0-dev libxml2-dev libgnutls28-dev zlib1g-dev
)

mkdir -p "$CACHE"/{debs,stamps,trees}
# One maker at a time (build-aux/flatpak-build.sh holds the lock already when it calls us).
if [ -z "${VMOVERLAY_FLATPAK_LOCKED:-}" ]; then
    exec 9>"$CACHE/lock"
    flock 9
fi
if [ ! -d "$CACHE/repo/objects" ]; then
    ostree --repo="$CACHE/repo" init --mode=bare-user-only
    flatpak build-update-repo "$CACHE/repo" >/dev/null
fi
if ! flatpak --user remotes --columns=name | grep -qx stand-in; then
    flatpak --user remote-add --if-not-exists --no-gpg-verify stand-in "file://$CACHE/repo"
fi

self_hash=$(sha256sum "$0" | cut -c1-16)

# $1 id, $2 metadata, $3 tree (a directory whose /usr becomes files/).
export_tree() {
    local id=$1 metadata=$2 tree=$3 branch=$4
    local dir=$CACHE/trees/$id.export
    rm -rf "$dir"
    mkdir -p "$dir"
    printf '%s' "$metadata" >"$dir/metadata"
    mv "$tree/usr" "$dir/files"
    if [ -d "$tree/etc" ]; then
        mv "$tree/etc" "$dir/files/etc"
        rm -f "$dir/files/etc/"{passwd,group,shadow,gshadow,hosts,resolv.conf,machine-id,ld.so.cache}
    fi
    rm -rf "$tree"
    # A runtime carries no setuid/setgid programs (flatpak refuses them).
    find "$dir/files" -perm /6000 -type f -exec chmod ug-s {} +
    # Files only root can read cannot be committed to a bare-user-only repository.
    chmod -R u+rwX,go+rX "$dir/files"
    flatpak build-export --runtime --files=files --no-update-summary \
        "$CACHE/repo" "$dir" "$branch" >/dev/null
    flatpak build-update-repo "$CACHE/repo" >/dev/null
    rm -rf "$dir"
}

install_ref() {
    local ref=$1
    if flatpak --user info "$ref" >/dev/null 2>&1; then
        flatpak --user update -y --noninteractive "$ref" >/dev/null
    else
        flatpak --user install -y --noninteractive stand-in "$ref" >/dev/null
    fi
}

# $1 id, $2 metadata, then the packages.
debian_runtime() {
    local id=$1 metadata=$2
    shift 2
    local stamp
    stamp=$(printf '%s\n' "$self_hash" "$metadata" "$@" | sha256sum | cut -c1-32)
    if [ "$(cat "$CACHE/stamps/$id" 2>/dev/null)" = "$stamp" ] &&
        flatpak --user info "$id//$BRANCH" >/dev/null 2>&1; then
        return 0
    fi
    say "making $id//$BRANCH from $SUITE packages"
    local tree=$CACHE/trees/$id
    rm -rf "$tree"
    # The .debs are kept in debs/ between runs.
    mmdebstrap --quiet --variant=essential --mode=root \
        --include="$(
            IFS=,
            echo "$*"
        )" \
        --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
        --setup-hook="sync-in $CACHE/debs /var/cache/apt/archives/" \
        --customize-hook="sync-out /var/cache/apt/archives $CACHE/debs" \
        "$SUITE" "$tree" "$MIRROR"
    rm -f "$CACHE/debs/lock"
    rm -rf "$CACHE/debs/partial"
    # The SDK's extension point needs its directory (/usr is read-only in the sandbox).
    mkdir -p "$tree/usr/lib/sdk"
    export_tree "$id" "$metadata" "$tree" "$BRANCH"
    install_ref "$id//$BRANCH"
    echo "$stamp" >"$CACHE/stamps/$id"
}

debian_runtime "$PLATFORM" "[Runtime]
name=$PLATFORM
runtime=$PLATFORM/$ARCH/$BRANCH
sdk=$SDK/$ARCH/$BRANCH
" "${PLATFORM_PKGS[@]}"

# The SDK declares the extension point the rust extension plugs into, and has its directory.
SDK_METADATA="[Runtime]
name=$SDK
runtime=$PLATFORM/$ARCH/$BRANCH
sdk=$SDK/$ARCH/$BRANCH

[Extension org.freedesktop.Sdk.Extension]
directory=lib/sdk
subdirectories=true
version=$FDO_BRANCH
no-autodownload=true
"
debian_runtime "$SDK" "$SDK_METADATA" "${SDK_PKGS[@]}"

# The rust extension: the host's toolchain (rustup's sysroot: bin, lib, libexec; no docs).
sysroot=$(rustc --print sysroot)
rust_stamp=$(printf '%s\n' "$self_hash" "$(rustc -vV)" "$(cargo -V)" | sha256sum | cut -c1-32)
if [ "$(cat "$CACHE/stamps/$RUST" 2>/dev/null)" != "$rust_stamp" ] ||
    ! flatpak --user info "$RUST//$FDO_BRANCH" >/dev/null 2>&1; then
    say "making $RUST//$FDO_BRANCH from $sysroot"
    tree=$CACHE/trees/$RUST
    rm -rf "$tree"
    mkdir -p "$tree/usr"
    cp -a "$sysroot"/bin "$sysroot"/lib "$tree/usr/"
    [ -d "$sysroot/libexec" ] && cp -a "$sysroot/libexec" "$tree/usr/"
    cat >"$tree/usr/enable.sh" <<'EOF'
export PATH=$PATH:/usr/lib/sdk/rust-stable/bin
EOF
    export_tree "$RUST" "[Runtime]
name=$RUST

[ExtensionOf]
ref=runtime/$SDK/$ARCH/$BRANCH
" "$tree" "$FDO_BRANCH"
    install_ref "$RUST//$FDO_BRANCH"
    echo "$rust_stamp" >"$CACHE/stamps/$RUST"
fi
