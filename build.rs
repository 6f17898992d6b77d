//! Compiles the UI resources (GtkBuilder templates) into `$OUT_DIR/vmoverlay.gresource`,
//! which `vmoverlay::ui::register_resources()` embeds. `compile_resources` also prints
//! `rerun-if-changed` for the manifest and every file it lists, so editing a `.ui` file
//! rebuilds. Needs `glib-compile-resources` (Debian: libglib2.0-dev-bin, pulled in by
//! libgtk-4-dev); nothing from meson.

fn main() {
    if std::process::Command::new("glib-compile-resources")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!(
            "glib-compile-resources is not installed: it compiles src/ui/*.ui into the \
             program (Debian: apt-get install libglib2.0-dev-bin, or libgtk-4-dev)"
        );
    }
    glib_build_tools::compile_resources(
        &["src"],
        "src/ui/resources.gresource.xml",
        "vmoverlay.gresource",
    );
}
