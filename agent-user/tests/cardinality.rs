//! Abuse of the label space: a port scan and a flood of destinations keep series and memory
//! bounded while totals stay exact. Alone in its own test binary: every daemon sees every
//! connect on the host, so a flood would fold other tests' series too.
use std::{net::TcpStream, time::Duration};

use testkit::{
    Daemon, as_comm, closed_port,
    metrics::{EVENTS_DROPPED, FAILURES, INBOUND_REFUSED, SERIES_OVERFLOW},
    privileged, series, value,
};

const BIN: &str = env!("CARGO_BIN_EXE_refusal-agent");

#[test]
fn port_scan_and_destination_flood_stay_bounded_and_exact() {
    if !privileged("port_scan_and_destination_flood_stay_bounded_and_exact") {
        return;
    }
    let d = Daemon::start(BIN, &["--max-series", "10000"]);
    let (scanned, flooded) = as_comm("scanner", || {
        // Every port of 127.0.0.1: the ones that accept (this daemon's own, and whatever else
        // listens) do not count as refusals.
        let scanned = (1..=65535u16)
            .filter(|p| TcpStream::connect(("127.0.0.1", *p)).is_err())
            .count();
        // 50,000 distinct loopback destinations on one closed port.
        let port = closed_port();
        let flooded = (0..50_000u32)
            .filter(|i| {
                let a = std::net::Ipv4Addr::new(127, 1 + (i >> 16) as u8, (i >> 8) as u8, *i as u8);
                TcpStream::connect_timeout(&(a, port).into(), Duration::from_secs(1)).is_err()
            })
            .count();
        (scanned, flooded)
    });
    assert_eq!(flooded, 50_000);
    let total = (scanned + flooded) as f64;
    // A couple of collections after the last connect.
    std::thread::sleep(Duration::from_millis(600));
    let m = d.metrics();
    // Every refusal keeps its scanner, past the series cap and past the kernel's full map.
    assert_eq!(
        value(&m, FAILURES, &[("comm", "scanner"), ("errno", "ECONNREFUSED")]),
        total
    );
    assert_eq!(value(&m, FAILURES, &[("comm", "other")]), 0.0);
    // Folding: at most max_series label sets of their own, plus the `other` ones.
    let failures = series(&m, FAILURES);
    assert!(failures <= 10_000 + 3, "{failures} failure series");
    assert!(value(&m, SERIES_OVERFLOW, &[("metric", FAILURES)]) > 0.0);
    // The kernel's own map (16,384 targets) overflowed too, and said so.
    assert!(value(&m, EVENTS_DROPPED, &[("where", "target_map_full")]) > 0.0);
    let inbound = series(&m, INBOUND_REFUSED);
    assert!(inbound <= 10_000 + 1, "{inbound} inbound series");
    let rss_kib = d.rss_kib();
    eprintln!(
        "after {total} refusals: {failures} failure series, {inbound} inbound series, RSS {} MiB",
        rss_kib / 1024
    );
    assert!(rss_kib < 256 * 1024, "RSS {rss_kib} KiB");
    assert_eq!(d.stop(), Some(0));
}
