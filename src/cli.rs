//! The scriptable command line: `status` and `watch` (more subcommands come with the engine).
//! Output formats and exit codes are a contract that scripts rely on.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::SystemTime;

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::i18n::{tr, tr_f};
use crate::libvirt::domains::{self, LibvirtCheck};
use crate::libvirt::{self, Model, Monitor, MonitorConfig, MonitorEvent};
use crate::overlay::{
    self, EngineChoice, EngineError, EngineKind, JobEvent, Journal, ManagedDisk, OpKind, Progress,
    Request,
};
use crate::settings;
use crate::units::human_bytes;

/// Exit codes: distinct per failure class, so scripts can tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Exit {
    Ok = 0,
    Failure = 1,
    /// A connection URI could not be opened.
    Connect = 2,
    /// The named domain (or disk) does not exist.
    NotFound = 3,
}

/// Exit codes of engine refusals (see `EngineError::exit_code`): 4 not managed, 5 running,
/// 6 locked or busy, 7 shared base, 8 no space, 9 not writable; 10 not confirmed.
pub const EXIT_NOT_CONFIRMED: i32 = 10;
pub const EXIT_USAGE: i32 = 64;

// Help texts are translated: clap evaluates these expressions when it builds the command,
// after `i18n::init` (see `mod help`).
#[derive(Debug, Parser)]
#[command(
    name = "vmoverlay",
    version = crate::config::VERSION,
    about = help::about(),
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[arg(long = "connect", short = 'c', value_name = "URI", global = true,
          help = help::connect())]
    pub connect: Vec<String>,

    #[arg(long, value_enum, default_value_t = EngineArg::Auto, global = true,
          help = help::engine())]
    pub engine: EngineArg,

    #[command(subcommand)]
    pub command: Option<Command>,

    #[arg(help = help::old_vm())]
    pub vm: Option<String>,
    #[arg(long, value_name = "PATH", requires = "vm", help = help::old_overlay())]
    pub overlay: Option<PathBuf>,
    #[arg(long, value_name = "PATH", requires = "vm", help = help::old_base())]
    pub base: Option<PathBuf>,

    #[arg(long, conflicts_with_all = ["vm", "connect"],
          help = help::demo())]
    pub demo: bool,
}

/// `--engine`: who works on the images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    Auto,
    QemuImg,
    Libvirt,
}

impl EngineArg {
    pub fn choice(self) -> EngineChoice {
        match self {
            Self::Auto => EngineChoice::Auto,
            Self::QemuImg => EngineChoice::Only(EngineKind::QemuImg),
            Self::Libvirt => EngineChoice::Only(EngineKind::Libvirt),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(about = help::status())]
    Status {
        #[arg(help = help::only_vm())]
        vm: Option<String>,
        #[arg(long, help = help::json_array())]
        json: bool,
    },
    #[command(about = help::watch())]
    Watch {
        #[arg(long, help = help::json_lines())]
        json: bool,
    },
    #[command(about = help::commit())]
    Commit(OpArgs),
    #[command(about = help::discard())]
    Discard(OpArgs),
}

#[derive(Debug, clap::Args)]
pub struct OpArgs {
    #[arg(help = help::vm())]
    pub vm: String,
    #[arg(long, value_name = "TARGET", help = help::disk())]
    pub disk: Option<String>,
    #[arg(long, short = 'y', help = help::yes())]
    pub yes: bool,
}

/// The help texts, as functions: xgettext reads Rust as C, where a line starting with `#` (an
/// attribute) is a preprocessor line it skips, so no `tr("…")` may stand inside `#[…]`.
mod help {
    use crate::i18n::tr;

    pub fn about() -> String {
        tr("Keeps libvirt/QEMU guests disposable: commit or discard a qcow2 overlay when a guest shuts down")
    }

    pub fn connect() -> String {
        tr("libvirt connection URI (repeatable)")
    }

