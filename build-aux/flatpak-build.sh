#!/usr/bin/env bash
# Builds build-aux/io.github.vmoverlay.VMOverlay.json with flatpak-builder (>= 1.4) against the
# stand-in runtimes (build-aux/stand-in-runtimes.sh) and installs the app into the private
# installation, ready for `flatpak run`:
#
#   build-aux/flatpak-build.sh                # as root
#   FLATPAK_USER_DIR=/var/cache/vmoverlay-flatpak/flatpak \
#       flatpak --user run io.github.vmoverlay.VMOverlay status
#
# flatpak-builder's state (downloads, the stage cache of each module) is kept in
# $VMOVERLAY_FLATPAK_CACHE/builder, so only what changed is rebuilt: libtirpc, rpcgen,
# libvirt and qemu-img come from the cache while the runtimes and their manifest entries stay
# the same; the app is rebuilt (from scratch: cargo's release build) when its files change,
# and nothing is built when nothing changed. The log of the last build is $CACHE/build.log.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
MANIFEST=$HERE/io.github.vmoverlay.VMOverlay.json
CACHE=${VMOVERLAY_FLATPAK_CACHE:-/var/cache/vmoverlay-flatpak}
export VMOVERLAY_FLATPAK_CACHE=$CACHE
export FLATPAK_USER_DIR=$CACHE/flatpak
say() { echo "flatpak-build: $*" >&2; }

version=$(flatpak-builder --version 2>/dev/null | sed -n 's/^flatpak-builder-//p')
case "$version" in
    1.[4-9]* | 1.[1-9][0-9]* | [2-9]*) ;;
    *)
        say "needs flatpak-builder >= 1.4 (found '${version:-none}'; Debian 12: apt-get install -t bookworm-backports flatpak-builder, or tests/testbed/testbed.sh install)"
        exit 1
        ;;
esac

mkdir -p "$CACHE"
# One build at a time on this machine (the cache, the installation and the build dir are shared).
exec 9>"$CACHE/lock"
flock 9
export VMOVERLAY_FLATPAK_LOCKED=1

"$HERE/stand-in-runtimes.sh"

# flatpak-builder always rebuilds a module with a `dir` source (it cannot checksum one), so a
# build is skipped here when the installed app was built from the same files: the manifest,
# the crate sources, the runtimes and every file of the checkout the app is built from (the
# tests, benchmarks and documents are not).
checkout=$(cd "$HERE/.." && pwd)
stamp_file=$CACHE/stamps/app
app_stamp() {
    {
        cat "$CACHE"/stamps/org.* "$MANIFEST" "$HERE/cargo-sources.json"
        cd "$checkout" &&
            git ls-files -z --cached --others --exclude-standard -- . \
                ':!tests' ':!benches' ':!*.md' ':!target' |
            sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-32
}
stamp=
if git -C "$checkout" rev-parse --git-dir >/dev/null 2>&1; then
    stamp=$(app_stamp)
fi
app_id=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['id'])" "$MANIFEST")
if [ -n "$stamp" ] && [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ] &&
    flatpak --user info "$app_id" >/dev/null 2>&1; then
    say "$app_id is installed from these sources already"
    exit 0
fi
rm -f "$stamp_file"

start=$(date +%s)
# --disable-rofiles-fuse: no FUSE here.
if ! flatpak-builder --user --install --force-clean --disable-rofiles-fuse \
    --state-dir="$CACHE/builder" --repo="$CACHE/app-repo" \
    "$CACHE/build" "$MANIFEST" >"$CACHE/build.log" 2>&1; then
    tail -n 60 "$CACHE/build.log" >&2
    say "flatpak-builder failed; the whole log is $CACHE/build.log"
    exit 1
fi
[ -z "$stamp" ] || echo "$stamp" >"$stamp_file"
say "built and installed $app_id in $(($(date +%s) - start)) s ($(grep -c '^Cache hit' "$CACHE/build.log" || true) modules from the stage cache)"
