//! The scriptable command line: `status` and `watch` (more subcommands come with the engine).
//! Output formats and exit codes are a contract that scripts rely on.

use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::libvirt::{self, Model, Monitor, MonitorConfig, MonitorEvent};

/// Exit codes: distinct per failure class, so scripts can tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Exit {
    Ok = 0,
    Failure = 1,
    /// A connection URI could not be opened.
    Connect = 2,
    /// The named domain does not exist.
    NotFound = 3,
    /// Not yet part of this build.
    Unavailable = 69,
}

#[derive(Debug, Parser)]
#[command(
    name = "vmoverlay",
    version = crate::config::VERSION,
    about = "Keeps libvirt/QEMU guests disposable: commit or discard a qcow2 overlay when a guest shuts down",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// libvirt connection URI (repeatable)
    #[arg(long = "connect", short = 'c', value_name = "URI", global = true)]
    pub connect: Vec<String>,

    #[command(subcommand)]
    pub command: Option<Command>,

    /// Old form: the VM whose overlay/base are pinned with --overlay/--base
    pub vm: Option<String>,
    /// Old form: pin this overlay image for VM
    #[arg(long, value_name = "PATH", requires = "vm")]
    pub overlay: Option<PathBuf>,
    /// Old form: pin this base image for VM
    #[arg(long, value_name = "PATH", requires = "vm")]
    pub base: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every domain with its state and the reason for it
    Status {
        /// Only this domain
        vm: Option<String>,
        /// One JSON array instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Print one line per lifecycle event until interrupted
    Watch {
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
}

impl Cli {
    pub fn uris(&self) -> Vec<String> {
        if self.connect.is_empty() {
            vec![libvirt::DEFAULT_URI.to_string()]
        } else {
            self.connect.clone()
        }
    }
}

pub fn run(cli: Cli) -> Exit {
    let uris = cli.uris();
    match cli.command {
        Some(Command::Status { vm, json }) => status(&uris, vm.as_deref(), json),
        Some(Command::Watch { json }) => watch(uris, json),
        None => {
            eprintln!(
                "vmoverlay: the desktop application is not part of this build yet; \
                 use `vmoverlay watch` or `vmoverlay status`. Nothing was changed."
            );
            Exit::Unavailable
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn status(uris: &[String], only: Option<&str>, as_json: bool) -> Exit {
    let mut rows = Vec::new();
    for uri in uris {
        let conn = match libvirt::open(uri, true) {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "vmoverlay: cannot connect to '{uri}': {}. Nothing was changed.",
                    e.message()
                );
                return Exit::Connect;
            }
        };
        match libvirt::list_domains(&conn) {
            Ok(domains) => rows.extend(domains.into_iter().map(|d| (uri.clone(), d))),
            Err(e) => {
                eprintln!(
                    "vmoverlay: cannot list domains on '{uri}': {}. Nothing was changed.",
                    e.message()
                );
                return Exit::Connect;
            }
        }
    }
    if let Some(name) = only {
        rows.retain(|(_, d)| d.name == name);
        if rows.is_empty() {
            eprintln!(
                "vmoverlay: no domain named '{name}' on {}. Nothing was changed.",
                uris.join(", ")
            );
            return Exit::NotFound;
        }
    }
    let mut out = std::io::stdout().lock();
    if as_json {
        let list: Vec<_> = rows
            .iter()
            .map(|(uri, d)| {
                json!({
                    "uri": uri,
                    "domain": d.name,
                    "uuid": d.uuid,
                    "state": d.state.kind.word(),
                    "reason": d.state.reason_word(),
                })
            })
            .collect();
        let _ = writeln!(out, "{}", serde_json::Value::Array(list));
    } else {
        let _ = writeln!(out, "{:<24} {:<14} {:<16} URI", "DOMAIN", "STATE", "REASON");
        for (uri, d) in &rows {
            let _ = writeln!(
                out,
                "{:<24} {:<14} {:<16} {}",
                d.name,
                d.state.kind.word(),
                d.state.reason_word(),
                uri
            );
        }
    }
    Exit::Ok
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
                            "vmoverlay: cannot connect to '{uri}': {error}; retrying in {:.1} s",
                            retry_in.as_secs_f64()
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
