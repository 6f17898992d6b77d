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

/// A Rust closure handed to libvirt as a callback's `opaque` pointer.
type Handler<T> = Box<dyn Fn(T) + Send + 'static>;

/// Leaks `f` as an `opaque` pointer for libvirt; [`free_handler::<T>`] takes it back.
fn leak_handler<T>(f: impl Fn(T) + Send + 'static) -> *mut c_void {
    Box::into_raw(Box::new(Box::new(f) as Handler<T>)) as *mut c_void
}

/// Calls the handler behind `opaque` with `value`; a panic stops here, at the C boundary.
///
/// # Safety
/// `opaque` must come from [`leak_handler::<T>`] and not be freed yet (libvirt frees it
/// through `free_handler` only after the last callback).
unsafe fn call_handler<T>(opaque: *mut c_void, value: T, what: &str) {
    let f = &*(opaque as *const Handler<T>);
    if catch_unwind(AssertUnwindSafe(|| f(value))).is_err() {
        log::error!("panic in {what} handler (caught at the libvirt boundary)");
    }
}

/// The `freecb` libvirt calls once per successful registration (or we call, if it failed).
///
/// # Safety
/// `opaque` must come from [`leak_handler::<T>`] and be freed only this once.
unsafe extern "C" fn free_handler<T>(opaque: *mut c_void) {
    drop(Box::from_raw(opaque as *mut Handler<T>));
}

unsafe extern "C" fn lifecycle_trampoline(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
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
    // SAFETY: `opaque` is the handler leaked in `register_lifecycle`, alive until libvirt
    // calls its freecb, which happens only after the last callback.
    call_handler(opaque, raw, "lifecycle event");
    0
}

/// A domain-event registration (any event id); deregistered on drop.
pub struct EventRegistration {
    conn: Connect,
    id: c_int,
}

/// The generic callback type `virConnectDomainEventRegisterAny` takes.
type GenericCallback = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);

/// Registers `cb` for `event_id` with a boxed closure as `opaque`, freed by `free`.
///
/// # Safety
/// `cb` must be the callback type libvirt documents for `event_id`, cast to the generic type;
/// `opaque` must be what `cb` and `free` expect, and must not be used by the caller afterwards.
unsafe fn register_any(
    conn: &Connect,
    dom: Option<&virt::domain::Domain>,
    event_id: u32,
    cb: GenericCallback,
    opaque: *mut c_void,
    free: unsafe extern "C" fn(*mut c_void),
) -> Result<EventRegistration, virt::error::Error> {
    let dom_ptr = dom.map_or(std::ptr::null_mut(), |d| d.as_ptr());
    let id = sys::virConnectDomainEventRegisterAny(
        conn.as_ptr(),
        dom_ptr,
        event_id as c_int,
        Some(cb),
        opaque,
        Some(free),
    );
    if id < 0 {
        let err = virt::error::Error::last_error();
        // Registration failed, so libvirt did not take ownership; free it ourselves.
        free(opaque);
        return Err(err);
    }
    Ok(EventRegistration {
        conn: conn.clone(),
        id,
    })
}

/// Registers `f` for `VIR_DOMAIN_EVENT_ID_LIFECYCLE` on every domain of `conn`.
/// `f` runs on the libvirt event-loop thread and must not block.
pub fn register_lifecycle(
    conn: &Connect,
    f: impl Fn(RawLifecycle) + Send + 'static,
) -> Result<EventRegistration, virt::error::Error> {
    type Real = unsafe extern "C" fn(
        sys::virConnectPtr,
        sys::virDomainPtr,
        c_int,
        c_int,
        *mut c_void,
    ) -> c_int;
    let opaque = leak_handler(f);
    // SAFETY: the lifecycle callback's real signature is `Real` (libvirt-domain.h,
    // virConnectDomainEventCallback); casting it to the generic type is the documented
    // VIR_DOMAIN_EVENT_CALLBACK cast, and libvirt calls it back with the real arguments.
    // `opaque` is the handler of `RawLifecycle` that the trampoline and freecb expect.
    unsafe {
        let cb = std::mem::transmute::<Real, GenericCallback>(lifecycle_trampoline);
        register_any(
            conn,
            None,
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE,
            cb,
            opaque,
            free_handler::<RawLifecycle>,
        )
    }
}

/// What a block-job event says: the disk (target or path), job type and status codes.
#[derive(Debug, Clone)]
pub struct RawBlockJob {
    pub disk: String,
    pub job_type: i32,
    pub status: i32,
}