    pub fn engine() -> String {
        tr("Who works on the images: qemu-img in this process, libvirtd, or auto (qemu-img when this process can write the images, libvirtd otherwise)")
    }

    pub fn old_vm() -> String {
        tr("Old form: the VM whose overlay/base are pinned with --overlay/--base")
    }

    pub fn old_overlay() -> String {
        tr("Old form: pin this overlay image for VM")
    }

    pub fn old_base() -> String {
        tr("Old form: pin this base image for VM")
    }

    pub fn demo() -> String {
        tr("Show the real flow without any VM: a demo guest on libvirt's test driver, with real overlay images in the cache directory")
    }

    pub fn status() -> String {
        tr("Every domain with its state, its managed disks and their changes")
    }

    pub fn only_vm() -> String {
        tr("Only this domain")
    }

    pub fn json_array() -> String {
        tr("One JSON array instead of a table")
    }

    pub fn watch() -> String {
        tr("Print one line per lifecycle event until interrupted")
    }

    pub fn json_lines() -> String {
        tr("One JSON object per line")
    }

    pub fn commit() -> String {
        tr("Merge a shut-off VM's overlay into its base, then rebuild the overlay empty")
    }

    pub fn discard() -> String {
        tr("Throw away a shut-off VM's overlay changes: rebuild the overlay empty, base untouched")
    }

    pub fn vm() -> String {
        tr("The domain")
    }

    pub fn disk() -> String {
        tr("Only this disk (its target, e.g. vda); default: every managed disk")
    }

    pub fn yes() -> String {
        tr("Do not ask for confirmation (required when not on a terminal)")
    }
}

impl Cli {
    /// Parses a full argument vector (as the running app receives it from a second launch).
    pub fn try_parse_from_args(args: &[String]) -> Result<Cli, clap::Error> {
        let cli = <Cli as Parser>::try_parse_from(args)?;
        if let (Some(vm), Some(overlay), Some(base)) = (&cli.vm, &cli.overlay, &cli.base) {
            settings::pin_for_this_run(
                vm,
                overlay::Pin {
                    overlay: overlay::image::absolute(overlay),
                    base: overlay::image::absolute(base),
                },
            );
        }
        Ok(cli)
    }

