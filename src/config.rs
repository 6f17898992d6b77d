//! Build-time configuration. meson passes these in the environment of the cargo build; plain
//! `cargo build` gets the defaults.

pub const APP_ID: &str = match option_env!("VMOVERLAY_APP_ID") {
    Some(v) => v,
    None => "io.github.vmoverlay.VMOverlay",
};

pub const VERSION: &str = match option_env!("VMOVERLAY_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

pub const LOCALEDIR: &str = match option_env!("VMOVERLAY_LOCALEDIR") {
    Some(v) => v,
    None => "/usr/share/locale",
};

pub const GETTEXT_PACKAGE: &str = "vmoverlay";