unsafe extern "C" fn block_job_trampoline(
    _conn: sys::virConnectPtr,
    _dom: sys::virDomainPtr,
    disk: *const c_char,
    job_type: c_int,
    status: c_int,
    opaque: *mut c_void,
) {
    // SAFETY: `disk` is a string libvirt owns for the duration of the call.
    let raw = RawBlockJob {
        disk: copy_cstr(disk).unwrap_or_default(),
        job_type,
        status,
    };
    // SAFETY: `opaque` is the handler leaked in `register_block_job`, alive until its freecb.
    call_handler(opaque, raw, "block-job event");
}

/// Registers `f` for `VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2` (disks named by target) of `dom`.
pub fn register_block_job(
    conn: &Connect,
    dom: &virt::domain::Domain,
    f: impl Fn(RawBlockJob) + Send + 'static,
) -> Result<EventRegistration, virt::error::Error> {
    type Real = unsafe extern "C" fn(
        sys::virConnectPtr,
        sys::virDomainPtr,
        *const c_char,
        c_int,
        c_int,
        *mut c_void,
    );
    let opaque = leak_handler(f);
    // SAFETY: `Real` is virConnectDomainEventBlockJobCallback, the documented type for
    // VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2; `opaque` is the handler of `RawBlockJob` that the
    // trampoline and freecb expect; `dom` is a live domain of `conn`.
    unsafe {
        let cb = std::mem::transmute::<Real, GenericCallback>(block_job_trampoline);
        register_any(
            conn,
            Some(dom),
            sys::VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2,
            cb,
            opaque,
            free_handler::<RawBlockJob>,
        )
    }
}

impl Drop for EventRegistration {
    fn drop(&mut self) {
        // SAFETY: `self.conn` keeps the connection alive; `id` came from a successful
        // registration on it and is deregistered once. libvirt frees the box via freecb.
        let rc = unsafe { sys::virConnectDomainEventDeregisterAny(self.conn.as_ptr(), self.id) };
        if rc < 0 {
            log::debug!("deregistering a domain event callback: {}", last_error());
        }
    }
}

