//! `vmoverlay commit VM` and `vmoverlay discard VM`: the pipeline's plan, a confirmation on a
//! terminal, then the run with a progress line.

use std::io::IsTerminal;

use super::args::{Exit, OpArgs};
use super::{confirm_on_terminal, find_vm, refuse};
use crate::i18n::{tr, tr_f};
use crate::jobs::{self, Context, Event, Firmware};
use crate::overlay::{OpError, OpKind, Progress};
use crate::units::human_bytes;

fn question(op: OpKind, vm: &str, req: &crate::overlay::Request, changed: u64) -> String {
    match op {
        OpKind::Commit => tr_f(
            "Commit {size} written by {vm} ({disk}) into {base}?",
            &[
                ("size", &human_bytes(changed)),
                ("vm", vm),
                ("disk", &req.disk.target),
                ("base", &req.disk.base.display().to_string()),
            ],
        ),
        OpKind::Discard => tr_f(
            "Discard {size} written by {vm} ({disk}) to {overlay}?",
            &[
                ("size", &human_bytes(changed)),
                ("vm", vm),
                ("disk", &req.disk.target),
                ("overlay", &req.disk.overlay.display().to_string()),
            ],
        ),
    }
}

fn progress_line(target: &str, p: &Progress) -> String {
    match p {
        Progress::Committing(f) => tr_f(
            "committing {disk} {percent}%",
            &[("disk", target), ("percent", &format!("{:5.1}", f * 100.0))],
        ),
        Progress::CheckingBase => tr_f("checking the base of {disk}", &[("disk", target)]),
        Progress::Rebuilding => tr_f("rebuilding {disk}", &[("disk", target)]),
    }
}

pub fn run(
    mut ctx: Context,
    uris: &[String],
    op: OpKind,
    args: &OpArgs,
    firmware: Firmware,
) -> i32 {
    let (uri, conn) = match find_vm(&mut ctx, uris, &args.vm) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let (uri, conn) = (&uri, &conn);
    let plan = match jobs::plan(
        &ctx,
        conn,
        uri,
        &args.vm,
        op,
        args.disk.as_deref(),
        firmware,
    ) {
        Ok(p) => p,
        Err(e) => return refuse(&e),
    };
    let refusal = match op {
        OpKind::Commit => tr(
            "refusing to commit without --yes when not run from a terminal. Nothing was changed.",
        ),
        OpKind::Discard => tr(
            "refusing to discard without --yes when not run from a terminal. Nothing was changed.",
        ),
    };
    for (req, changed) in &plan.disks {
        let question = question(op, &args.vm, req, *changed);
        if let Err(code) = confirm_on_terminal(args.yes, &question, &refusal) {
            return code;
        }
    }
    let bases: Vec<_> = plan
        .disks
        .iter()
        .map(|(r, _)| (r.disk.target.clone(), r.disk.base.clone()))
        .collect();
    let bar = std::io::stderr().is_terminal();
    let events = jobs::spawn(plan, &ctx);
    let result = loop {
        match events.recv_blocking() {
            Ok(Event::Progress { target, progress }) => {
                if bar {
                    eprint!("\r\x1b[2K{}", progress_line(&target, &progress));
                }
            }
            Ok(Event::Done(r)) => break r,
            Err(_) => {
                break Err(OpError::NotFound {
                    what: "the operation's worker stopped unexpectedly; see the journal".into(),
                })
            }
        }
    };
    if bar {
        eprint!("\r\x1b[2K");
    }
    match result {
        Ok(done) => {
            for o in &done.outcomes {
                let base = bases
                    .iter()
                    .find(|(t, _)| *t == o.target)
                    .map(|(_, b)| b.display().to_string())
                    .unwrap_or_default();
                let size = human_bytes(o.changed_bytes);
                let line = match op {
                    OpKind::Commit => tr_f(
                        "committed {size} into {base}; overlay rebuilt empty",
                        &[("size", &size), ("base", &base)],
                    ),
                    OpKind::Discard => tr_f(
                        "discarded {size}; overlay rebuilt empty, base untouched",
                        &[("size", &size)],
                    ),
                };
                println!("{} {}: {line}", args.vm, o.target);
            }
            Exit::Ok as i32
        }
        Err(e) => refuse(&e),
    }
}
