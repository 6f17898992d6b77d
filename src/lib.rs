//! VM Overlay keeps libvirt/QEMU guests disposable: when a guest shuts down, the user commits
//! its qcow2 overlay into the base, discards it, or decides later.
//!
//! Data flows one way: libvirt's thread → [`libvirt::Monitor`] → [`machine::Machine`] on the
//! glib main loop → a prompt, the tray, a notification or a job of [`jobs`] → its result back
//! into the machine. The modules, from the entry point down:
//!
//! - [`application`]: the `adw::Application` subclass; owns everything the desktop app runs;
//! - [`cli`]: the scriptable subcommands (`status`, `watch`, `commit`, `discard`, `adopt`,
//!   `release`, and history: `history`, `rollback`, `undo`, `pin`, `unpin`, `keep`);
//! - [`jobs`]: the one operation pipeline the CLI and the application share (plan, run,
//!   recover, record);
//! - [`machine`]: the pure state machine of the desktop app (events and choices in, effects out);
//! - [`ui`]: widgets only (the prompt, the status window, a VM's history window, the
//!   confirmations) and notification sentences;
//! - [`tray`]: the StatusNotifierItem (ksni), plain state and a sender;
//! - [`demo`]: `--demo`, a guest on libvirt's test driver with real images;
//! - [`autostart`]: start at login (an XDG autostart entry, or the Background portal);
//! - [`overlay`]: the overlay operations on images, without GTK or libvirt;
//! - [`libvirt`]: the only module that touches libvirt (and the only `unsafe`);
//! - [`settings`]: per-user settings files; [`hook`]: test hooks; [`i18n`]: translations;
//!   [`config`]: build-time configuration; [`units`]: sizes as people read them.

pub mod application;
pub mod autostart;
pub mod cli;
pub mod config;
pub mod demo;
pub mod hook;
pub mod i18n;
pub mod jobs;
pub mod libvirt;
pub mod machine;
pub mod overlay;
pub mod settings;
pub mod tray;
pub mod ui;
pub mod units;
