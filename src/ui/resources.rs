//! The compiled UI resources (`src/ui/resources.gresource.xml`, built by `build.rs`).

use std::sync::Once;

use gtk::gio;

/// Registers the UI templates (`/io/github/vmoverlay/VMOverlay/ui/…`) with GIO. The
/// application calls it once at startup, before any window is built; calling it again does
/// nothing, so widgets that need their template may call it too.
pub fn register_resources() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        gio::resources_register_include!("vmoverlay.gresource")
            .expect("the UI resources compiled in by build.rs are valid");
    });
}
