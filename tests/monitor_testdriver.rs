//! The monitor against libvirt's test driver. Its events reach only callbacks on the same
//! connection, so actions go through the monitor's own connection.

use std::time::{Duration, Instant};

use vmoverlay::libvirt::{
    self, Lifecycle, Model, Monitor, MonitorConfig, MonitorEvent, StateKind, Stopped,
};

fn monitor(uri: &str) -> Monitor {
    libvirt::spawn_event_thread();
    let mut config = MonitorConfig::new(vec![uri.to_string()]);
    config.read_only = false; // the test driver needs write access to create domains
    Monitor::start(config)
}

fn next(rx: &async_channel::Receiver<MonitorEvent>, what: &str) -> MonitorEvent {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(ev) = rx.try_recv() {
            return ev;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn next_domain_event(
    rx: &async_channel::Receiver<MonitorEvent>,
    what: &str,
) -> (String, Lifecycle) {
    match next(rx, what) {
        MonitorEvent::Domain(e) => {
            assert!(!e.after_reconnect);
            assert_eq!(e.uuid.len(), 36, "{e:?}");
            (e.domain, e.kind)
        }
        other => panic!("expected {what}, got {other:?}"),
    }
}

const XML: &str =
    "<domain type='test'><name>NAME</name><memory>1024</memory><os><type>hvm</type></os></domain>";

#[test]
fn create_shutdown_destroy_arrive_typed() {
    let uri = "test:///default";
    let mon = monitor(uri);
    let rx = mon.receiver();
    match next(&rx, "connected") {
        MonitorEvent::Connected {
            uri: u, domains, ..
        } => {
            assert_eq!(u, uri);
            let test = domains
                .iter()
                .find(|d| d.name == "test")
                .expect("default domain");
            assert_eq!(test.state.kind, StateKind::Running);
        }
        other => panic!("expected Connected, got {other:?}"),
    }
    let conn = mon.connection(uri).expect("connected");

    let dom = conn
        .create_domain_xml(&XML.replace("NAME", "t1"), 0)
        .unwrap();
    assert_eq!(
        next_domain_event(&rx, "started"),
        ("t1".into(), Lifecycle::from_raw(2, 0))
    );
    dom.shutdown().unwrap();
    assert_eq!(
        next_domain_event(&rx, "stopped/shutdown"),
        ("t1".into(), Lifecycle::Stopped(Stopped::Shutdown))
    );

    let dom = conn
        .create_domain_xml(&XML.replace("NAME", "t2"), 0)
        .unwrap();
    assert_eq!(next_domain_event(&rx, "started").0, "t2");
    dom.suspend().unwrap();
    assert_eq!(
        next_domain_event(&rx, "suspended").1.event_word(),
        "suspended"
    );
    dom.resume().unwrap();
    assert_eq!(next_domain_event(&rx, "resumed").1.event_word(), "resumed");
    dom.destroy().unwrap();
    assert_eq!(
        next_domain_event(&rx, "stopped/destroyed"),
        ("t2".into(), Lifecycle::Stopped(Stopped::Destroyed))
    );

    let dom = conn.define_domain_xml(&XML.replace("NAME", "t3")).unwrap();
    let (name, kind) = next_domain_event(&rx, "defined");
    assert_eq!(
        (
            name.as_str(),
            kind.event_word().as_str(),
            kind.detail_word().as_str()
        ),
        ("t3", "defined", "added")
    );
    dom.undefine().unwrap();
    let (_, kind) = next_domain_event(&rx, "undefined");
    assert_eq!(
        (kind.event_word().as_str(), kind.detail_word().as_str()),
        ("undefined", "removed")
    );
}

#[test]
fn custom_node_xml_is_listed_and_modelled() {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("node.xml");
    std::fs::write(
        &node,
        r#"<node>
  <domain type='test'>
    <name>demo</name><uuid>11111111-2222-3333-4444-555555555555</uuid>
    <memory>1024</memory><os><type>hvm</type></os>
  </domain>
  <domain type='test'>
    <name>idle</name><uuid>11111111-2222-3333-4444-666666666666</uuid>
    <memory>1024</memory><os><type>hvm</type></os>
  </domain>
</node>"#,
    )
    .unwrap();
    let uri = format!("test://{}", node.display());
    let mon = monitor(&uri);
    let rx = mon.receiver();
    let mut model = Model::new();
    let connected = next(&rx, "connected");
    model.apply(connected);
    let demo = model.domain(&uri, "demo").expect("demo domain modelled");
    assert_eq!(demo.uuid, "11111111-2222-3333-4444-555555555555");
    assert_eq!(demo.state.kind, StateKind::Running);

    let conn = mon.connection(&uri).unwrap();
    conn.lookup_domain_by_name("demo")
        .unwrap()
        .destroy()
        .unwrap();
    let ev = next(&rx, "stopped");
    let out = model.apply(ev);
    assert_eq!(out.len(), 1);
    let demo = model.domain(&uri, "demo").unwrap();
    assert_eq!(demo.state.kind, StateKind::Shutoff);
    assert_eq!(demo.state.reason_word(), "destroyed");
}

#[test]
fn unreachable_uri_is_retried_with_backoff() {
    let uri = "qemu:///system?socket=/nonexistent/vmoverlay/libvirt-sock";
    let mon = monitor(uri);
    let rx = mon.receiver();
    let mut delays = Vec::new();
    for _ in 0..3 {
        match next(&rx, "connect failure") {
            MonitorEvent::ConnectFailed {
                error, retry_in, ..
            } => {
                assert!(
                    error.contains("/nonexistent/vmoverlay/libvirt-sock"),
                    "{error}"
                );
                delays.push(retry_in);
            }
            other => panic!("expected ConnectFailed, got {other:?}"),
        }
    }
    assert!(delays[0] < delays[1] && delays[1] < delays[2], "{delays:?}");
    assert!(mon.connection(uri).is_none());
}