    pub fn uris(&self) -> Vec<String> {
        if self.connect.is_empty() {
            vec![libvirt::DEFAULT_URI.to_string()]
        } else {
            self.connect.clone()
        }
    }
}

pub fn run(cli: Cli) -> i32 {
    let uris = cli.uris();
    let engine = cli.engine.choice();
    match cli.command {
        Some(Command::Status { vm, json }) => status(&uris, vm.as_deref(), json, engine),
        Some(Command::Watch { json }) => watch(uris, json) as i32,
        Some(Command::Commit(args)) => operate(&uris, OpKind::Commit, &args, engine),
        Some(Command::Discard(args)) => operate(&uris, OpKind::Discard, &args, engine),
        None => crate::ui::run(std::env::args().collect()),
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
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

/// One managed disk as `status` reports it.
struct DiskReport {
    disk: ManagedDisk,
    changed: Result<u64, String>,
}

/// One domain as `status` reports it.
struct DomainReport {
    uri: String,
    domain: libvirt::DomainSnapshot,
    disks: Result<(Vec<DiskReport>, Vec<overlay::SkippedDisk>), String>,
}

/// Maps `f` over `items` on a few threads, keeping the order. Discovery is bound by qemu-img
/// subprocesses, so a few workers beat one even on two cores.
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
    conn: &virt::connect::Connect,
    uri: &str,
    d: libvirt::DomainSnapshot,
    engine: EngineChoice,
) -> DomainReport {
    let check = LibvirtCheck::new(conn.clone(), uri, &d.name);
    let disks = domains::domain_disks(&check, engine).map(|found| {
        let managed = found
            .managed
            .into_iter()
            .map(|disk| DiskReport {
                changed: overlay::ops::changed_bytes(&disk, &check),
                disk,
            })
            .collect();
        (managed, found.skipped)
    });
    DomainReport {
        uri: uri.to_string(),
        domain: d,
        disks,
    }
}

fn report_json(journal: &Journal, r: &DomainReport) -> serde_json::Value {
    let (managed, skipped, error) = match &r.disks {
        Ok((managed, skipped)) => (managed.as_slice(), skipped.as_slice(), None),
        Err(e) => (&[][..], &[][..], Some(e.clone())),
    };
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
    let skipped: Vec<_> = skipped
        .iter()
        .map(|d| json!({"target": d.target, "source": d.source, "reason": d.reason}))
        .collect();
    json!({
        "uri": r.uri,
        "domain": r.domain.name,
        "uuid": r.domain.uuid,
        "state": r.domain.state.kind.word(),
        "reason": r.domain.state.reason_word(),
        "disks": managed,
        "skipped_disks": skipped,
        "error": error,
    })
}

fn status(uris: &[String], only: Option<&str>, as_json: bool, engine: EngineChoice) -> i32 {
    let journal = Journal::default_location();
    recover_pending(&journal);
    let mut rows = Vec::new();
    for uri in uris {
        let conn = match libvirt::open(uri, true) {
            Ok(c) => c,
            Err(e) => return connect_error(uri, &e),
        };
        let mut domains = match libvirt::list_domains(&conn) {
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
        domains.retain(|d| only.is_none_or(|name| name == d.name));
        rows.extend(par_map(domains, |d| report(&conn, uri, d, engine)));
    }
    if let (Some(name), true) = (only, rows.is_empty()) {
        return not_found(name, uris);
    }
    let mut out = std::io::stdout().lock();
    if as_json {
        let list: Vec<_> = rows.iter().map(|r| report_json(&journal, r)).collect();
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
                    let pending = journal
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
            }
        }
    }
    Exit::Ok as i32
}

/// Finishes operations that an earlier run left in the journal, before anything else.
/// Each record names the connection its domain lives on.
fn recover_pending(journal: &Journal) {
    let results = overlay::recover(journal, &domains::check_for_record, &mut |_, _| {});
    for (rec, result) in results {
        match result {
            Ok(o) => {
                eprintln!(
                    "vmoverlay: finished the interrupted {} of {} ({}) from the journal",
                    rec.op.word(),
                    rec.domain,
                    o.target
                );
                journal.set_last(
                    &o.overlay,
                    &format!("{} finished after an interruption", rec.op.word()),
                );
            }
            Err(e) => eprintln!(
                "vmoverlay: the interrupted {} of {} ({}) is still pending: {e}",
                rec.op.word(),
                rec.domain,
                rec.disk.target
            ),
        }
    }
}

/// Finds `name` on the first connection that has it.
fn find_domain(uris: &[String], name: &str) -> Result<(String, virt::connect::Connect), i32> {
    for uri in uris {
        let conn = libvirt::open(uri, true).map_err(|e| connect_error(uri, &e))?;
        if conn.lookup_domain_by_name(name).is_ok() {
            return Ok((uri.clone(), conn));
        }
    }
    Err(not_found(name, uris))
}

fn refuse(e: &EngineError) -> i32 {
    eprintln!("vmoverlay: {e}");
    e.exit_code()
}

fn confirm(question: &str) -> bool {
    eprint!("{question} {} ", tr("[y/N]"));
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).is_ok()
        && matches!(answer.trim(), "y" | "Y" | "yes" | "Yes")
}

