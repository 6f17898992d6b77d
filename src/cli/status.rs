//! `vmoverlay status`: every domain with its state, its managed disks and their changes, and
//! what blocks Commit and Discard (the same refusal `commit` would print).

use std::io::Write;

use serde_json::json;
use virt::connect::Connect;

use super::args::Exit;
use super::{not_found, open_all, recover_pending};
use crate::i18n::tr_f;
use crate::jobs::{self, Context};
use crate::libvirt;
use crate::overlay::{ManagedDisk, OpError, SkippedDisk};
use crate::units::human_bytes;

/// One managed disk as `status` reports it.
struct DiskReport {
    disk: ManagedDisk,
    changed: Result<u64, OpError>,
}

/// One domain as `status` reports it.
struct DomainReport {
    uri: String,
    domain: libvirt::DomainSnapshot,
    disks: Result<(Vec<DiskReport>, Vec<SkippedDisk>), OpError>,
    blocked: Option<OpError>,
    /// Only a discard would be refused (see [`jobs::Assessment::discard_blocked`]).
    discard_blocked: Option<OpError>,
    /// Each disk that is not disposable: whether `adopt` could make it so.
    adoptable: Vec<(String, Option<OpError>)>,
}

/// Maps `f` over `items` on a few threads, keeping the order. Looking at a domain waits on
/// libvirt's round trips (one per domain, its definition; states, handles, managed saves,
/// snapshots and checkpoints come from a few listings of all domains), so a few workers beat
/// one even on two cores.
fn par_map<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get() * 2);
    let queue = std::sync::Mutex::new(items.into_iter().enumerate());
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                let Some((i, item)) = next else { break };
                let r = f(item);
                results
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((i, r));
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

fn report(
    ctx: &Context,
    conn: &Connect,
    uri: &str,
    (d, handle): (libvirt::DomainSnapshot, virt::domain::Domain),
    kept: &libvirt::domains::KeptState,
) -> DomainReport {
    let found = jobs::find_listed(ctx, conn, uri, (&d, handle), kept);
    let (disks, blocked, discard_blocked, adoptable) = match found {
        Err(e) => (Err(e), None, None, Vec::new()),
        Ok(found) => {
            let assessed = jobs::assess_found(ctx, &d.name, &found);
            let adoptable = jobs::adoptable(ctx, &found, &d.name);
            let managed = found
                .disks
                .managed
                .iter()
                .map(|disk| DiskReport {
                    // Read once, by the assessment, where it could read them all.
                    changed: match assessed.per_disk.iter().find(|(t, _)| *t == disk.target) {
                        Some((_, n)) => Ok(*n),
                        None => crate::overlay::ops::changed_bytes(disk, &found.check),
                    },
                    disk: disk.clone(),
                })
                .collect();
            (
                Ok((managed, found.disks.skipped)),
                assessed.blocked,
                assessed.discard_blocked,
                adoptable,
            )
        }
    };
    DomainReport {
        uri: uri.to_string(),
        domain: d,
        disks,
        blocked,
        discard_blocked,
        adoptable,
    }
}

/// The disk a blocking state belongs to, when it is one disk's.
fn blocked_disk(r: &DomainReport, e: &OpError) -> Option<String> {
    let path = match e {
        OpError::InternalSnapshots { path, .. } | OpError::Bitmaps { path, .. } => path,
        OpError::BackingMismatch { overlay, .. } | OpError::Busy { overlay, .. } => overlay,
        OpError::DiskNotManaged { disk, .. } => return Some(disk.clone()),
        _ => return None,
    };
    let (managed, skipped) = r.disks.as_ref().ok()?;
    managed
        .iter()
        .find(|d| &d.disk.overlay == path || &d.disk.base == path)
        .map(|d| d.disk.target.clone())
        .or_else(|| {
            skipped
                .iter()
                .find(|s| s.source.as_deref().map(std::path::Path::new) == Some(path.as_path()))
                .map(|s| s.target.clone())
        })
}

