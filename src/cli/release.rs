//! `vmoverlay release VM`: make a disposable VM ordinary again.

use super::args::{Exit, ReleaseArgs};
use super::{confirm_on_terminal, find_vm, refuse};
use crate::i18n::{tr, tr_f};
use crate::jobs::{self, Context};
use crate::overlay::OpKind;

pub fn run(mut ctx: Context, uris: &[String], args: &ReleaseArgs) -> i32 {
    let (uri, conn) = match find_vm(&mut ctx, uris, &args.op.vm) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let changes = match (args.commit, args.discard) {
        (true, _) => Some(OpKind::Commit),
        (_, true) => Some(OpKind::Discard),
        _ => None,
    };
    let vm = &args.op.vm;
    let plan = match jobs::plan_release(&ctx, &conn, &uri, vm, args.op.disk.as_deref(), changes) {
        Ok(p) => p,
        Err(e) => return refuse(&e),
    };
    for d in &plan.disks {
        let question = match (&plan.first, changes) {
            (Some(_), Some(OpKind::Commit)) => tr_f(
                "Commit the pending changes of {vm} ({disk}) into {base}, then use {base} directly and remove {overlay}?",
                &[
                    ("vm", vm),
                    ("disk", &d.target),
                    ("base", &d.base.display().to_string()),
                    ("overlay", &d.overlay.display().to_string()),
                ],
            ),
            (Some(_), _) => tr_f(
                "Discard the pending changes of {vm} ({disk}), then use {base} directly and remove {overlay}?",
                &[
                    ("vm", vm),
                    ("disk", &d.target),
                    ("base", &d.base.display().to_string()),
                    ("overlay", &d.overlay.display().to_string()),
                ],
            ),
            (None, _) => tr_f(
                "Make {vm} ({disk}) use {base} directly and remove its empty overlay {overlay}?",
                &[
                    ("vm", vm),
                    ("disk", &d.target),
                    ("base", &d.base.display().to_string()),
                    ("overlay", &d.overlay.display().to_string()),
                ],
            ),
        };
        let refusal = tr(
            "refusing to release without --yes when not run from a terminal. Nothing was changed.",
        );
        if let Err(code) = confirm_on_terminal(args.op.yes, &question, &refusal) {
            return code;
        }
    }
    let disks: Vec<_> = plan
        .disks
        .iter()
        .map(|d| (d.target.clone(), d.base.clone()))
        .collect();
    match jobs::release(plan, &ctx) {
        Ok(_) => {
            for (target, base) in disks {
                println!(
                    "{vm} {target}: {}",
                    tr_f(
                        "no longer disposable: it uses {base} directly",
                        &[("base", &base.display().to_string())],
                    )
                );
            }
            Exit::Ok as i32
        }
        Err(e) => refuse(&e),
    }
}
