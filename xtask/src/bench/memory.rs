//! Sections 4–5: the daemon's memory after a port scan and at many live series, and what a
//! scrape costs at that size.
use std::{
    fmt::Write as _,
    net::TcpStream,
    time::{Duration, Instant},
};

use anyhow::Result;
use testkit::{
    metrics::{FAILURES, SERIES_OVERFLOW},
    value,
};

use super::{
    Opts,
    harness::{median, rss_mib, start_agent},
};

/// Refused connects to `count` distinct ports from `first` (skipping any that accept).
fn scan(first: u32, count: u32) {
    for p in first..first + count {
        let _ = TcpStream::connect(("127.0.0.1", p as u16));
    }
}

pub(super) fn run(o: &Opts, report: &mut String) -> Result<(f64, f64)> {
    let (scan_ports, series) = if o.smoke { (2_000, 1_000) } else { (65_535, 10_000) };
    let d = start_agent(&[])?;
    let rss0 = rss_mib(&d)?;
    scan(1, scan_ports);
    let m = d.try_metrics()?;
    let rss_scan = rss_mib(&d)?;
    let folded = value(&m, SERIES_OVERFLOW, &[("metric", FAILURES)]);
    drop(d);

    let d = start_agent(&[])?;
    scan(20_000, series);
    // Let a tick resolve everything once before timing scrapes.
    std::thread::sleep(Duration::from_millis(500));
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..11 {
        let t = Instant::now();
        size = d.try_metrics()?.len();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let rss_series = rss_mib(&d)?;
    let m = d.try_metrics()?;
    let live = testkit::series(&m, FAILURES);
    let scrape_ms = median(times);
    writeln!(report, "### 4–5. Memory and scrape cost\n")?;
    writeln!(report, "| measurement | value |")?;
    writeln!(report, "| --- | --- |")?;
    writeln!(report, "| RSS at start | {rss0:.1} MiB |")?;
    writeln!(
        report,
        "| RSS after a {scan_ports}-port loopback connect scan | {rss_scan:.1} MiB ({folded:.0} label sets folded into `other`) |"
    )?;
    writeln!(
        report,
        "| RSS with {live} live `refusal_connect_failures_total` series (plus as many inbound ones) | {rss_series:.1} MiB |"
    )?;
    writeln!(
        report,
        "| `/metrics` scrape at that size, median of 11 | {scrape_ms:.1} ms, {:.0} KiB |",
        size as f64 / 1024.0
    )?;
    writeln!(report)?;
    Ok((rss_series, scrape_ms))
}
