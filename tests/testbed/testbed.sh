#!/usr/bin/env bash
# The project's test bed: a real libvirtd (with virtlogd) on its own socket directory.
#   testbed.sh install   Debian packages the tests need (root)
#   testbed.sh start     start virtlogd + libvirtd if not running; wait until it answers
#   testbed.sh stop      stop libvirtd (SIGTERM; QEMU processes keep running, as with systemd)
#   testbed.sh kill      SIGKILL libvirtd (a crash)
#   testbed.sh freeze    SIGSTOP libvirtd (a hung daemon: its socket stays open)
#   testbed.sh thaw      SIGCONT libvirtd
#   testbed.sh uri       print the connection URI of the test bed
set -euo pipefail

SOCK_DIR=/run/vmoverlay-testbed
PIDFILE=$SOCK_DIR/libvirtd.pid
SUPERVISOR=$SOCK_DIR/supervisor.pid
DOWN=$SOCK_DIR/libvirtd.down
URI="qemu:///system?socket=$SOCK_DIR/libvirt-sock"
HERE=$(cd "$(dirname "$0")" && pwd)

say() { echo "testbed: $*" >&2; }

# flatpak-builder >= 1.4 (the Flatpak tests) comes from bookworm-backports; bookworm's 1.2.3
# cannot build the manifest (it gives meson no --libdir). Backports stay at apt's priority 100:
# nothing else is taken from there unless asked for.
enable_backports() {
    if ! grep -rqs --include='*.list' --include='*.sources' bookworm-backports \
        /etc/apt/sources.list /etc/apt/sources.list.d/; then
        cat >/etc/apt/sources.list.d/vmoverlay-bookworm-backports.sources <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
}

install_packages() {
    export DEBIAN_FRONTEND=noninteractive
    enable_backports
    apt-get update -q
    # qemu-system-x86 7.2 and a newer qemu-utils (backports) conflict: pin qemu-utils to the
    # same version as qemu-system-x86 and install both in one call, or qemu-img disappears.
    local v
    v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2}')
    apt-get install -y -q --no-install-recommends --allow-downgrades \
        libvirt-dev libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients tini \
        qemu-system-x86 "qemu-utils=$v" \
        linux-image-cloud-amd64 busybox-static \
        libgtk-4-dev libadwaita-1-dev meson gettext \
        pkg-config gcc util-linux bsdutils procps \
        xvfb xauth dbus dbus-x11 systemd openbox xfce4-panel xdotool imagemagick \
        sway waybar grim dunst fonts-dejavu-core adwaita-icon-theme \
        desktop-file-utils appstream python3 ovmf \
        xdg-desktop-portal xdg-desktop-portal-gnome xdg-desktop-portal-gtk bubblewrap \
        flatpak ostree mmdebstrap elfutils flatpak-builder/bookworm-backports
    # The real shells the desktop tests run the app in (tests/gnome_shell.rs, tests/kde_plasma.rs):
    # GNOME Shell 43 with the AppIndicator extension (gjs runs GNOME's notification service),
    # KDE Plasma 5.27 on X11 and Wayland; an AT-SPI client (python3-gi) that finds what the
    # shells and the app draw, and GdkPixbuf to save KWin's screenshots (tests/shells/atspi.py).
    apt-get install -y -q --no-install-recommends \
        gnome-shell gnome-shell-extension-appindicator gjs \
        plasma-workspace plasma-desktop kwin-wayland kwin-x11 qtwayland5 \
        at-spi2-core gir1.2-atspi-2.0 gir1.2-gdkpixbuf-2.0 python3-gi
}

running() {
    [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

prepare() {
    mkdir -p /var/log/libvirt /var/run/libvirt /var/lib/libvirt/images "$SOCK_DIR"
    # The qemu driver refuses to initialise without these, even when guests run as root.
    getent group kvm >/dev/null || groupadd -r kvm
    getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
    id libvirt-qemu >/dev/null 2>&1 ||
        useradd -r -s /usr/sbin/nologin -g libvirt-qemu -G kvm libvirt-qemu
    # The qemu driver of a privileged libvirtd reads only /etc/libvirt/qemu.conf.
    if ! cmp -s "$HERE/qemu.conf" /etc/libvirt/qemu.conf; then
        [ -f /etc/libvirt/qemu.conf ] && [ ! -f /etc/libvirt/qemu.conf.vmoverlay-orig ] &&
            cp /etc/libvirt/qemu.conf /etc/libvirt/qemu.conf.vmoverlay-orig
        install -m 0600 "$HERE/qemu.conf" /etc/libvirt/qemu.conf
    fi
}

start() {
    prepare
    pgrep -x virtlogd >/dev/null || virtlogd -d
    rm -f "$DOWN"
    if running && ! supervised; then
        # Started by an older testbed.sh: hand it over to a supervisor (guests keep running).
        stop_with TERM
        rm -f "$DOWN"
    fi
    if ! supervised; then
        # libvirtd runs under tini as a child subreaper, as it runs under systemd on a real
        # host: the QEMU processes it daemonizes are reaped the moment they exit. This
        # sandbox's PID 1 reaps orphans late, and libvirt waits for the zombie to go: every
        # destroy of a domain took 1.4-2.3 s here instead of milliseconds.
        # tini's child is a loop that outlives libvirtd (tests kill and restart it), so a
        # guest's QEMU that dies while libvirtd is down is reaped too: otherwise the restarted
        # libvirtd finds its zombie "alive" and waits 30 s for its monitor.
        setsid tini -s -- sh -c '
            echo $$ > "$1"
            while :; do
                if [ -e "$2" ]; then sleep 0.1; continue; fi
                libvirtd --listen -f "$3" -p "$4"
                sleep 0.1
            done' supervisor "$SUPERVISOR" "$DOWN" "$HERE/libvirtd.conf" "$PIDFILE" \
            </dev/null >/dev/null 2>&1 &
    fi
    for _ in $(seq 1 200); do
        if virsh -q -c "$URI" version >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.05
    done
    say "libvirtd did not answer on $URI; see /var/log/libvirt/vmoverlay-testbed.log"
    exit 1
}

supervised() {
    [ -f "$SUPERVISOR" ] && kill -0 "$(cat "$SUPERVISOR")" 2>/dev/null
}

# Stops libvirtd and keeps it down until the next start (its supervisor stays).
stop_with() {
    local sig=$1
    mkdir -p "$SOCK_DIR"
    touch "$DOWN"
    if running; then
        local pid
        pid=$(cat "$PIDFILE")
        kill "-$sig" "$pid"
        for _ in $(seq 1 200); do
            kill -0 "$pid" 2>/dev/null || return 0
            sleep 0.05
        done
        say "libvirtd $pid did not exit"
        exit 1
    fi
}

case "${1:-}" in
    install) install_packages ;;
    start) start ;;
    stop) stop_with TERM ;;
    kill) stop_with KILL ;;
    freeze) kill -STOP "$(cat "$PIDFILE")" ;;
    thaw) kill -CONT "$(cat "$PIDFILE")" ;;
    uri) echo "$URI" ;;
    tcp-uri) echo "qemu+tcp://127.0.0.1:16510/system" ;;
    *) echo "usage: $0 install|start|stop|kill|freeze|thaw|uri|tcp-uri" >&2; exit 64 ;;
esac
