//! `vmoverlay watch`: one line per lifecycle event until interrupted.

use std::io::Write;
use std::time::SystemTime;

use serde_json::json;

use super::args::Exit;
use crate::i18n::tr_f;
use crate::libvirt::{Model, Monitor, MonitorConfig, MonitorEvent};

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
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
        MonitorEvent::ConnectFailed { .. } | MonitorEvent::Resynced { .. } => None,
    }
}

pub fn run(uris: Vec<String>, as_json: bool) -> Exit {
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
