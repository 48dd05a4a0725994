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
    /// A pin directory of its own, removed with it (tests that pass `--pin-dir` manage theirs).
    own_pins: Option<PathBuf>,
}

/// A bpffs directory for one test's pins.
pub fn pin_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/refusal-agent-test/{}-{name}", std::process::id()))
}

impl Daemon {
    /// Starts `refusal-agent run` on a free loopback port, without waiting for it. Each daemon
    /// pins under its own directory unless `args` name one, so tests run side by side.
    pub fn spawn(args: &[&str]) -> Daemon {
        let addr: SocketAddr = format!("127.0.0.1:{}", closed_port()).parse().unwrap();
        let log = std::env::temp_dir().join(format!("refusal-agent-test-{}-{}.log", std::process::id(), addr.port()));
        let own_pins = (!args.contains(&"--pin-dir")).then(|| pin_dir(&addr.port().to_string()));
        let child = Command::new(BIN)
            .arg("run")
            .arg("--listen")
            .arg(addr.to_string())
            .args(
                own_pins
                    .iter()
                    .flat_map(|d| [std::ffi::OsStr::new("--pin-dir"), d.as_os_str()]),
            )
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn refusal-agent");
        Daemon {
            child,
            addr,
            log,
            own_pins,
        }
    }

    /// Starts and waits for `/readyz`.
    pub fn start(args: &[&str]) -> Daemon {
        Self::start_when(args, |addr| get(addr, "/readyz").is_ok_and(|(code, _)| code == 200))
    }

    /// Starts and waits until `ready(addr)` (TLS or auth make a plain `/readyz` unusable).
    pub fn start_when(args: &[&str], ready: impl Fn(SocketAddr) -> bool) -> Daemon {
        let mut d = Self::spawn(args);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = d.child.try_wait().unwrap() {
                panic!("daemon exited early ({status}):\n{}", d.log());
            }
            if ready(d.addr) {
                return d;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("daemon not ready after 60 s:\n{}", d.log());
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        let (code, body) = get(self.addr, "/metrics").expect("scrape /metrics");
        assert_eq!(code, 200, "{body}");
        body
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits at most `limit` for the process to exit; its exit code, or None if it did not.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Stops with SIGTERM and returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        self.signal(15);
        self.child.wait().unwrap().code()
    }

    pub fn signal(&self, sig: i32) {
        unsafe_kill(self.child.id(), sig);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
        // Unpinning detaches whatever a killed daemon left counting.
        if let Some(dir) = &self.own_pins {
            let _ = std::fs::remove_dir_all(dir);
        }
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

/// Runs a command, panicking with its output when it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace joined to the host by a veth pair: host side `10.200.<n>.1` /
/// `fd00:200:<n>::1`, namespace side `.2` / `::2`. Removed on drop.
pub struct Netns {
    pub name: String,
    pub host_if: String,
    pub n: u8,
}

impl Netns {
    pub fn new(n: u8) -> Netns {
        let name = format!("refusal-test-{n}");
        let host_if = format!("rfh{n}");
        quiet(&["netns", "del", &name]);
        quiet(&["link", "del", &host_if]);
        sh(&format!(
            "ip netns add {name} && ip link add {host_if} type veth peer name rfn{n} && ip link set rfn{n} netns {name} \
             && ip addr add 10.200.{n}.1/24 dev {host_if} && ip -6 addr add fd00:200:{n}::1/64 dev {host_if} nodad \
             && ip link set {host_if} up \
             && ip -n {name} addr add 10.200.{n}.2/24 dev rfn{n} && ip -n {name} -6 addr add fd00:200:{n}::2/64 dev rfn{n} nodad \
             && ip -n {name} link set rfn{n} up && ip -n {name} link set lo up"
        ));
        Netns { name, host_if, n }
    }

    pub fn host_ip(&self) -> String {
        format!("10.200.{}.1", self.n)
    }

    pub fn ns_ip(&self) -> String {
        format!("10.200.{}.2", self.n)
    }

    pub fn ns_ip6(&self) -> String {
        format!("fd00:200:{}::2", self.n)
    }

    /// Runs `cmd` inside the namespace.
    pub fn exec(&self, cmd: &str) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-c", cmd])
            .output()
            .expect("ip netns exec")
    }

    /// Loads an nftables ruleset inside the namespace.
    pub fn nft(&self, ruleset: &str) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(ruleset.as_bytes())?;
                c.wait_with_output()
            })
            .expect("nft");
        assert!(
            out.status.success(),
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        quiet(&["netns", "del", &self.name]);
        quiet(&["link", "del", &self.host_if]);
    }
}

/// `ip ARGS`, ignoring failure (cleanup of what may not exist).
fn quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
}

/// SO_LINGER {on, 0}: closing `s` aborts its connection with a RST.
pub fn linger_zero(s: &impl std::os::fd::AsFd) {
    socket2::SockRef::from(s)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
}

/// Runs `f` on a thread named `comm` (the kernel's comm of its connects) and waits for it.
pub fn as_comm<T: Send + 'static>(comm: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .name(comm.into())
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// A cgroup made for the test, removed on drop (after its processes exited).
pub struct Cgroup(std::path::PathBuf);

impl Cgroup {
    pub fn new(rel: &str) -> Cgroup {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = mountinfo
            .lines()
            .find_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                (post.starts_with("cgroup2 ")).then(|| pre.split_whitespace().nth(4).unwrap().to_string())
            })
            .expect("cgroup2 mounted");
        let path = std::path::Path::new(&root).join(rel);
        std::fs::create_dir_all(&path).unwrap();
        Cgroup(path)
    }

    /// Runs `cmd` in a shell that first moves itself into this cgroup.
    pub fn run(&self, cmd: &str) {
        let procs = self.0.join("cgroup.procs");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > {} && exec {cmd}", procs.display()))
            .output()
            .unwrap();
        assert!(out.status.code().is_some(), "{out:?}");
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Leaf first, then the parents the test created.
        let mut p = self.0.clone();
        while p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("refusal-") || p != self.0)
        {
            if std::fs::remove_dir(&p).is_err() {
                break;
            }
            p = match p.parent() {
                Some(parent) => parent.to_path_buf(),
                None => break,
            };
            if !p.to_string_lossy().contains("refusal-test") {
                break;
            }
        }
    }
}

/// Program ids held by a process, from its fds' fdinfo.
pub fn program_ids(pid: u32) -> std::collections::BTreeSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok())
        })
        .collect()
}

pub fn loaded_programs() -> std::collections::BTreeSet<u64> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("bpftool");
    let progs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    progs.iter().filter_map(|p| p["id"].as_u64()).collect()
}

/// Whether every program in `ids` is gone from the kernel within 5 s (it frees a program once
/// its last reference goes, after an RCU grace period).
pub fn programs_gone(ids: &std::collections::BTreeSet<u64>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ids.is_disjoint(&loaded_programs()) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}
