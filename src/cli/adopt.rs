//! `vmoverlay adopt VM`: make a VM disposable.

use super::args::{Exit, OpArgs};
use super::{confirm_on_terminal, find_vm, refuse};
use crate::i18n::{tr, tr_f};
use crate::jobs::{self, Context};

pub fn run(mut ctx: Context, uris: &[String], args: &OpArgs) -> i32 {
    let (uri, conn) = match find_vm(&mut ctx, uris, &args.vm) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let plan = match jobs::plan_adopt(&ctx, &conn, &uri, &args.vm, args.disk.as_deref()) {
        Ok(p) => p,
        Err(e) => return refuse(&e),
    };
    for (target, why) in &plan.left {
        eprintln!(
            "vmoverlay: {}",
            tr_f(
                "{disk} is left as it is: {why}",
                &[("disk", target), ("why", &why.to_string())]
            )
        );
    }
    for d in &plan.disks {
        let question = tr_f(
            "Make {vm} ({disk}) disposable: {image} becomes its base, and a new overlay {overlay} takes its changes from now on?",
            &[
                ("vm", &args.vm),
                ("disk", &d.target),
                ("image", &d.image.display().to_string()),
                ("overlay", &d.overlay.display().to_string()),
            ],
        );
        let refusal = tr(
            "refusing to adopt without --yes when not run from a terminal. Nothing was changed.",
        );
        if let Err(code) = confirm_on_terminal(args.yes, &question, &refusal) {
            return code;
        }
    }
    match jobs::adopt(&plan, &ctx) {
        Ok(()) => {
            for d in &plan.disks {
                println!(
                    "{} {}: {}",
                    args.vm,
                    d.target,
                    tr_f(
                        "disposable: {image} is the base, {overlay} takes the changes",
                        &[
                            ("image", &d.image.display().to_string()),
                            ("overlay", &d.overlay.display().to_string()),
                        ],
                    )
                );
            }
            Exit::Ok as i32
        }
        Err(e) => refuse(&e),
    }
}
