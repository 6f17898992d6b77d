//! VM Overlay: keeps libvirt/QEMU guests disposable.
//!
//! `libvirt` watches domains (the only module that touches libvirt), `cli` implements the
//! scriptable subcommands. See DESIGN in the README for how data flows.

pub mod machine;
pub mod cli;
pub mod config;
pub mod demo;
pub mod i18n;
pub mod libvirt;
pub mod overlay;
pub mod settings;
pub mod tray;
pub mod ui;
pub mod units;