fn operate(uris: &[String], op: OpKind, args: &OpArgs, engine: EngineChoice) -> i32 {
    let journal = Journal::default_location();
    recover_pending(&journal);
    let (uri, conn) = match find_domain(uris, &args.vm) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let check = LibvirtCheck::new(conn.clone(), &uri, &args.vm);
    let found = match domains::domain_disks(&check, engine) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("vmoverlay: {e}. Nothing was changed.");
            return Exit::Failure as i32;
        }
    };
    let disks: Vec<ManagedDisk> = match &args.disk {
        Some(t) => match found.managed.iter().find(|d| &d.target == t) {
            Some(d) => vec![d.clone()],
            None => {
                return refuse(&match found.skipped.iter().find(|d| &d.target == t) {
                    Some(s) => EngineError::NotManaged {
                        what: format!("disk {t} of {} is not managed: {}", args.vm, s.reason),
                    },
                    None => EngineError::NotFound {
                        what: format!("{} has no disk {t}", args.vm),
                    },
                })
            }
        },
        None if found.managed.is_empty() => {
            let why = if found.skipped.is_empty() {
                "it has no disks".to_string()
            } else {
                found
                    .skipped
                    .iter()
                    .map(|s| format!("{}: {}", s.target, s.reason))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            return refuse(&EngineError::NotManaged {
                what: format!("{} has no managed disk ({why})", args.vm),
            });
        }
        None => found.managed.clone(),
    };
    // Every disk's preconditions hold before the first one is written.
    let mut plan = Vec::new();
    for disk in disks {
        let req = Request {
            op,
            uri: uri.clone(),
            domain: args.vm.clone(),
            disk,
        };
        match overlay::ops::preflight(&req, &check, &journal) {
            Ok(changed) => plan.push((req, changed)),
            Err(e) => return refuse(&e),
        }
    }
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            eprintln!(
                "vmoverlay: {}",
                tr_f(
                    "refusing to {operation} without --yes when not run from a terminal. Nothing was changed.",
                    &[("operation", op.word())]
                )
            );
            return EXIT_NOT_CONFIRMED;
        }
        for (req, changed) in &plan {
            let question = match op {
                OpKind::Commit => tr_f(
                    "Commit {size} written by {vm} ({disk}) into {base}?",
                    &[
                        ("size", &human_bytes(*changed)),
                        ("vm", &req.domain),
                        ("disk", &req.disk.target),
                        ("base", &req.disk.base.display().to_string()),
                    ],
                ),
                OpKind::Discard => tr_f(
                    "Discard {size} written by {vm} ({disk}) to {overlay}?",
                    &[
                        ("size", &human_bytes(*changed)),
                        ("vm", &req.domain),
                        ("disk", &req.disk.target),
                        ("overlay", &req.disk.overlay.display().to_string()),
                    ],
                ),
            };
            if !confirm(&question) {
                eprintln!("vmoverlay: {}", tr("not confirmed. Nothing was changed."));
                return EXIT_NOT_CONFIRMED;
            }
        }
    }
    let bar = std::io::stderr().is_terminal();
    for (req, _) in plan {
        let target = req.disk.target.clone();
        let overlay_path = req.disk.overlay.clone();
        let base = req.disk.base.clone();
        let events = overlay::spawn(
            req,
            Box::new(LibvirtCheck::new(conn.clone(), &uri, &args.vm)),
            journal.clone(),
        );
        let result = loop {
            match events.recv_blocking() {
                Ok(JobEvent::Progress(p)) if bar => {
                    let line = match p {
                        Progress::Committing(f) => {
                            format!("committing {target} {:5.1}%", f * 100.0)
                        }
                        Progress::CheckingBase => format!("checking the base of {target}"),
                        Progress::Rebuilding => format!("rebuilding {target}"),
                    };
                    eprint!("\r\x1b[2K{line}");
                }
                Ok(JobEvent::Progress(_)) => {}
                Ok(JobEvent::Done(r)) => break r,
                Err(_) => {
                    break Err(EngineError::Failed {
                        op: op.word().into(),
                        overlay: overlay_path.clone(),
                        detail: "the engine stopped unexpectedly".into(),
                        data: "See the journal".into(),
                    })
                }
            }
        };
        if bar {
            eprint!("\r\x1b[2K");
        }
        match result {
            Ok(o) => {
                let summary = match op {
                    OpKind::Commit => format!(
                        "committed {} into {}; overlay rebuilt empty",
                        human_bytes(o.changed_bytes),
                        base.display()
                    ),
                    OpKind::Discard => format!(
                        "discarded {}; overlay rebuilt empty, base untouched",
                        human_bytes(o.changed_bytes)
                    ),
                };
                journal.set_last(&o.overlay, &summary);
                println!("{} {target}: {summary}", args.vm);
            }
            Err(e) => {
                journal.set_last(&overlay_path, &format!("{} failed: {e}", op.word()));
                return refuse(&e);
            }
        }
    }
    Exit::Ok as i32
}

