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
