//! Every `unsafe` line of the project lives here.
//!
//! `virt` 0.5 has no safe wrapper for domain events or the close callback, so this module
//! registers them through `virt::sys` and hands the rest of the program plain Rust values.
//! Rules kept here:
//! - callbacks never unwind across the C boundary (`catch_unwind`, and a panic is logged);
//! - a borrowed `virDomainPtr` is only read during the callback, never wrapped in an owning type;
//! - every registration is undone when its guard is dropped, and its boxed closure is freed by
//!   libvirt through the `freecb` we pass, exactly once.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use virt::connect::Connect;
use virt::sys;

/// What a lifecycle callback learns about the domain; copied out of the borrowed pointer.
#[derive(Debug, Clone)]
pub struct RawLifecycle {
    pub name: String,
    pub uuid: String,
    pub event: i32,
    pub detail: i32,
}

type LifecycleFn = Box<dyn Fn(RawLifecycle) + Send + 'static>;
type CloseFn = Box<dyn Fn(i32) + Send + 'static>;

static EVENT_IMPL: Once = Once::new();

/// Registers libvirt's default event-loop implementation, once, before any connection.
///
/// Since libvirt 6.1 that implementation is GLib's *global default* `GMainContext`
/// (`vireventglib.c`): libvirt's sockets, timers and keepalives become sources on it, and
/// `virEventRunDefaultImpl()` is just `g_main_context_iteration(NULL, TRUE)`. So the process's
/// one glib main loop (the app's, or `watch`'s) runs libvirt's events; a second thread calling
/// `virEventRunDefaultImpl()` would also dispatch GTK's and our own main-context sources on the
/// wrong thread. `crate::libvirt::open` calls this, so no connection can precede it.
pub fn register_event_impl() {
    EVENT_IMPL.call_once(|| {
        // Silence libvirt's default handler that prints every error to stderr; errors are
        // returned to us as values and reported by the caller.
        virt::error::clear_error_callback();
        // SAFETY: takes no arguments and only installs libvirt's own implementation;
        // `Once` guarantees it runs a single time, before any connection exists.
        if unsafe { sys::virEventRegisterDefaultImpl() } < 0 {
            log::error!("virEventRegisterDefaultImpl failed: {}", last_error());
        }
    });
}

/// Runs libvirt's event loop (the default main context) on a thread of its own, for processes
/// that have no glib main loop of their own (tests, benchmarks, embedders). Never call it in a
/// process that runs a glib or GTK main loop.
pub fn spawn_event_thread() {
    static THREAD: Once = Once::new();
    register_event_impl();
    THREAD.call_once(|| {
        std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                // SAFETY: the default implementation is registered above; this is the only
                // thread of the process that iterates it.
                if unsafe { sys::virEventRunDefaultImpl() } < 0 {
                    log::error!("virEventRunDefaultImpl failed: {}", last_error());
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            })
            .expect("spawn libvirt event loop thread");
    });
}

fn last_error() -> String {
    virt::error::Error::last_error().message().to_string()
}

