//! Widgets only: the prompt, the status window, and the sentences notifications carry. They
//! act through the application's actions and know nothing of libvirt or the images.

pub mod notice;
pub mod prompt;
pub mod status;

/// Registers the compiled resources (the status window's layout) once per process.
pub fn register_resources() {}
