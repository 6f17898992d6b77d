//! `vmoverlay history VM`, `rollback VM REVISION`, `pin`, `unpin` and `keep`: a VM's revisions
//! (see `overlay::history`). `history --json` prints one array, newest first, of objects with
//! `id`, `time` (RFC 3339), `kind`, `label`, `pinned`, `bytes` (null where not known), `disk`
//! and `restorable`.

use super::args::{Exit, RevisionArgs};
use super::{confirm_on_terminal, find_vm, refuse};
use crate::i18n::{tr, tr_f};
use crate::jobs::{self, Context};
use crate::overlay::history::{self, Store};
use crate::overlay::OpError;
use crate::units::human_bytes;

pub fn list(mut ctx: Context, uris: &[String], vm: &str, only: Option<&str>, json: bool) -> i32 {
    let (uri, conn) = match find_vm(&mut ctx, uris, vm) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let view = match jobs::vm_history(&ctx, &conn, &uri, vm, only) {
        Ok(v) => v,
        Err(e) => return refuse(&e),
    };
    if json {
        let list: Vec<serde_json::Value> = view
            .entries
            .iter()
            .map(|e| {
                let r = &e.revision;
                serde_json::json!({
                    "id": r.id,
                    "time": r.time,
                    "kind": r.kind.word(),
                    "label": r.label,
                    "pinned": r.pinned,
                    "bytes": r.held_bytes(),
                    "disk": e.disk,
                    "restorable": e.restorable,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Exit::Ok as i32;
    }
    println!(
        "{:>4}  {:<20}  {:<8}  {:<4}  {:<6}  {:>10}  {}",
        tr("ID"),
        tr("TIME"),
        tr("KIND"),
        tr("DISK"),
        tr("PINNED"),
        tr("SIZE"),
        tr("LABEL")
    );
    for e in &view.entries {
        let (t, r) = (&e.disk, &e.revision);
        let mut label = r.label.clone().unwrap_or_default();
        if !e.restorable {
            label = tr_f(
                "{label} (not restorable: its base has changed)",
                &[("label", &label)],
            );
        }
        println!(
            "{:>4}  {:<20}  {:<8}  {:<4}  {:<6}  {:>10}  {}",
            r.id,
            r.time,
            r.kind.word(),
            t,
            if r.pinned { tr("yes") } else { tr("no") },
            r.held_bytes()
                .map(human_bytes)
                .unwrap_or_else(|| "-".into()),
            label.trim()
        );
    }
    for (t, h) in &view.disks {
        println!(
            "{}",
            tr_f(
                "{disk}: {count} revisions hold {size}; the newest {keep} are kept, and pinned ones",
                &[
                    ("disk", t),
                    ("count", &h.ready().count().to_string()),
                    ("size", &human_bytes(h.held_bytes())),
                    ("keep", &h.keep.to_string()),
                ],
            )
        );
    }
    Exit::Ok as i32
}

pub fn rollback(mut ctx: Context, uris: &[String], args: &RevisionArgs) -> i32 {
    let (uri, conn) = match find_vm(&mut ctx, uris, &args.vm) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let result = jobs::history_disks(&ctx, &conn, &uri, &args.vm, args.disk.as_deref()).and_then(
        |(found, disks)| {
            let disk = jobs::disk_with_revision(&ctx, &args.vm, &disks, args.revision)?;
            history::preflight_rollback(
                &args.vm,
                &disk,
                args.revision,
                &found.check,
                &ctx.journal,
            )?;
            Ok((found, disk))
        },
    );
    let (found, disk) = match result {
        Ok(f) => f,
        Err(e) => return refuse(&e),
    };
    let question = tr_f(
        "Roll {vm} ({disk}) back to revision {revision}? What it holds now is kept as a new revision.",
        &[
            ("vm", &args.vm),
            ("disk", &disk.target),
            ("revision", &args.revision.to_string()),
        ],
    );
    let refusal = tr(
        "refusing to roll back without --yes when not run from a terminal. Nothing was changed.",
    );
    if let Err(code) = confirm_on_terminal(args.yes, &question, &refusal) {
        return code;
    }
    match jobs::rollback(&ctx, &found, &uri, &args.vm, &disk, args.revision) {
        Ok(left) => {
            println!(
                "{} {}: {}",
                args.vm,
                disk.target,
                tr_f(
                    "rolled back to revision {revision}; the state left is revision {left}",
                    &[
                        ("revision", &args.revision.to_string()),
                        ("left", &left.to_string())
                    ],
                )
            );
            Exit::Ok as i32
        }
        Err(e) => refuse(&e),
    }
}

pub fn undo(mut ctx: Context, uris: &[String], vm: &str, yes: bool) -> i32 {
    let (uri, conn) = match find_vm(&mut ctx, uris, vm) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let question = tr_f(
        "Undo the last commit, discard or rollback of {vm}? What it holds now is kept as a new revision.",
        &[("vm", vm)],
    );
    let refusal =
        tr("refusing to undo without --yes when not run from a terminal. Nothing was changed.");
    if let Err(code) = confirm_on_terminal(yes, &question, &refusal) {
        return code;
    }
    match jobs::undo(&ctx, &conn, &uri, vm) {
        Ok(undone) => {
            for u in undone {
                println!(
                    "{vm} {}: {}",
                    u.disk,
                    tr_f(
                        "rolled back to revision {revision}; the state left is revision {left}",
                        &[
                            ("revision", &u.revision.to_string()),
                            ("left", &u.left.to_string())
                        ],
                    )
                );
            }
            Exit::Ok as i32
        }
        Err(e) => refuse(&e),
    }
}

pub fn pin(
    mut ctx: Context,
    uris: &[String],
    args: &RevisionArgs,
    pinned: bool,
    label: Option<&str>,
) -> i32 {
    let (uri, conn) = match find_vm(&mut ctx, uris, &args.vm) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let disk = match jobs::history_disks(&ctx, &conn, &uri, &args.vm, args.disk.as_deref())
        .and_then(|(_, disks)| jobs::disk_with_revision(&ctx, &args.vm, &disks, args.revision))
    {
        Ok(d) => d,
        Err(e) => return refuse(&e),
    };
    match history::set_pin(&ctx.journal, &disk, args.revision, pinned, label) {
        Ok(true) => {
            let line = if pinned {
                tr_f(
                    "revision {revision} is pinned: it is kept however many newer ones there are",
                    &[("revision", &args.revision.to_string())],
                )
            } else {
                tr_f(
                    "revision {revision} is no longer pinned",
                    &[("revision", &args.revision.to_string())],
                )
            };
            println!("{} {}: {line}", args.vm, disk.target);
            Exit::Ok as i32
        }
        Ok(false) => refuse(&OpError::NoSuchRevision {
            vm: args.vm.clone(),
            revision: args.revision,
        }),
        Err(e) => refuse(&OpError::NotWritable {
            what: Store::beside(&ctx.journal)
                .path_for(&disk.overlay)
                .display()
                .to_string(),
            reason: e.to_string(),
        }),
    }
}

pub fn keep(mut ctx: Context, uris: &[String], vm: &str, n: u32, only: Option<&str>) -> i32 {
    let (uri, conn) = match find_vm(&mut ctx, uris, vm) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let (found, disks) = match jobs::history_disks(&ctx, &conn, &uri, vm, only) {
        Ok(d) => d,
        Err(e) => return refuse(&e),
    };
    for disk in &disks {
        if let Err(e) = history::set_keep(&ctx.journal, disk, n) {
            return refuse(&OpError::NotWritable {
                what: Store::beside(&ctx.journal)
                    .path_for(&disk.overlay)
                    .display()
                    .to_string(),
                reason: e.to_string(),
            });
        }
        match history::expire_now(&uri, vm, disk, &found.check, &ctx.journal) {
            Ok(expired) => println!(
                "{vm} {}: {}",
                disk.target,
                tr_f(
                    "keeping the newest {keep} revisions and pinned ones; {expired} expired",
                    &[("keep", &n.to_string()), ("expired", &expired.to_string())],
                )
            ),
            // In use now: older revisions expire at the next commit, discard or rollback.
            Err(e @ (OpError::DomainActive { .. } | OpError::Locked { .. })) => println!(
                "{vm} {}: {}",
                disk.target,
                tr_f(
                    "keeping the newest {keep} revisions and pinned ones; older ones expire at the next commit or discard ({reason})",
                    &[("keep", &n.to_string()), ("reason", &e.to_string())],
                )
            ),
            Err(e) => return refuse(&e),
        }
    }
    Exit::Ok as i32
}
