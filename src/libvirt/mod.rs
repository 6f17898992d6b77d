//! The only place that touches libvirt: the monitor (lifecycle events), the questions the
//! overlay operations ask about a domain ([`domains`]), the libvirt engine ([`engine`]), and
//! every `unsafe` call in [`ffi`].

pub mod domains;
pub mod engine;
pub mod events;
mod ffi;
pub mod model;
pub mod monitor;

pub use events::{DomainEvent, DomainSnapshot, DomainState, Lifecycle, StateKind, Stopped};
pub use model::Model;
pub use monitor::{list_domain_handles, list_domains, Monitor, MonitorConfig, MonitorEvent};

use virt::connect::Connect;

/// The default connection, as for `virsh`.
pub const DEFAULT_URI: &str = "qemu:///system";

pub use ffi::spawn_event_thread;

/// Opens a connection, making sure libvirt's event loop is registered first (libvirt requires
/// that order, and forgetting it silently loses every event and keepalive). The events are
/// dispatched by whoever runs glib's default main context: the app's or `watch`'s main loop.
pub fn open(uri: &str, read_only: bool) -> Result<Connect, virt::error::Error> {
    ffi::register_event_impl();
    if read_only {
        Connect::open_read_only(Some(uri))
    } else {
        Connect::open(Some(uri))
    }
}

/// Whether domain `name` runs (or is paused, …).
pub fn is_running(conn: &Connect, name: &str) -> Result<bool, virt::error::Error> {
    conn.lookup_domain_by_name(name)?.is_active()
}

/// Starts the defined domain `name`.
pub fn start(conn: &Connect, name: &str) -> Result<(), virt::error::Error> {
    conn.lookup_domain_by_name(name)?.create().map(|_| ())
}

/// Asks domain `name` to shut down (ACPI, or the driver's equivalent).
pub fn shutdown(conn: &Connect, name: &str) -> Result<(), virt::error::Error> {
    conn.lookup_domain_by_name(name)?.shutdown().map(|_| ())
}
