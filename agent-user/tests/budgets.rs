//! Retry budgets with real clients and servers: curl whose `--retry-max-time` is shorter than a
//! server's boot gives up (and says by how much), a client whose budget covers the boot
//! cold-starts, and cold starts of known durations give the advice's quantiles.
use std::{
    net::{TcpListener, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use testkit::{Daemon, closed_port, get, metrics::EPISODES, privileged, wait_value};

const BIN: &str = env!("CARGO_BIN_EXE_refusal-agent");

fn targets(d: &Daemon) -> Value {
    let (code, body) = get(d.addr, "/api/targets").expect("GET /api/targets");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

fn target<'a>(all: &'a Value, comm: &str, port: u16) -> &'a Value {
    (all["targets"].as_array().unwrap().iter())
        .find(|t| t["comm"] == comm && t["dst_port"] == port)
        .unwrap_or_else(|| panic!("no target of {comm} on {port}: {all:#}"))
}

/// Connects to 127.0.0.1:`port` every `every` until one succeeds; how long that took.
fn until_accepted(port: u16, every: Duration) -> Duration {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "port {port} never came up");
        thread::sleep(every);
    }
    start.elapsed()
}

#[test]
fn a_client_whose_retry_budget_is_shorter_than_the_boot_gave_up() {
    if !privileged("a_client_whose_retry_budget_is_shorter_than_the_boot_gave_up") {
        return;
    }
    let d = Daemon::start(BIN, &["--gave-up-after", "2s"]);
    let port = closed_port();
    let start = Instant::now();
    // The server boots for 6 s, then listens and accepts whoever comes.
    let server = thread::spawn(move || {
        thread::sleep(Duration::from_secs(6));
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        for s in l.incoming().take(2) {
            drop(s);
        }
    });
    // A patient client, retrying every half second for as long as it takes.
    let patient = thread::Builder::new()
        .name("patient".into())
        .spawn(move || until_accepted(port, Duration::from_millis(500)))
        .unwrap();
    // curl retries refused connects for 3 s at most (at 0, 1 and 3 s), then gives up.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--retry",
            "10",
            "--retry-connrefused",
            "--retry-max-time",
            "3",
        ])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("run curl");
    assert_eq!(out.status.code(), Some(7), "curl must fail to connect: {out:?}");
    let gave_up_at = start.elapsed();
    assert!(gave_up_at < Duration::from_secs(6), "curl retried until {gave_up_at:?}");
    let waited = patient.join().unwrap();
    let p = port.to_string();
    let labels = |comm, outcome| [("comm", comm), ("dst_port", p.as_str()), ("outcome", outcome)];
    assert_eq!(wait_value(&d, EPISODES, &labels("curl", "gave_up"), 1.0), 1.0);
    assert_eq!(wait_value(&d, EPISODES, &labels("patient", "cold_start"), 1.0), 1.0);
    assert_eq!(wait_value(&d, EPISODES, &labels("curl", "cold_start"), 0.0), 0.0);
    let all = targets(&d);
    let curl = target(&all, "curl", port);
    let outcome = &curl["recent_outcomes"][0];
    assert_eq!(outcome["outcome"], "gave_up", "{curl:#}");
    let (retried, boot) = (outcome["retried"].as_f64().unwrap(), outcome["boot"].as_f64().unwrap());
    // curl's last try is at about 3 s; the server listens at 6 s (measured from the first
    // refusal, a few ms after the test started).
    assert!((2.5..=3.5).contains(&retried), "retried {retried}: {curl:#}");
    assert!((5.5..=6.6).contains(&boot), "boot {boot}: {curl:#}");
    assert_eq!(outcome["listening"], true, "{curl:#}");
    let explanation = curl["explanation"].as_str().unwrap();
    assert!(
        explanation.starts_with("curl stopped retrying after 3s; ")
            && explanation.contains(&format!(":{port} started listening 6s after the first refusal"))
            && explanation.ends_with("its retry budget is shorter than the boot"),
        "{explanation}"
    );
    let patient_t = target(&all, "patient", port);
    assert_eq!(
        patient_t["recent_outcomes"][0]["outcome"], "cold_start",
        "{patient_t:#} ({waited:?})"
    );
    let _ = TcpStream::connect(("127.0.0.1", port));
    server.join().unwrap();
}

#[test]
fn cold_starts_of_known_durations_give_the_advice() {
    if !privileged("cold_starts_of_known_durations_give_the_advice") {
        return;
    }
    let d = Daemon::start(BIN, &["--advice-min-cold-starts", "5"]);
    let port = closed_port();
    // Five boots of known length: the server listens after each, takes one connection, stops.
    // Each is measured from the first refusal the daemon's 250 ms collection sees (up to a
    // collection late) to the first success (up to a 50 ms poll late): the boots sit where that
    // keeps each in its histogram bucket, (0.5, 1], (1, 2], (1, 2], (2, 3], (3, 5].
    let boots_ms = [800u64, 1300, 1600, 2600, 4000];
    for (i, ms) in boots_ms.iter().enumerate() {
        let ms = *ms;
        let server = thread::spawn(move || {
            thread::sleep(Duration::from_millis(ms));
            let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
            drop(l.accept().unwrap());
        });
        let took = thread::Builder::new()
            .name("booter".into())
            .spawn(move || until_accepted(port, Duration::from_millis(50)))
            .unwrap()
            .join()
            .unwrap();
        server.join().unwrap();
        let p = port.to_string();
        let labels = [("comm", "booter"), ("dst_port", p.as_str()), ("outcome", "cold_start")];
        let n = (i + 1) as f64;
        assert_eq!(
            wait_value(&d, EPISODES, &labels, n),
            n,
            "cold start {} took {took:?}",
            i + 1
        );
        let all = targets(&d);
        let ports = all["ports"].as_array().unwrap();
        let advice = ports.iter().find(|a| a["dst_port"] == port);
        // Shown once enough were seen, and saying how many.
        assert_eq!(
            advice.is_some(),
            i + 1 == boots_ms.len(),
            "after {} cold starts: {all:#}",
            i + 1
        );
    }
    let all = targets(&d);
    let advice = all["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["dst_port"] == port)
        .unwrap();
    let secs = |k: &str| advice[k].as_f64().unwrap();
    // Within the histogram's bucket resolution of the true quantiles (nearest rank: p50 1.6 s,
    // p95 and max 4 s, min 0.8 s).
    assert_eq!(advice["seen"], 5, "{advice:#}");
    let bucket = |v: f64, lo: f64, hi: f64| v > lo && v <= hi;
    assert!(bucket(secs("p50"), 1.0, 2.0), "{advice:#}");
    assert!(
        bucket(secs("p95"), 3.0, 5.0) && secs("max") == secs("p95"),
        "{advice:#}"
    );
    assert!(bucket(secs("min"), 0.5, 1.0), "{advice:#}");
    // The longest plus 15 %, rounded up to a second.
    assert_eq!(secs("retry_for"), (secs("max") * 1.15).ceil(), "{advice:#}");
    let sentence = advice["sentence"].as_str().unwrap();
    assert!(
        sentence.starts_with(&format!("cold starts of :{port} took 0."))
            && sentence.contains("5 seen in 24h): retry for at least 5.0 s"),
        "{sentence}"
    );
    // `status` shows it below the targets.
    let out = Command::new(BIN)
        .args(["status", "--listen", &d.addr.to_string()])
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("RETRY ADVICE\n{sentence}\n")), "{text}");
}
