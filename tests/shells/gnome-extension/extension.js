// Tests only (tests/common/shells.rs installs it into a throw-away session): GNOME 43 locks
// org.gnome.Shell.Eval and org.gnome.Shell.Screenshot, and activating a tray menu item from
// JavaScript without an input event fails, so the tests get these methods instead.
// The pointer is a Clutter virtual device: its clicks go through the shell's real input path.
/* exported init enable disable */
const { Gio, GLib, Clutter, Shell } = imports.gi;
// Reachable from evaluated code.
const Main = imports.ui.main; // eslint-disable-line no-unused-vars

const IFACE = `<node><interface name="org.vmoverlay.TestShell">
  <method name="Eval"><arg type="s" name="code" direction="in"/><arg type="s" name="json" direction="out"/></method>
  <method name="Screenshot"><arg type="s" name="path" direction="in"/></method>
  <method name="Click">
    <arg type="d" name="x" direction="in"/><arg type="d" name="y" direction="in"/>
    <arg type="u" name="button" direction="in"/>
  </method>
  <method name="Move">
    <arg type="d" name="x" direction="in"/><arg type="d" name="y" direction="in"/>
  </method>
</interface></node>`;

class TestShell {
    constructor() {
        this._pointer = Clutter.get_default_backend().get_default_seat()
            .create_virtual_device(Clutter.InputDeviceType.POINTER_DEVICE);
    }

    Eval(code) {
        // Direct eval: the code sees this module's `Main` and `imports`.
        return JSON.stringify(eval(code) ?? null); // eslint-disable-line no-eval
    }

    ScreenshotAsync([path], invocation) {
        const shooter = new Shell.Screenshot();
        const stream = Gio.File.new_for_path(path)
            .replace(null, false, Gio.FileCreateFlags.NONE, null);
        shooter.screenshot(false, stream, (_o, res) => {
            try {
                shooter.screenshot_finish(res);
                stream.close(null);
                invocation.return_value(null);
            } catch (e) {
                invocation.return_gerror(e);
            }
        });
    }

    Click(x, y, button) {
        const now = GLib.get_monotonic_time();
        this._pointer.notify_absolute_motion(now, x, y);
        this._pointer.notify_button(now + 1000, button, Clutter.ButtonState.PRESSED);
        this._pointer.notify_button(now + 2000, button, Clutter.ButtonState.RELEASED);
    }

    // The pointer moves there without a click (hovering a banner expands it).
    Move(x, y) {
        this._pointer.notify_absolute_motion(GLib.get_monotonic_time(), x, y);
    }
}

let exported = null;
let nameId = 0;

function init() {}

function enable() {
    exported = Gio.DBusExportedObject.wrapJSObject(IFACE, new TestShell());
    exported.export(Gio.DBus.session, '/org/vmoverlay/TestShell');
    nameId = Gio.bus_own_name(Gio.BusType.SESSION, 'org.vmoverlay.TestShell',
        Gio.BusNameOwnerFlags.NONE, null, null, null);
}

function disable() {
    exported?.unexport();
    exported = null;
    if (nameId)
        Gio.bus_unown_name(nameId);
    nameId = 0;
}