/// One monitor event as a `watch` line, or `None` for events reported on stderr.
pub fn watch_line(event: &MonitorEvent, as_json: bool) -> Option<String> {
    match event {
        MonitorEvent::Domain(e) => Some(if as_json {
            json!({
                "time": rfc3339(e.time),
                "uri": e.uri,
                "domain": e.domain,
                "uuid": e.uuid,
                "event": e.kind.event_word(),
                "detail": e.kind.detail_word(),
                "observed_after_reconnect": e.after_reconnect,
                "engine_job": e.engine_job,
                "ended_before_asked": e.ended_before_asked,
            })
            .to_string()
        } else {
            format!(
                "{}\t{}\t{}\t{}\t{}{}",
                rfc3339(e.time),
                e.uri,
                e.domain,
                e.kind.event_word(),
                e.kind.detail_word(),
                if e.after_reconnect {
                    "\t(observed after reconnect)"
                } else if e.engine_job.is_some() {
                    "\t(VM Overlay's own paused run)"
                } else {
                    ""
                }
            )
        }),
        MonitorEvent::Connected { uri, time, domains } => Some(if as_json {
            json!({"time": rfc3339(*time), "uri": uri, "event": "connected", "domains": domains.len()})
                .to_string()
        } else {
            format!(
                "{}\t{uri}\tconnected\t{} domains",
                rfc3339(*time),
                domains.len()
            )
        }),
        MonitorEvent::Disconnected { uri, time, reason } => Some(if as_json {
            json!({"time": rfc3339(*time), "uri": uri, "event": "disconnected", "reason": reason})
                .to_string()
        } else {
            format!("{}\t{uri}\tdisconnected\t{reason}", rfc3339(*time))
        }),
        MonitorEvent::ConnectFailed { .. } => None,
    }
}

fn watch(uris: Vec<String>, as_json: bool) -> Exit {
    let ctx = glib::MainContext::default();
    let main_loop = glib::MainLoop::new(Some(&ctx), false);
    let monitor = Monitor::start(MonitorConfig::new(uris));
    let rx = monitor.receiver();
    {
        let main_loop = main_loop.clone();
        ctx.spawn_local(async move {
            let mut model = Model::new();
            while let Ok(event) = rx.recv().await {
                for out in model.apply(event) {
                    if let MonitorEvent::ConnectFailed {
                        uri,
                        error,
                        retry_in,
                        ..
                    } = &out
                    {
                        eprintln!(
                            "vmoverlay: {}",
                            tr_f(
                                "cannot connect to '{uri}': {error}; retrying in {seconds} s",
                                &[
                                    ("uri", uri),
                                    ("error", error),
                                    ("seconds", &format!("{:.1}", retry_in.as_secs_f64())),
                                ]
                            )
                        );
                    }
                    if let Some(line) = watch_line(&out, as_json) {
                        let mut stdout = std::io::stdout().lock();
                        // A closed pipe ends the watch, like any line-oriented tool.
                        if writeln!(stdout, "{line}")
                            .and_then(|_| stdout.flush())
                            .is_err()
                        {
                            main_loop.quit();
                            return;
                        }
                    }
                }
            }
            main_loop.quit();
        });
    }
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let main_loop = main_loop.clone();
        glib_unix::unix_signal_add_local(signal, move || {
            main_loop.quit();
            glib::ControlFlow::Break
        });
    }
    main_loop.run();
    drop(monitor);
    Exit::Ok
}
