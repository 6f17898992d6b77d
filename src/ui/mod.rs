//! Widgets only: the prompt, the status window (its layout in `.ui` files compiled into a
//! gresource), and the sentences notifications carry. They act through the application's
//! actions and know nothing of libvirt or the images.

pub mod confirm;
pub mod history;
pub mod notice;
pub mod prompt;
mod resources;
pub mod status;
mod vm_row;

pub use resources::register_resources;

use gtk::glib;
use gtk::prelude::*;

/// Makes a window that is used once (a prompt, a question) hide when it closes, and be
/// destroyed a second later.
///
/// GTK 4.8 on Wayland with the cairo renderer frees a window's shared-memory buffers when the
/// compositor releases them, and a compositor releases nothing of a surface that is destroyed
/// while it shows: every prompt destroyed on close kept its two buffers (0.7 MiB) for the
/// app's lifetime (20 prompts: 14 MiB). Hidden first, the surface drops its buffer and the
/// compositor releases them; then the window goes.
pub fn destroy_after_hiding(window: &impl IsA<gtk::Window>) {
    let window = window.upcast_ref::<gtk::Window>();
    window.set_hide_on_close(true);
    window.connect_hide(|w| {
        let w = w.clone();
        glib::timeout_add_local_once(std::time::Duration::from_secs(1), move || w.destroy());
    });
}
