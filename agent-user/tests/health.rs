//! A daemon that cannot do its job says so: faults injected into the running daemon's own
//! syscalls with strace (no test hook in the product), a map read refused and the listening
//! socket broken.
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use testkit::{Daemon, get, metrics::COLLECTIONS_FAILED, privileged, value, which};

const BIN: &str = env!("CARGO_BIN_EXE_refusal-agent");

/// strace attached to every thread of `pid`, making `syscall` fail with `error`.
struct Fault(Child);

impl Fault {
    fn inject(pid: u32, syscall: &str, error: &str) -> Fault {
        which("strace").expect("strace (cargo xtask setup installs it)");
        let child = Command::new("strace")
            .args(["-f", "-qq", "-o", "/dev/null", "-p", &pid.to_string()])
            .args([
                "-e",
                &format!("trace={syscall}"),
                "-e",
                &format!("inject={syscall}:error={error}"),
            ])
            .stderr(Stdio::null())
            .spawn()
            .expect("strace");
        Fault(child)
    }
}

impl Drop for Fault {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn failed_collections_answer_500_and_unready_then_recover() {
    if !privileged("failed_collections_answer_500_and_unready_then_recover") {
        return;
    }
    let d = Daemon::start(BIN, &[]);
    let status = |path| get(d.addr, path).map(|(code, _)| code).unwrap_or(0);
    let fault = Fault::inject(d.pid(), "bpf", "EPERM");
    until("/readyz to fail", || status("/readyz") == 503);
    let (code, body) = get(d.addr, "/metrics").unwrap();
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("Operation not permitted"), "{body}");
    assert_eq!(status("/healthz"), 200, "liveness is not readiness");
    drop(fault);
    until("/readyz to recover", || status("/readyz") == 200);
    let m = d.metrics();
    assert_eq!(value(&m, COLLECTIONS_FAILED, &[("during", "scrape")]), 1.0);
    let ticks = d.log().matches("collection failed").count();
    assert!(ticks > 0);
    assert_eq!(value(&m, COLLECTIONS_FAILED, &[("during", "tick")]), ticks as f64);
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn a_broken_listening_socket_ends_the_daemon_non_zero() {
    if !privileged("a_broken_listening_socket_ends_the_daemon_non_zero") {
        return;
    }
    let mut d = Daemon::start(BIN, &[]);
    let _fault = Fault::inject(d.pid(), "accept4", "EINVAL");
    // strace needs a moment to attach; each try is one accept.
    until("the daemon to exit", || {
        let _ = get(d.addr, "/healthz");
        !d.alive()
    });
    assert_eq!(d.wait_exit(Duration::from_secs(5)), Some(1));
    assert!(d.log().contains("the listening socket failed"), "{}", d.log());
}