fn report_json(ctx: &Context, r: &DomainReport) -> serde_json::Value {
    let (managed, skipped, error) = match &r.disks {
        Ok((managed, skipped)) => (managed.as_slice(), skipped.as_slice(), None),
        Err(e) => (&[][..], &[][..], Some(e.to_string())),
    };
    let journal = &ctx.journal;
    let managed: Vec<_> = managed
        .iter()
        .map(|d| {
            json!({
                "target": d.disk.target,
                "overlay": d.disk.overlay,
                "base": d.disk.base,
                "engine": d.disk.engine.word(),
                "changed_bytes": d.changed.as_ref().ok(),
                "pending": journal.get(&d.disk.overlay).map(|r| r.op.word()),
                "last": journal.last(&d.disk.overlay),
            })
        })
        .collect();
    let adoptable = |target: &str| -> serde_json::Value {
        match r.adoptable.iter().find(|(t, _)| t == target) {
            Some((_, None)) => json!(true),
            Some((_, Some(e))) => json!({"why": e.to_string(), "exit_code": e.exit_code()}),
            None => json!(false),
        }
    };
    let skipped: Vec<_> = skipped
        .iter()
        .map(|d| {
            json!({
                "target": d.target,
                "source": d.source,
                "reason": d.reason.to_string(),
                "adoptable": adoptable(&d.target),
            })
        })
        .collect();
    // Only states of the VM block it; a domain without managed disks is simply not managed.
    let blocked: Vec<_> = r
        .blocked
        .iter()
        .filter(|e| !managed.is_empty() || !matches!(e, OpError::NoManagedDisk { .. }))
        .filter_map(|e| {
            Some(json!({
                "kind": e.blocking_kind()?,
                "disk": blocked_disk(r, e),
                "message": e.to_string(),
                "exit_code": e.exit_code(),
            }))
        })
        .collect();
    json!({
        "uri": r.uri,
        "domain": r.domain.name,
        "uuid": r.domain.uuid,
        "state": r.domain.state.kind.word(),
        "reason": r.domain.state.reason_word(),
        "disks": managed,
        "skipped_disks": skipped,
        "blocked": blocked,
        "discard_blocked": r.discard_blocked.as_ref().map(|e| json!({
            "kind": e.blocking_kind(),
            "message": e.to_string(),
            "exit_code": e.exit_code(),
        })),
        "error": error,
    })
}

pub fn run(ctx: &Context, uris: &[String], only: Option<&str>, as_json: bool) -> i32 {
    let conns = match open_all(uris) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut ctx = ctx.clone();
    ctx.others = conns.clone();
    recover_pending(&ctx);
    let mut rows = Vec::new();
    for (uri, conn) in &conns {
        let mut domains = match libvirt::list_domain_handles(conn) {
            Ok(d) => d,
            Err(e) => {
                eprintln!(
                    "vmoverlay: {}",
                    tr_f(
                        "cannot list domains on '{uri}': {error}. Nothing was changed.",
                        &[("uri", uri), ("error", e.message())]
                    )
                );
                return Exit::Connect as i32;
            }
        };
        domains.retain(|(d, _)| only.is_none_or(|name| name == d.name));
        // Which domains have a managed save, snapshots or checkpoints: one listing each.
        let kept = libvirt::domains::KeptState::list(conn);
        rows.extend(par_map(domains, |d| report(&ctx, conn, uri, d, &kept)));
    }
    if let (Some(name), true) = (only, rows.is_empty()) {
        return not_found(name, uris);
    }
    let mut out = std::io::stdout().lock();
    if as_json {
        let list: Vec<_> = rows.iter().map(|r| report_json(&ctx, r)).collect();
        let _ = writeln!(out, "{}", serde_json::Value::Array(list));
        return Exit::Ok as i32;
    }
    let _ = writeln!(out, "{:<24} {:<14} {:<16} URI", "DOMAIN", "STATE", "REASON");
    for r in &rows {
        let d = &r.domain;
        let _ = writeln!(
            out,
            "{:<24} {:<14} {:<16} {}",
            d.name,
            d.state.kind.word(),
            d.state.reason_word(),
            r.uri
        );
        match &r.disks {
            Err(e) => {
                let _ = writeln!(out, "    (disks unknown: {e})");
            }
            Ok((managed, skipped)) => {
                for m in managed {
                    let changed = match &m.changed {
                        Ok(0) => "no changes".to_string(),
                        Ok(n) => format!("changed {}", human_bytes(*n)),
                        Err(e) => format!("changes unknown: {e}"),
                    };
                    let pending = ctx
                        .journal
                        .get(&m.disk.overlay)
                        .map(|r| format!("  [{} pending]", r.op.word()))
                        .unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "    {:<6} {} -> {}  {changed}{pending}  ({})",
                        m.disk.target,
                        m.disk.overlay.display(),
                        m.disk.base.display(),
                        m.disk.engine.word()
                    );
                }
                for s in skipped {
                    let _ = writeln!(out, "    {:<6} not managed: {}", s.target, s.reason);
                }
                if let Some(e) = r.blocked.as_ref().filter(|_| !managed.is_empty()) {
                    let _ = writeln!(out, "    blocked: {e}");
                }
                if let Some(e) = &r.discard_blocked {
                    let _ = writeln!(out, "    no discard: {e}");
                }
            }
        }
    }
    Exit::Ok as i32
}
