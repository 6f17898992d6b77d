//! Monitor benchmark (`cargo bench --bench monitor`), printed as a table:
//! - latency from a test-driver action (create/destroy of a transient domain, on another
//!   thread) to its lifecycle event arriving on the glib main context, over 10 000 events;
//! - time from starting a monitor to a modelled snapshot of 1 000 domains at connect.
//!
//! Options: `--events N` (default 10000), `--domains N` (default 1000), `--rounds N` (5).

#[path = "support/args.rs"]
mod args;
use args::arg;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use vmoverlay::libvirt::{Model, Monitor, MonitorConfig, MonitorEvent};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Runs `fut` on the default main context (where libvirt's events are dispatched, as in the
/// app) until it completes.
fn block_on_main<T: 'static>(fut: impl std::future::Future<Output = T> + 'static) -> T {
    let ctx = glib::MainContext::default();
    ctx.block_on(fut)
}

fn event_latency(events: usize) -> Vec<Duration> {
    let uri = "test:///default".to_string();
    let mut config = MonitorConfig::new(vec![uri.clone()]);
    config.read_only = false;
    let monitor = Monitor::start(config);
    let rx = monitor.receiver();
    block_on_main({
        let rx = rx.clone();
        async move {
            loop {
                if let MonitorEvent::Connected { .. } = rx.recv().await.unwrap() {
                    break;
                }
            }
        }
    });
    let conn = monitor.connection(&uri).expect("connected");
    let (ack_tx, ack_rx) = mpsc::channel::<()>();
    let (time_tx, time_rx) = mpsc::channel::<Instant>();
    let actor = std::thread::spawn(move || {
        let xml = "<domain type='test'><name>bench</name><memory>1024</memory>\
                   <os><type>hvm</type></os></domain>";
        let mut dom = None;
        for i in 0..events {
            let t = Instant::now();
            if i % 2 == 0 {
                dom = Some(conn.create_domain_xml(xml, 0).unwrap());
            } else {
                dom.take().unwrap().destroy().unwrap();
            }
            time_tx.send(t).unwrap();
            // One event in flight at a time: measures latency, not queueing.
            ack_rx.recv().unwrap();
        }
    });
    let latencies = block_on_main(async move {
        let mut out = Vec::with_capacity(events);
        while out.len() < events {
            if let MonitorEvent::Domain(_) = rx.recv().await.unwrap() {
                let sent = time_rx.recv().unwrap();
                out.push(sent.elapsed());
                ack_tx.send(()).unwrap();
            }
        }
        out
    });
    actor.join().unwrap();
    latencies
}

fn connect_and_model(domains: usize) -> Duration {
    let dir = std::env::temp_dir().join(format!("vmoverlay-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let node = dir.join("node.xml");
    let mut xml = String::from("<node>\n");
    for i in 0..domains {
        xml.push_str(&format!(
            "<domain type='test'><name>vm{i:04}</name><memory>1024</memory>\
             <os><type>hvm</type></os></domain>\n"
        ));
    }
    xml.push_str("</node>\n");
    std::fs::write(&node, xml).unwrap();
    let uri = format!("test://{}", node.display());
    let start = Instant::now();
    let monitor = Monitor::start(MonitorConfig::new(vec![uri.clone()]));
    let rx = monitor.receiver();
    let model = block_on_main(async move {
        let mut model = Model::new();
        loop {
            let ev = rx.recv().await.unwrap();
            let done = matches!(ev, MonitorEvent::Connected { .. });
            model.apply(ev);
            if done {
                return model;
            }
        }
    });
    let took = start.elapsed();
    assert_eq!(model.connections[&uri].domains.len(), domains);
    drop(monitor);
    let _ = std::fs::remove_dir_all(&dir);
    took
}

fn main() {
    let events = arg("--events", 10_000);
    let domains = arg("--domains", 1_000);
    let rounds = arg("--rounds", 5);
    // Holding the default context makes this thread its owner, as the app's main loop is.
    let ctx = glib::MainContext::default();
    let _guard = ctx.acquire().expect("own the default main context");

    let mut lat = event_latency(events);
    lat.sort();
    let mut connect: Vec<Duration> = (0..rounds).map(|_| connect_and_model(domains)).collect();
    connect.sort();

    println!("| measurement | n | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    println!(
        "| test-driver action -> event on main context | {} events | {} | {} | {} |",
        lat.len(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap()),
    );
    println!(
        "| connect + list + model {domains} domains | {} rounds | {} | {} | {} |",
        connect.len(),
        ms(percentile(&connect, 0.5)),
        ms(percentile(&connect, 0.99)),
        ms(*connect.last().unwrap()),
    );
}