unsafe extern "C" fn close_trampoline(
    _conn: sys::virConnectPtr,
    reason: c_int,
    opaque: *mut c_void,
) {
    // SAFETY: `opaque` is the handler leaked in `register_close`, alive until its freecb.
    call_handler(opaque, reason, "connection close");
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
    let opaque = leak_handler(f);
    // SAFETY: `conn` is live; the callback has exactly libvirt's `virConnectCloseFunc`
    // signature; on success libvirt owns `opaque` and frees it with `free_handler::<i32>`.
    let rc = unsafe {
        sys::virConnectRegisterCloseCallback(
            conn.as_ptr(),
            Some(close_trampoline),
            opaque,
            Some(free_handler::<i32>),
        )
    };
    if rc < 0 {
        let err = virt::error::Error::last_error();
        // SAFETY: registration failed, libvirt did not take `opaque`.
        unsafe { free_handler::<i32>(opaque) };
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

/// `virDomainBlockCommit` of the active layer of `disk` into `base` (a path in its chain).
pub fn block_commit(
    dom: &virt::domain::Domain,
    disk: &str,
    base: &str,
    flags: u32,
) -> Result<(), String> {
    let (disk, base) = (cstring(disk)?, cstring(base)?);
    // SAFETY: `dom` owns a live reference; the strings outlive the call; `top` NULL means the
    // active layer, as documented.
    let rc = unsafe {
        sys::virDomainBlockCommit(
            dom.as_ptr(),
            disk.as_ptr(),
            base.as_ptr(),
            std::ptr::null(),
            0,
            flags,
        )
    };
    if rc < 0 {
        return Err(last_error());
    }
    Ok(())
}

/// `virDomainBlockJobAbort`: without flags, a ready active commit ends keeping the top image
/// as the active layer; the base keeps everything that was committed.
pub fn block_job_abort(dom: &virt::domain::Domain, disk: &str, flags: u32) -> Result<(), String> {
    let disk = cstring(disk)?;
    // SAFETY: `dom` owns a live reference; `disk` outlives the call.
    let rc = unsafe { sys::virDomainBlockJobAbort(dom.as_ptr(), disk.as_ptr(), flags) };
    if rc < 0 {
        return Err(last_error());
    }
    Ok(())
}

/// `virDomainGetBlockJobInfo`: `(cur, end)` of the job on `disk`, `None` when there is none.
/// libvirt reports `cur == end` exactly when an active commit is ready.
pub fn block_job_info(
    dom: &virt::domain::Domain,
    disk: &str,
) -> Result<Option<(u64, u64)>, String> {
    let disk = cstring(disk)?;
    let mut info = std::mem::MaybeUninit::<sys::virDomainBlockJobInfo>::zeroed();
    // SAFETY: `dom` owns a live reference; `info` is a zeroed struct of the type libvirt fills.
    let rc =
        unsafe { sys::virDomainGetBlockJobInfo(dom.as_ptr(), disk.as_ptr(), info.as_mut_ptr(), 0) };
    match rc {
        n if n < 0 => Err(last_error()),
        0 => Ok(None),
        _ => {
            // SAFETY: libvirt returned 1, so it filled `info`.
            let info = unsafe { info.assume_init() };
            Ok(Some((info.cur, info.end)))
        }
    }
}

fn cstring(s: &str) -> Result<std::ffi::CString, String> {
    std::ffi::CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

/// The names of a domain's checkpoints (`virDomainListAllCheckpoints`; `virt` has no wrapper).
pub fn checkpoint_names(dom: &virt::domain::Domain) -> Result<Vec<String>, String> {
    let mut list: *mut sys::virDomainCheckpointPtr = std::ptr::null_mut();
    // SAFETY: `dom` owns a live reference; `list` is an out-pointer libvirt fills with an
    // array it allocates (freed below, with each element).
    let n = unsafe { sys::virDomainListAllCheckpoints(dom.as_ptr(), &mut list, 0) };
    if n < 0 {
        return Err(last_error());
    }
    let mut names = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        // SAFETY: libvirt returned `n` valid checkpoint pointers in `list`; each is read once
        // and freed once, and its name is copied before the free.
        unsafe {
            let cp = *list.add(i);
            let name = sys::virDomainCheckpointGetName(cp);
            if !name.is_null() {
                names.push(
                    std::ffi::CStr::from_ptr(name)
                        .to_string_lossy()
                        .into_owned(),
                );
            }
            sys::virDomainCheckpointFree(cp);
        }
    }
    if !list.is_null() {
        // SAFETY: the array itself was allocated by libvirt with its allocator (malloc).
        unsafe { libc::free(list as *mut c_void) };
    }
    Ok(names)
}

/// Every domain of `conn` with its state and reason, in one call (`virConnectGetAllDomainStats`
/// with `VIR_DOMAIN_STATS_STATE`; `virt` has no wrapper) instead of one `virDomainGetState`
/// per domain.
pub fn all_domain_states(
    conn: &Connect,
) -> Result<Vec<(virt::domain::Domain, i32, i32)>, virt::error::Error> {
    let mut records: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: `conn` owns a live reference; `records` is an out-pointer libvirt fills with a
    // NULL-terminated array it allocates (freed below with virDomainStatsRecordListFree).
    let n = unsafe {
        sys::virConnectGetAllDomainStats(
            conn.as_ptr(),
            sys::VIR_DOMAIN_STATS_STATE,
            &mut records,
            0,
        )
    };
    if n < 0 {
        return Err(virt::error::Error::last_error());
    }
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        let (mut state, mut reason): (c_int, c_int) = (-1, -1);
        // SAFETY: libvirt returned `n` valid record pointers; each record's `params` and
        // `nparams` describe its typed-parameter array, and the names are NUL-terminated.
        // The record's domain is a live reference owned by the list: we take a reference of
        // our own (virDomainRef) before the list is freed, which `Domain` releases on drop.
        unsafe {
            let rec = *records.add(i);
            if rec.is_null() {
                break;
            }
            let (params, nparams) = ((*rec).params, (*rec).nparams);
            if sys::virTypedParamsGetInt(params, nparams, c"state.state".as_ptr(), &mut state) != 1
            {
                continue;
            }
            sys::virTypedParamsGetInt(params, nparams, c"state.reason".as_ptr(), &mut reason);
            if sys::virDomainRef((*rec).dom) < 0 {
                continue;
            }
            out.push((virt::domain::Domain::from_ptr((*rec).dom), state, reason));
        }
    }
    // SAFETY: the array and its records were allocated by libvirt; this frees them and the
    // list's own domain references only (ours were taken above).
    unsafe { sys::virDomainStatsRecordListFree(records) };
    Ok(out)
}