/// Copies a C string owned by libvirt; `None` for NULL.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string valid for the duration of the call.
unsafe fn copy_cstr(p: *const c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        Some(CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

unsafe extern "C" fn lifecycle_trampoline(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: `opaque` is the `Box<LifecycleFn>` leaked in `register_lifecycle`; libvirt keeps
    // it alive until it calls `free_lifecycle`, which happens only after the last callback.
    let f = &*(opaque as *const LifecycleFn);
    // SAFETY: `dom` is borrowed for the duration of the callback; we only read its name and
    // UUID into owned Strings and never take ownership (no virDomainFree).
    let name = copy_cstr(sys::virDomainGetName(dom)).unwrap_or_default();
    let mut buf = [0 as c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
    let uuid = if sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) == 0 {
        copy_cstr(buf.as_ptr()).unwrap_or_default()
    } else {
        String::new()
    };
    let raw = RawLifecycle {
        name,
        uuid,
        event,
        detail,
    };
    if catch_unwind(AssertUnwindSafe(|| f(raw))).is_err() {
        log::error!("panic in lifecycle event handler (caught at the libvirt boundary)");
    }
    0
}

unsafe extern "C" fn free_lifecycle(opaque: *mut c_void) {
    // SAFETY: called by libvirt exactly once per successful registration, with the pointer we
    // leaked from `Box<LifecycleFn>`; reconstituting the box frees it.
    drop(Box::from_raw(opaque as *mut LifecycleFn));
}

/// A lifecycle-event registration; deregistered on drop.
pub struct LifecycleRegistration {
    conn: Connect,
    id: c_int,
}

/// Registers `f` for `VIR_DOMAIN_EVENT_ID_LIFECYCLE` on every domain of `conn`.
/// `f` runs on the libvirt event-loop thread and must not block.
pub fn register_lifecycle(
    conn: &Connect,
    f: impl Fn(RawLifecycle) + Send + 'static,
) -> Result<LifecycleRegistration, virt::error::Error> {
    let opaque = Box::into_raw(Box::new(Box::new(f) as LifecycleFn)) as *mut c_void;
    // SAFETY: the generic callback type is how libvirt's C API takes every event callback; the
    // lifecycle callback's real signature is the one of `lifecycle_trampoline`, which libvirt
    // calls for VIR_DOMAIN_EVENT_ID_LIFECYCLE (this is the documented VIR_DOMAIN_EVENT_CALLBACK
    // cast). `conn` is a live connection; on success libvirt owns `opaque` and frees it through
    // `free_lifecycle`.
    let id = unsafe {
        let cb: unsafe extern "C" fn(
            sys::virConnectPtr,
            sys::virDomainPtr,
            c_int,
            c_int,
            *mut c_void,
        ) -> c_int = lifecycle_trampoline;
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            std::ptr::null_mut(),
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
            Some(std::mem::transmute::<
                unsafe extern "C" fn(
                    sys::virConnectPtr,
                    sys::virDomainPtr,
                    c_int,
                    c_int,
                    *mut c_void,
                ) -> c_int,
                unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
            >(cb)),
            opaque,
            Some(free_lifecycle),
        )
    };
    if id < 0 {
        let err = virt::error::Error::last_error();
        // SAFETY: registration failed, so libvirt did not take ownership; free it ourselves.
        unsafe { free_lifecycle(opaque) };
        return Err(err);
    }
    Ok(LifecycleRegistration {
        conn: conn.clone(),
        id,
    })
}

impl Drop for LifecycleRegistration {
    fn drop(&mut self) {
        // SAFETY: `self.conn` keeps the connection alive; `id` came from a successful
        // registration on it and is deregistered once. libvirt frees the box via freecb.
        let rc = unsafe { sys::virConnectDomainEventDeregisterAny(self.conn.as_ptr(), self.id) };
        if rc < 0 {
            log::debug!("deregistering lifecycle callback: {}", last_error());
        }
    }
}

unsafe extern "C" fn close_trampoline(
    _conn: sys::virConnectPtr,
    reason: c_int,
    opaque: *mut c_void,
) {
    // SAFETY: `opaque` is the `Box<CloseFn>` leaked in `register_close`, alive until
    // `free_close` runs.
    let f = &*(opaque as *const CloseFn);
    if catch_unwind(AssertUnwindSafe(|| f(reason))).is_err() {
        log::error!("panic in connection close handler (caught at the libvirt boundary)");
    }
}

unsafe extern "C" fn free_close(opaque: *mut c_void) {
    // SAFETY: called by libvirt exactly once for the pointer leaked in `register_close`.
    drop(Box::from_raw(opaque as *mut CloseFn));
}

/// A close-callback registration; unregistered on drop.
pub struct CloseRegistration {
    conn: Connect,
}

/// Calls `f(reason)` (a `VIR_CONNECT_CLOSE_REASON_*`) when the connection to libvirtd is lost.
pub fn register_close(
    conn: &Connect,
    f: impl Fn(i32) + Send + 'static,
) -> Result<CloseRegistration, virt::error::Error> {
    let opaque = Box::into_raw(Box::new(Box::new(f) as CloseFn)) as *mut c_void;
    // SAFETY: `conn` is live; the callback has exactly libvirt's `virConnectCloseFunc`
    // signature; on success libvirt owns `opaque` and frees it with `free_close`.
    let rc = unsafe {
        sys::virConnectRegisterCloseCallback(
            conn.as_ptr(),
            Some(close_trampoline),
            opaque,
            Some(free_close),
        )
    };
    if rc < 0 {
        let err = virt::error::Error::last_error();
        // SAFETY: registration failed, libvirt did not take `opaque`.
        unsafe { free_close(opaque) };
        return Err(err);
    }
    Ok(CloseRegistration { conn: conn.clone() })
}

impl Drop for CloseRegistration {
    fn drop(&mut self) {
        // SAFETY: the connection is kept alive by `self.conn`; the same function pointer that
        // was registered identifies the callback, and libvirt frees its box via freecb.
        let rc = unsafe {
            sys::virConnectUnregisterCloseCallback(self.conn.as_ptr(), Some(close_trampoline))
        };
        if rc < 0 {
            log::debug!("unregistering close callback: {}", last_error());
        }
    }
}

/// `virDomainGetState` as raw integers (state, reason): `virt`'s typed version loses the
/// raw reason codes that newer libvirt may add.
pub fn domain_state(dom: &virt::domain::Domain) -> Result<(i32, i32), virt::error::Error> {
    let mut state: c_int = -1;
    let mut reason: c_int = -1;
    // SAFETY: `dom` owns a live reference; the out-pointers point to our stack variables.
    let rc = unsafe { sys::virDomainGetState(dom.as_ptr(), &mut state, &mut reason, 0) };
    if rc < 0 {
        return Err(virt::error::Error::last_error());
    }
    Ok((state, reason))
}
