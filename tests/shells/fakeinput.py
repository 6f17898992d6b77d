#!/usr/bin/python3
"""Tests only (tests/common/shells.rs): real pointer and keyboard input into KWin on Wayland.

KWin offers privileged clients the Wayland interface org_kde_kwin_fake_input (Plasma's own
tools such as KDE Connect use it); its events go through KWin's input stack like a device's.
The test's kwin runs with KWIN_WAYLAND_NO_PERMISSION_CHECKS=1, so this script may bind it.

  fakeinput.py STEP...
    move X Y          pointer to (X, Y), in the compositor's global coordinates
    click BUTTON      press and release: left, right, middle
    key NAME          press and release: down, up, left, right, return, escape
    sleep MS          wait

Speaks the Wayland wire protocol itself (a few messages; no library), and waits after each
step for the compositor to have handled it (wl_display.sync). Exits 1 with a message when
there is no compositor or it does not offer the interface.
"""
import os
import socket
import struct
import sys
import time

BUTTONS = {"left": 0x110, "right": 0x111, "middle": 0x112}  # linux/input-event-codes.h
KEYS = {"escape": 1, "return": 28, "up": 103, "left": 105, "right": 106, "down": 108}

# org_kde_kwin_fake_input requests, in the protocol's order (fake-input.xml).
AUTHENTICATE, BUTTON, MOTION_ABSOLUTE, KEYBOARD_KEY = 0, 2, 9, 10


def string(s):
    b = s.encode() + b"\0"
    return struct.pack("<I", len(b)) + b + b"\0" * (-len(b) % 4)


def fixed(v):
    return struct.pack("<i", int(round(v * 256)))


class Wayland:
    def __init__(self):
        path = os.path.join(os.environ["XDG_RUNTIME_DIR"], os.environ.get("WAYLAND_DISPLAY", "wayland-0"))
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.next_id = 2
        self.buf = b""

    def new_id(self):
        i = self.next_id
        self.next_id += 1
        return i

    def send(self, obj, opcode, payload=b""):
        self.sock.sendall(struct.pack("<II", obj, (8 + len(payload)) << 16 | opcode) + payload)

    def events(self):
        while True:
            while len(self.buf) >= 8:
                obj, word = struct.unpack_from("<II", self.buf)
                size = word >> 16
                if len(self.buf) < size:
                    break
                body, self.buf = self.buf[8:size], self.buf[size:]
                yield obj, word & 0xFFFF, body
            data = self.sock.recv(65536)
            if not data:
                sys.exit("the compositor closed the connection (a protocol error?)")
            self.buf += data

    def roundtrip(self, on_event=None):
        """wl_display.sync: every request sent before has been handled when 'done' arrives."""
        callback = self.new_id()
        self.send(1, 0, struct.pack("<I", callback))
        for obj, opcode, body in self.events():
            if obj == callback:
                return
            if obj == 1 and opcode == 0:  # wl_display.error
                oid, code = struct.unpack_from("<II", body)
                (n,) = struct.unpack_from("<I", body, 8)
                sys.exit(f"Wayland error on object {oid} ({code}): {body[12:12 + n - 1].decode()}")
            if on_event:
                on_event(obj, opcode, body)


def press(wl, fake, request, code):
    """Presses and releases a button or key (state 1, then 0)."""
    wl.send(fake, request, struct.pack("<II", code, 1))
    wl.roundtrip()
    time.sleep(0.05)
    wl.send(fake, request, struct.pack("<II", code, 0))


def main(steps):
    wl = Wayland()
    registry = wl.new_id()
    wl.send(1, 1, struct.pack("<I", registry))  # wl_display.get_registry
    globals_ = {}

    def on_global(obj, opcode, body):
        if obj == registry and opcode == 0:  # wl_registry.global(name, interface, version)
            name, n = struct.unpack_from("<II", body)
            interface = body[8:8 + n - 1].decode()
            (version,) = struct.unpack_from("<I", body, 8 + n + (-n % 4))
            globals_[interface] = (name, version)

    wl.roundtrip(on_global)
    if "org_kde_kwin_fake_input" not in globals_:
        sys.exit(f"the compositor offers no org_kde_kwin_fake_input; it has: {sorted(globals_)}")
    name, version = globals_["org_kde_kwin_fake_input"]
    if version < 4:
        sys.exit(f"org_kde_kwin_fake_input version {version} has no keyboard (4 needed)")
    fake = wl.new_id()
    wl.send(registry, 0, struct.pack("<I", name) + string("org_kde_kwin_fake_input")
            + struct.pack("<II", 4, fake))  # wl_registry.bind
    wl.send(fake, AUTHENTICATE, string("vmoverlay tests") + string("drive Plasma like a user"))
    wl.roundtrip()

    it = iter(steps)
    for step in it:
        if step == "move":
            x, y = float(next(it)), float(next(it))
            wl.send(fake, MOTION_ABSOLUTE, fixed(x) + fixed(y))
        elif step == "click":
            press(wl, fake, BUTTON, BUTTONS[next(it)])
        elif step == "key":
            press(wl, fake, KEYBOARD_KEY, KEYS[next(it)])
        elif step == "sleep":
            wl.roundtrip()
            time.sleep(int(next(it)) / 1000)
        else:
            sys.exit(f"unknown step {step!r}")
        wl.roundtrip()


if __name__ == "__main__":
    main(sys.argv[1:])
