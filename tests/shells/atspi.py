#!/usr/bin/python3
"""Tests only (tests/common/shells.rs): what a user sees in a session, read from outside.

  atspi.py find APP ROLE NAME          JSON list of matching accessibles (AT-SPI): role, name,
                                       extents (screen; window-relative for GTK 4), actions
  atspi.py act APP ROLE NAME ACTION    performs the named AT-SPI action on the first match
                                       that has a size
  atspi.py windows                     what AT-SPI sees: each application's windows (diagnostics)
  atspi.py kwin-screenshot PATH        the whole workspace as PNG, through KWin's ScreenShot2
                                       (kwin runs with KWIN_SCREENSHOT_NO_PERMISSION_CHECKS=1)

NAME matches when it is contained in the accessible's name, ROLE "*" any role; APP is the application's AT-SPI
name (plasmashell, vmoverlay), or APP/TITLE to look only inside its window titled TITLE.
Prints JSON; exits 1 with a message when nothing matches.
"""
import json
import os
import sys

import gi

gi.require_version("Atspi", "2.0")
gi.require_version("GdkPixbuf", "2.0")
from gi.repository import Atspi, GdkPixbuf, Gio, GLib  # noqa: E402


def walk(node, depth=0):
    if node is None or depth > 40:
        return
    yield node
    try:
        count = node.get_child_count()
    except GLib.Error:
        return
    for i in range(count):
        try:
            child = node.get_child_at_index(i)
        except GLib.Error:
            continue
        yield from walk(child, depth + 1)


def roots(app):
    """The application's accessible, or its frames named FRAME when APP is "APP/FRAME"."""
    app, _, frame = app.partition("/")
    desktop = Atspi.get_desktop(0)
    for i in range(desktop.get_child_count()):
        a = desktop.get_child_at_index(i)
        if a is None or a.get_name() != app:
            continue
        if not frame:
            yield a
            continue
        for j in range(a.get_child_count()):
            w = a.get_child_at_index(j)
            if w is not None and w.get_name() == frame:
                yield w


def matches(app, role, name):
    for root in roots(app):
        for node in walk(root):
            try:
                if role in ("*", node.get_role_name()) and name in (node.get_name() or ""):
                    yield node
            except GLib.Error:
                continue


def describe(node):
    e = node.get_extents(Atspi.CoordType.SCREEN)
    actions = [Atspi.Action.get_action_name(node, j) for j in range(Atspi.Action.get_n_actions(node))]
    return {
        "role": node.get_role_name(),
        "name": node.get_name(),
        "extents": [e.x, e.y, e.width, e.height],
        "actions": actions,
        "showing": node.get_state_set().contains(Atspi.StateType.SHOWING),
    }


def screenshot(path):
    bus = Gio.bus_get_sync(Gio.BusType.SESSION, None)
    r, w = os.pipe()
    fds = Gio.UnixFDList.new_from_array([w])  # owns w from here on
    res, _ = bus.call_with_unix_fd_list_sync(
        "org.kde.KWin.ScreenShot2", "/org/kde/KWin/ScreenShot2", "org.kde.KWin.ScreenShot2",
        "CaptureWorkspace", GLib.Variant("(a{sv}h)", ({}, 0)), GLib.VariantType("(a{sv})"),
        Gio.DBusCallFlags.NONE, 10000, fds, None)
    del fds  # closes our write end: the read below ends when KWin closes its copy
    meta = res.unpack()[0]
    with os.fdopen(r, "rb") as f:
        data = f.read()
    # QImage ARGB32 (premultiplied; opaque here) is B, G, R, A in memory on little-endian.
    rgba = bytearray(len(data))
    rgba[0::4], rgba[1::4], rgba[2::4], rgba[3::4] = data[2::4], data[1::4], data[0::4], data[3::4]
    GdkPixbuf.Pixbuf.new_from_bytes(
        GLib.Bytes.new(bytes(rgba)), GdkPixbuf.Colorspace.RGB, True, 8,
        meta["width"], meta["height"], meta["stride"]).savev(path, "png", [], [])
    print(json.dumps({k: meta[k] for k in ("width", "height")}))


def windows():
    desktop = Atspi.get_desktop(0)
    out = {}
    for i in range(desktop.get_child_count()):
        a = desktop.get_child_at_index(i)
        if a is None:
            continue
        out.setdefault(a.get_name(), []).extend(
            f"{w.get_role_name()} {w.get_name()!r}"
            for w in (a.get_child_at_index(j) for j in range(a.get_child_count()))
            if w is not None)
    print(json.dumps(out))


def main(argv):
    if argv[1] == "kwin-screenshot":
        return screenshot(argv[2])
    if argv[1] == "windows":
        return windows()
    app, role, name = argv[2:5]
    found = list(matches(app, role, name))
    if argv[1] == "find":
        print(json.dumps([describe(n) for n in found]))
        return 0
    if not found:
        print(f"no {role} named {name!r} in {app}", file=sys.stderr)
        return 1
    # Prefer what has a size: libadwaita keeps a hidden second row of a dialog's buttons.
    node = next((n for n in found if describe(n)["extents"][2] > 0), found[0])
    for j in range(Atspi.Action.get_n_actions(node)):
        if Atspi.Action.get_action_name(node, j) == argv[5]:
            print(json.dumps(Atspi.Action.do_action(node, j)))
            return 0
    print(f"{role} {name!r} has no action {argv[5]}: {describe(node)['actions']}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv) or 0)
