//! The scriptable command line: one file per subcommand, the types in [`args`]. No
//! subcommand means the desktop application (see `main.rs`).

mod adopt;
pub mod args;
mod history;
mod operate;
mod release;
mod status;
mod watch;

use virt::connect::Connect;

pub use args::{Cli, Command, Exit, EXIT_NOT_CONFIRMED, EXIT_USAGE};
pub use watch::watch_line;

use crate::i18n::tr_f;
use crate::jobs::{self, Context, Firmware};
use crate::libvirt;
use crate::overlay::{OpError, OpKind};

/// Runs a subcommand; returns the process's exit code.
pub fn run(cli: &Cli, command: &Command) -> i32 {
    let uris = cli.uris();
    let ctx = cli.context();
    match command {
        Command::Status { vm, json } => status::run(&ctx, &uris, vm.as_deref(), *json),
        Command::Watch { json } => watch::run(uris, *json) as i32,
        Command::Commit(args) => {
            operate::run(ctx, &uris, OpKind::Commit, args, Firmware::FollowDisk)
        }
        Command::Adopt(args) => adopt::run(ctx, &uris, args),
        Command::Release(args) => release::run(ctx, &uris, args),
        Command::History { vm, disk, json } => {
            history::list(ctx, &uris, vm, disk.as_deref(), *json)
        }
        Command::Rollback(args) => history::rollback(ctx, &uris, args),
        Command::Undo { vm, yes } => history::undo(ctx, &uris, vm, *yes),
        Command::Pin { rev, label } => history::pin(ctx, &uris, rev, true, label.as_deref()),
        Command::Unpin(rev) => history::pin(ctx, &uris, rev, false, None),
        Command::Keep { vm, n, disk } => history::keep(ctx, &uris, vm, *n, disk.as_deref()),
        Command::Discard(args) => {
            let firmware = if args.keep_firmware {
                Firmware::Keep
            } else {
                Firmware::FollowDisk
            };
            operate::run(ctx, &uris, OpKind::Discard, &args.op, firmware)
        }
    }
}

fn connect_error(uri: &str, e: &virt::error::Error) -> i32 {
    eprintln!(
        "vmoverlay: {}",
        tr_f(
            "cannot connect to '{uri}': {error}. Nothing was changed.",
            &[("uri", uri), ("error", e.message())]
        )
    );
    Exit::Connect as i32
}

fn not_found(name: &str, uris: &[String]) -> i32 {
    eprintln!(
        "vmoverlay: {}",
        tr_f(
            "no domain named '{vm}' on {uris}. Nothing was changed.",
            &[("vm", name), ("uris", &uris.join(", "))]
        )
    );
    Exit::NotFound as i32
}

/// Opens every URI and finds `vm` on the first that has it; the exit code otherwise.
fn find_vm(ctx: &mut Context, uris: &[String], vm: &str) -> Result<(String, Connect), i32> {
    let conns = open_all(uris)?;
    ctx.others = conns.clone();
    recover_pending(ctx);
    conns
        .into_iter()
        .find(|(_, c)| c.lookup_domain_by_name(vm).is_ok())
        .ok_or_else(|| not_found(vm, uris))
}

/// Asks `question` on the terminal; `Err(exit code)` when not confirmed or not asked.
fn confirm_on_terminal(yes: bool, question: &str, refusal: &str) -> Result<(), i32> {
    use std::io::IsTerminal;
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        eprintln!("vmoverlay: {refusal}");
        return Err(EXIT_NOT_CONFIRMED);
    }
    eprint!("{question} {} ", crate::i18n::tr("[y/N]"));
    let mut answer = String::new();
    let yes = std::io::stdin().read_line(&mut answer).is_ok()
        && matches!(answer.trim(), "y" | "Y" | "yes" | "Yes");
    if !yes {
        eprintln!(
            "vmoverlay: {}",
            crate::i18n::tr("not confirmed. Nothing was changed.")
        );
        return Err(EXIT_NOT_CONFIRMED);
    }
    Ok(())
}

fn refuse(e: &OpError) -> i32 {
    eprintln!("vmoverlay: {e}");
    e.exit_code()
}

/// Opens every URI (read-only): the first failure is the exit code.
fn open_all(uris: &[String]) -> Result<Vec<(String, Connect)>, i32> {
    uris.iter()
        .map(|uri| {
            libvirt::open(uri, true)
                .map(|c| (uri.clone(), c))
                .map_err(|e| connect_error(uri, &e))
        })
        .collect()
}

/// Finishes operations that an earlier run left in the journal, before anything else.
fn recover_pending(ctx: &Context) {
    for (rec, result) in jobs::recover(&ctx.journal) {
        match result {
            Ok(o) => eprintln!(
                "vmoverlay: {}",
                match rec.op {
                    OpKind::Commit => tr_f(
                        "finished the interrupted commit of {vm} ({disk}) from the journal",
                        &[("vm", &rec.domain), ("disk", &o.target)],
                    ),
                    OpKind::Discard => tr_f(
                        "finished the interrupted discard of {vm} ({disk}) from the journal",
                        &[("vm", &rec.domain), ("disk", &o.target)],
                    ),
                }
            ),
            Err(e) => eprintln!(
                "vmoverlay: {}",
                match rec.op {
                    OpKind::Commit => tr_f(
                        "the interrupted commit of {vm} ({disk}) is still pending: {error}",
                        &[
                            ("vm", &rec.domain),
                            ("disk", &rec.disk.target),
                            ("error", &e.to_string())
                        ],
                    ),
                    OpKind::Discard => tr_f(
                        "the interrupted discard of {vm} ({disk}) is still pending: {error}",
                        &[
                            ("vm", &rec.domain),
                            ("disk", &rec.disk.target),
                            ("error", &e.to_string())
                        ],
                    ),
                }
            ),
        }
    }
}
