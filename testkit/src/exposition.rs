//! Reading the Prometheus text format the daemon serves.
use std::time::{Duration, Instant};

use crate::daemon::Daemon;

/// Sum of every sample of `name` in `text` whose labels include all of `labels`.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            let matches = n == name && labels.iter().all(|(k, val)| rest.contains(&format!("{k}=\"{val}\"")));
            matches.then(|| v.parse::<f64>().ok())?
        })
        .sum()
}

/// How many series of `name` `text` holds.
pub fn series(text: &str, name: &str) -> usize {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
        .count()
}

/// Polls `/metrics` until `name{labels}` reaches `want` (counts land within a collection), then
/// returns the final value: the caller asserts equality, so an overshoot still fails.
pub fn wait_value(d: &Daemon, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = value(&d.metrics(), name, labels);
        if v >= want || Instant::now() > deadline {
            // One more look, to catch late extra counts.
            std::thread::sleep(Duration::from_millis(300));
            return value(&d.metrics(), name, labels);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
