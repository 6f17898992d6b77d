//! The only place that touches libvirt.

pub mod events;
mod ffi;
pub mod model;
pub mod monitor;

pub use events::{DomainEvent, DomainSnapshot, DomainState, Lifecycle, StateKind, Stopped};
pub use model::Model;
pub use monitor::{list_domains, Monitor, MonitorConfig, MonitorEvent};

use virt::connect::Connect;

/// The default connection, as for `virsh`.
pub const DEFAULT_URI: &str = "qemu:///system";

/// Opens a connection, making sure libvirt's event loop is registered first (libvirt requires
/// that order, and forgetting it silently loses every event and keepalive).
pub fn open(uri: &str, read_only: bool) -> Result<Connect, virt::error::Error> {
    ffi::ensure_event_loop();
    if read_only {
        Connect::open_read_only(Some(uri))
    } else {
        Connect::open(Some(uri))
    }
}
