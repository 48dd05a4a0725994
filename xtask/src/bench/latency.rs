//! Section 6: from a refused connect to its count in `/metrics`.
use std::{
    fmt::Write as _,
    net::TcpStream,
    time::{Duration, Instant},
};

use anyhow::Result;
use testkit::closed_port;

use super::harness::{counted, median, start_agent};

pub(super) fn run(report: &mut String) -> Result<f64> {
    let d = start_agent(&[])?;
    let mut times = Vec::new();
    for _ in 0..9 {
        let port = closed_port();
        let _ = TcpStream::connect(("127.0.0.1", port));
        let t = Instant::now();
        while counted(&d, port)? < 1.0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let ms = median(times);
    writeln!(report, "### 6. Event-to-metric latency\n")?;
    writeln!(
        report,
        "From a refused connect returning to its count in `/metrics` (polled back to back), median of 9: **{ms:.1} ms**. Counters are read from the kernel maps at scrape time, so this is one scrape.\n"
    )?;
    Ok(ms)
}
