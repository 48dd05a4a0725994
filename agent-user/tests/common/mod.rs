//! Shared harness for tests that run the real daemon against the real kernel.
#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_refusal-agent");

/// True when the test may touch the kernel. Without root it skips loudly, except under CI,
/// where a skip would hide a broken pipeline: there it fails.
pub fn privileged(test: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:").map(|u| u.split_whitespace().next() == Some("0")))
        })
        .unwrap_or(false);
    if root {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: needs root (CAP_BPF, CAP_PERFMON) and CI=true: refusing to skip");
    }
    eprintln!("\n!!! SKIPPED {test}: needs root (CAP_BPF, CAP_PERFMON) to load eBPF programs !!!\n");
    false
}

/// A loopback port with nothing listening on it.
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Daemon {
    pub fn start(args: &[&str]) -> Daemon {
        let addr: SocketAddr = format!("127.0.0.1:{}", closed_port()).parse().unwrap();
        let log = std::env::temp_dir().join(format!("refusal-agent-test-{}-{}.log", std::process::id(), addr.port()));
        let child = Command::new(BIN)
            .arg("run")
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn refusal-agent");
        let mut d = Daemon { child, addr, log };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("daemon exited early ({status}):\n{}", self.log());
            }
            if get(self.addr, "/readyz").is_ok_and(|(code, _)| code == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("daemon not ready after 60 s:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        let (code, body) = get(self.addr, "/metrics").expect("scrape /metrics");
        assert_eq!(code, 200, "{body}");
        body
    }

    /// Stops with SIGTERM and returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        unsafe_kill(self.child.id(), 15);
        let code = self.child.wait().unwrap().code();
        let _ = std::fs::remove_file(&self.log);
        std::mem::forget(self);
        code
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

fn unsafe_kill(pid: u32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Minimal HTTP/1.0 GET, so the tests depend on no client library.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_string()))
}

/// Sum of every sample of `name` whose labels include all of `labels`.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            (n == name && labels.iter().all(|(k, val)| rest.contains(&format!("{k}=\"{val}\""))))
                .then(|| v.parse::<f64>().ok())?
        })
        .sum()
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
