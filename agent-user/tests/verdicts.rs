//! Verdicts end to end: the real daemon with short thresholds, real clients and servers.
use std::{
    net::{TcpListener, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use testkit::{
    Daemon, Netns, closed_port, get,
    metrics::{COLD_START_COUNT, COLD_START_SUM, EPISODES, FAILURES, INBOUND_DIAGNOSIS, INBOUND_REFUSED, TARGET_STATE},
    privileged, sh, value, wait_value,
};

const BIN: &str = env!("CARGO_BIN_EXE_refusal-agent");

/// Connects every `every` until `until` says stop; returns (refused, succeeded).
fn retry_client(
    comm: &str,
    addr: &'static str,
    port: u16,
    every: Duration,
    stop: impl Fn(u32) -> bool + Send + 'static,
) -> thread::JoinHandle<(u32, u32)> {
    thread::Builder::new()
        .name(comm.into())
        .spawn(move || {
            let (mut refused, mut ok) = (0, 0);
            while !stop(ok) {
                match TcpStream::connect((addr, port)) {
                    Ok(_) => ok += 1,
                    Err(_) => refused += 1,
                }
                thread::sleep(every);
            }
            (refused, ok)
        })
        .unwrap()
}

fn targets(d: &Daemon) -> Vec<serde_json::Value> {
    let (code, body) = get(d.addr, "/api/targets").unwrap();
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["targets"].as_array().unwrap().clone()
}

fn target(d: &Daemon, addr: &str, port: u16) -> Option<serde_json::Value> {
    targets(d)
        .into_iter()
        .find(|t| t["dst_addr"] == addr && t["dst_port"] == port)
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cold_start_is_one_episode_with_its_duration() {
    if !privileged("cold_start_is_one_episode_with_its_duration") {
        return;
    }
    let d = Daemon::start(BIN, &["--persistent-after", "60s", "--cold-start-max", "30s"]);
    let port = closed_port();
    let client = retry_client("coldclient", "127.0.0.1", port, Duration::from_millis(300), |ok| {
        ok >= 1
    });
    thread::sleep(Duration::from_secs(5));
    let server = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (refused, ok) = client.join().unwrap();
    assert_eq!(ok, 1);
    assert!(refused >= 10, "{refused}");
    let p = port.to_string();
    let labels = [
        ("comm", "coldclient"),
        ("dst_port", p.as_str()),
        ("outcome", "cold_start"),
    ];
    assert_eq!(wait_value(&d, EPISODES, &labels, 1.0), 1.0);
    let m = d.metrics();
    assert_eq!(value(&m, COLD_START_COUNT, &[("dst_port", &p)]), 1.0);
    let secs = value(&m, COLD_START_SUM, &[("dst_port", &p)]);
    assert!(
        (4.5..6.5).contains(&secs),
        "cold start took {secs} s, the server came up after 5 s"
    );
    assert_eq!(
        value(&m, TARGET_STATE, &[("dst_port", &p)]),
        0.0,
        "no open state after the success:\n{m}"
    );
    assert_eq!(
        value(&m, FAILURES, &[("dst_port", &p), ("comm", "coldclient")]),
        f64::from(refused)
    );
    let t = target(&d, "127.0.0.1", port).expect("target in /api/targets");
    assert_eq!(t["state"], "ok");
    assert_eq!(t["cold_starts"], 1);
    assert_eq!(t["refused_total"], refused);
    drop(server);
}

#[test]
fn a_port_that_never_listens_becomes_persistent() {
    if !privileged("a_port_that_never_listens_becomes_persistent") {
        return;
    }
    let d = Daemon::start(BIN, &["--persistent-after", "3s", "--min-attempts", "3"]);
    let port = closed_port();
    let p = port.to_string();
    let client = retry_client("persclient", "127.0.0.1", port, Duration::from_millis(250), {
        let start = Instant::now();
        move |_| start.elapsed() > Duration::from_secs(5)
    });
    let state = |s: &str| value(&d.metrics(), TARGET_STATE, &[("dst_port", &p), ("state", s)]);
    wait_for("refusing", Duration::from_secs(3), || state("refusing") == 1.0);
    assert_eq!(state("persistent"), 0.0);
    wait_for("persistent", Duration::from_secs(8), || state("persistent") == 1.0);
    assert_eq!(state("refusing"), 0.0);
    let (refused, ok) = client.join().unwrap();
    assert_eq!(ok, 0);
    let t = target(&d, "127.0.0.1", port).unwrap();
    assert_eq!(t["state"], "persistent");
    assert!(t["explanation"].as_str().unwrap().contains("persistent"), "{t}");
    thread::sleep(Duration::from_millis(600));
    let t = target(&d, "127.0.0.1", port).unwrap();
    assert_eq!(t["refused_total"], refused);
    assert_eq!(t["counts"]["ECONNREFUSED"], refused);
    // `status` renders the same target.
    let out = Command::new(BIN)
        .args(["status", "--listen", &d.addr.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.lines()
            .any(|l| l.contains(&format!("127.0.0.1:{port}")) && l.contains("persistent")),
        "{text}"
    );
}

#[test]
fn crash_looping_server_is_flapping() {
    if !privileged("crash_looping_server_is_flapping") {
        return;
    }
    let d = Daemon::start(
        BIN,
        &[
            "--flap-episodes",
            "3",
            "--flap-window",
            "2m",
            "--persistent-after",
            "60s",
        ],
    );
    let port = closed_port();
    let p = port.to_string();
    let client = retry_client("flapclient", "127.0.0.1", port, Duration::from_millis(150), {
        let start = Instant::now();
        move |_| start.elapsed() > Duration::from_millis(7500)
    });
    // Down 1 s, up 1 s, three times over: three episodes, each ended by a success.
    for _ in 0..3 {
        thread::sleep(Duration::from_secs(1));
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        l.set_nonblocking(true).unwrap();
        let up = Instant::now();
        while up.elapsed() < Duration::from_secs(1) {
            while l.accept().is_ok() {}
            thread::sleep(Duration::from_millis(20));
        }
    }
    let state = |s: &str| value(&d.metrics(), TARGET_STATE, &[("dst_port", &p), ("state", s)]);
    wait_for("flapping", Duration::from_secs(5), || state("flapping") == 1.0);
    client.join().unwrap();
    let t = target(&d, "127.0.0.1", port).unwrap();
    assert_eq!(t["state"], "flapping");
    assert!(t["episodes_total"].as_u64().unwrap() >= 3, "{t}");
    assert_eq!(
        value(&d.metrics(), EPISODES, &[("dst_port", &p), ("outcome", "cold_start")]),
        3.0
    );
}

#[test]
fn same_port_answering_elsewhere_is_a_stale_address() {
    if !privileged("same_port_answering_elsewhere_is_a_stale_address") {
        return;
    }
    let d = Daemon::start(BIN, &["--persistent-after", "60s"]);
    let listener = TcpListener::bind("127.0.0.2:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || while listener.accept().is_ok() {});
    thread::Builder::new()
        .name("staleclient".into())
        .spawn(move || {
            for _ in 0..6 {
                TcpStream::connect(("127.0.0.3", port)).unwrap_err();
                thread::sleep(Duration::from_millis(100));
                TcpStream::connect(("127.0.0.2", port)).unwrap();
            }
        })
        .unwrap()
        .join()
        .unwrap();
    wait_for("stale_address after 6 refusals", Duration::from_secs(5), || {
        target(&d, "127.0.0.3", port).is_some_and(|t| t["diagnosis"] == "stale_address" && t["refused_total"] == 6)
    });
    let t = target(&d, "127.0.0.3", port).unwrap();
    assert_eq!(t["refused_total"], 6);
    assert!(t["explanation"].as_str().unwrap().contains("127.0.0.2"), "{t}");
}

#[test]
fn inbound_refusals_are_diagnosed_from_the_listeners() {
    if !privileged("inbound_refusals_are_diagnosed_from_the_listeners") {
        return;
    }
    let ns = Netns::new(21);
    sh(&format!("ip addr add 10.200.21.3/24 dev {}", ns.host_if));
    let d = Daemon::start(BIN, &[]);
    // loopback_only: a listener on 127.0.0.1 only, clients arriving on the veth address.
    let lo = TcpListener::bind("127.0.0.1:0").unwrap();
    let lo_port = lo.local_addr().unwrap().port();
    // wrong_address: a listener on the host's other veth address.
    let other = TcpListener::bind("10.200.21.3:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    // never_listened: nothing at all, since the daemon started (the listener history).
    let none_port = closed_port();
    for port in [lo_port, other_port, none_port] {
        let out = ns.exec(&format!("curl -s http://10.200.21.1:{port}/[1-3]; true"));
        assert!(out.status.success());
    }
    for (port, diagnosis) in [
        (lo_port, "loopback_only"),
        (other_port, "wrong_address"),
        (none_port, "never_listened"),
    ] {
        let p = port.to_string();
        let labels = [
            ("local_addr", "10.200.21.1"),
            ("local_port", p.as_str()),
            ("diagnosis", diagnosis),
        ];
        assert_eq!(wait_value(&d, INBOUND_DIAGNOSIS, &labels, 1.0), 1.0, "{diagnosis}");
        let inbound = [("local_addr", "10.200.21.1"), ("local_port", p.as_str())];
        assert_eq!(value(&d.metrics(), INBOUND_REFUSED, &inbound), 3.0);
        // Exactly one diagnosis per port.
        assert_eq!(
            value(&d.metrics(), INBOUND_DIAGNOSIS, &[("local_port", p.as_str())]),
            1.0
        );
    }
}
