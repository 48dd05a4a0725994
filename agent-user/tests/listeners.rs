//! Why nothing listens: real listeners that die in every way a process can (SIGKILL, SIGSEGV,
//! an exit code, a close while it lives on, the OOM killer, a Node server that does not handle
//! an upstream's reset), a port nobody listened on, a listener older than the agent, and a
//! server inside a network namespace refused from both sides. Each refusal must carry the exact
//! diagnosis and cause, in `/metrics` and in `/api/targets`.
use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use testkit::{
    Daemon, MemoryCgroup, Netns, closed_port, get, linger_zero,
    metrics::{INBOUND_DIAGNOSIS as DIAGNOSIS, LISTENER_LOST as LOST},
    privileged, value, wait_value, which,
};

const BIN: &str = env!("CARGO_BIN_EXE_refusal-agent");

/// A listener in Python: binds, listens, says so, then does what `mode` says (`wait`, `exit3`:
/// `os._exit(3)`, `close`: closes the socket and lives on, `hog`: allocates until killed).
const SERVER: &str = r#"
import os, socket, sys, time
host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen()
print("listening", flush=True)
sys.stdin.readline()
if mode == "exit3":
    os._exit(3)
if mode == "close":
    s.close()
    print("closed", flush=True)
    time.sleep(120)
if mode == "hog":
    hog = [bytearray(1 << 20) for _ in range(4096)]
time.sleep(120)
"#;

/// A listening Python process; killed on drop.
struct Server {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Server {
    /// Starts `SERVER` through `prefix` (e.g. `ip netns exec NAME`, a cgroup's shell) and waits
    /// until it listens.
    fn start(prefix: &[&str], host: &str, port: u16, mode: &str) -> Server {
        let python = which("python3").expect("python3 on PATH");
        let (program, args) = match prefix.split_first() {
            Some((p, rest)) => (*p, rest.to_vec()),
            None => (python.to_str().unwrap(), vec![]),
        };
        let mut cmd = Command::new(program);
        cmd.args(args);
        if !prefix.is_empty() {
            cmd.arg(&python);
        }
        let mut child = cmd
            .args(["-c", SERVER, host, &port.to_string(), mode])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3");
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut s = Server { child, out };
        s.expect("listening");
        s
    }

    fn expect(&mut self, word: &str) {
        let mut line = String::new();
        self.out.read_line(&mut line).expect("read the server");
        assert_eq!(line.trim(), word, "python server said {line:?}");
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the server go on to its mode.
    fn go(&mut self) {
        use std::io::Write as _;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    fn kill(&mut self, signal: i32) {
        // SAFETY: a plain kill(2) of our own child.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Waits for the process to end; its exit status.
    fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` connects to `addr`, each refused.
fn refuse(addr: SocketAddr, n: usize) {
    for _ in 0..n {
        let e = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect_err("refused");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{addr}: {e}");
    }
}

fn targets(d: &Daemon) -> Value {
    let (code, body) = get(d.addr, "/api/targets").expect("GET /api/targets");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// The `/api/targets` inbound entry for `local`, once its diagnosis is `want` (within 10 s).
fn inbound(d: &Daemon, local: SocketAddr, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = targets(d);
        let found = (all["inbound"].as_array().unwrap().iter())
            .find(|i| i["local_addr"] == local.ip().to_string() && i["local_port"] == local.port())
            .cloned();
        match found {
            Some(i) if i["diagnosis"] == want => return i,
            other if Instant::now() > deadline => panic!("{local}: want {want}, have {other:?}\n{all:#}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The number of lost listeners on `port` with `cause`, once it reaches 1 (then exactly 1).
fn lost(d: &Daemon, port: u16, cause: &str, after_reset: &str) -> f64 {
    let port = port.to_string();
    let labels = [
        ("local_port", port.as_str()),
        ("cause", cause),
        ("after_reset", after_reset),
    ];
    wait_value(d, LOST, &labels, 1.0)
}

fn diagnosis(d: &Daemon, local: SocketAddr, diagnosis: &str) -> f64 {
    let (addr, port) = (local.ip().to_string(), local.port().to_string());
    let labels = [
        ("local_addr", addr.as_str()),
        ("local_port", port.as_str()),
        ("diagnosis", diagnosis),
    ];
    wait_value(d, DIAGNOSIS, &labels, 1.0)
}

fn contains(v: &Value, text: &str) -> bool {
    v["explanation"].as_str().is_some_and(|e| e.contains(text))
}

#[test]
fn signals_exit_codes_and_closes_are_told_apart() {
    if !privileged("signals_exit_codes_and_closes_are_told_apart") {
        return;
    }
    let d = Daemon::start(BIN, &[]);
    // (mode, how it is ended, cause label, diagnosis, what the sentence says)
    let cases: [(&str, Option<i32>, &str, &str, &str); 4] = [
        (
            "wait",
            Some(libc::SIGKILL),
            "killed",
            "listener_killed",
            "was killed by SIGKILL",
        ),
        (
            "wait",
            Some(libc::SIGSEGV),
            "killed",
            "listener_killed",
            "was killed by SIGSEGV",
        ),
        ("exit3", None, "exited", "listener_exited", "exited with code 3"),
        ("close", None, "closed", "listener_closed", "closed it and kept running"),
    ];
    for (mode, signal, cause, want, says) in cases {
        let port = closed_port();
        let local = SocketAddr::from(([127, 0, 0, 1], port));
        let mut server = Server::start(&[], "127.0.0.1", port, mode);
        let pid = server.pid();
        match signal {
            Some(sig) => {
                server.kill(sig);
                assert_eq!(std::os::unix::process::ExitStatusExt::signal(&server.wait()), Some(sig));
            }
            None if mode == "close" => {
                // A listener its process closes within 10 ms never served: not history.
                std::thread::sleep(Duration::from_millis(100));
                server.go();
                server.expect("closed");
            }
            None => {
                server.go();
                assert_eq!(server.wait().code(), Some(3));
            }
        }
        refuse(local, 3);
        assert_eq!(lost(&d, port, cause, "false"), 1.0, "{mode} {signal:?}");
        assert_eq!(diagnosis(&d, local, want), 1.0, "{mode} {signal:?}");
        let i = inbound(&d, local, want);
        assert_eq!(i["refused_total"], 3, "{i:#}");
        assert!(
            contains(&i, &format!("python3 (pid {pid}")) && contains(&i, says),
            "{i:#}"
        );
        let last = &i["listener"]["lost"][0];
        assert_eq!(
            (last["cause"].as_str(), last["process"]["pid"].as_u64()),
            (Some(cause), Some(u64::from(pid)))
        );
        assert!(last["since"].is_f64(), "seen starting: {last:#}");
        // The client's target says the same.
        let all = targets(&d);
        let target = (all["targets"].as_array().unwrap().iter())
            .find(|t| t["dst_port"] == port)
            .unwrap_or_else(|| panic!("no target for {port}: {all:#}"));
        assert_eq!(target["diagnosis"], want, "{target:#}");
        assert!(contains(target, says), "{target:#}");
    }
}

#[test]
fn a_port_nobody_listened_on_and_a_listener_older_than_the_agent() {
    if !privileged("a_port_nobody_listened_on_and_a_listener_older_than_the_agent") {
        return;
    }
    let old_port = closed_port();
    let mut old = Server::start(&[], "127.0.0.1", old_port, "wait");
    let d = Daemon::start(BIN, &[]);
    // Nothing ever listened here.
    let never = SocketAddr::from(([127, 0, 0, 1], closed_port()));
    refuse(never, 2);
    assert_eq!(diagnosis(&d, never, "never_listened"), 1.0);
    let i = inbound(&d, never, "never_listened");
    assert!(
        contains(
            &i,
            &format!("nothing has listened on {} since the agent started", never.port())
        ),
        "{i:#}"
    );
    // The listener from before: a connection to another loopback address on its port is refused
    // because of where it is bound, not because nothing ever listened.
    let elsewhere = SocketAddr::from(([127, 0, 0, 2], old_port));
    refuse(elsewhere, 1);
    assert_eq!(diagnosis(&d, elsewhere, "wrong_address"), 1.0);
    let pid = old.pid();
    old.kill(libc::SIGKILL);
    old.wait();
    let local = SocketAddr::from(([127, 0, 0, 1], old_port));
    refuse(local, 2);
    assert_eq!(lost(&d, old_port, "killed", "false"), 1.0);
    let i = inbound(&d, local, "listener_killed");
    let last = &i["listener"]["lost"][0];
    // Seeded: its process found through /proc, its start before the agent.
    assert_eq!(last["process"]["pid"].as_u64(), Some(u64::from(pid)), "{i:#}");
    assert!(last["since"].is_null(), "{i:#}");
}

#[test]
fn an_oom_kill_is_told_from_a_kill() {
    if !privileged("an_oom_kill_is_told_from_a_kill") {
        return;
    }
    let Some(cgroup) = MemoryCgroup::new("refusal-test-oom", 48 << 20) else {
        return;
    };
    let d = Daemon::start(BIN, &[]);
    let port = closed_port();
    let shell = cgroup.shell();
    let mut server = Server::start(&["sh", "-c", &shell, "sh"], "127.0.0.1", port, "hog");
    server.go();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&server.wait()),
        Some(libc::SIGKILL)
    );
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    refuse(local, 2);
    assert_eq!(lost(&d, port, "oom_killed", "false"), 1.0);
    assert_eq!(
        value(
            &d.metrics(),
            LOST,
            &[("local_port", &port.to_string()), ("cause", "killed")]
        ),
        0.0
    );
    let i = inbound(&d, local, "listener_killed");
    assert!(contains(&i, "was killed by SIGKILL (OOM)"), "{i:#}");
}

/// A small proxy in Node: listens for clients, and on start connects to an upstream without an
/// `error` handler, so the upstream's reset is an uncaught exception: it exits with code 1.
const NODE_PROXY: &str = r#"
const net = require("net");
// With -e, the arguments start at argv[1].
const [port, upstream] = process.argv.slice(1).map(Number);
net.createServer((c) => c.end()).listen(port, "127.0.0.1", () => {
  console.log("listening");
  const up = net.connect(upstream, "127.0.0.1");
  up.on("connect", () => console.log("connected"));
});
"#;

#[test]
fn a_node_server_that_dies_of_an_upstream_reset_says_so() {
    if !privileged("a_node_server_that_dies_of_an_upstream_reset_says_so") {
        return;
    }
    let node = which("node").expect("node on PATH (the test packages install nodejs)");
    let d = Daemon::start(BIN, &[]);
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed_port();
    let mut child = Command::new(node)
        .args([
            "-e",
            NODE_PROXY,
            &port.to_string(),
            &upstream.local_addr().unwrap().port().to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start node");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    let (conn, peer) = upstream.accept().unwrap();
    out.read_line(&mut line).unwrap();
    // The upstream aborts the connection: a RST on node's established socket.
    linger_zero(&conn).unwrap();
    drop(conn);
    assert_eq!(child.wait().unwrap().code(), Some(1));
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    refuse(local, 2);
    assert_eq!(lost(&d, port, "exited", "true"), 1.0);
    let i = inbound(&d, local, "listener_exited");
    let upstream_addr = upstream.local_addr().unwrap();
    assert!(
        contains(&i, &format!("(pid {}", child.id()))
            && contains(&i, "exited with code 1")
            && contains(
                &i,
                &format!("after a connection reset from {upstream_addr}: an unhandled ECONNRESET?")
            ),
        "{i:#} (node's end was {peer})"
    );
    assert_eq!(
        i["listener"]["lost"][0]["after_reset"]["peer"],
        upstream_addr.to_string()
    );
}

#[test]
fn a_server_in_a_network_namespace_is_diagnosed_there() {
    if !privileged("a_server_in_a_network_namespace_is_diagnosed_there") {
        return;
    }
    let ns = Netns::new(41);
    let port = closed_port();
    let ns_ip: std::net::IpAddr = ns.ns_ip().parse().unwrap();
    let mut server = Server::start(&["ip", "netns", "exec", &ns.name], &ns.ns_ip(), port, "wait");
    // Started after the namespace and its server: both are in the seed.
    let d = Daemon::start(BIN, &[]);
    let pid = server.pid();
    server.kill(libc::SIGKILL);
    server.wait();
    let local = SocketAddr::new(ns_ip, port);
    // From the host, over the veth: the namespace sends the RST.
    refuse(local, 3);
    // From inside the namespace.
    let inside = ns.exec(&format!("curl -s -m 2 http://{local}/ ; echo $?"));
    assert_eq!(String::from_utf8_lossy(&inside.stdout).trim(), "7");
    assert_eq!(lost(&d, port, "killed", "false"), 1.0);
    let i = inbound(&d, local, "listener_killed");
    assert_eq!(i["refused_total"], 4, "{i:#}");
    let inode = std::fs::metadata(Path::new("/run/netns").join(&ns.name))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .ok();
    assert_eq!(i["netns"].as_u64(), inode, "{i:#}");
    assert!(contains(&i, &format!("(pid {pid}")), "{i:#}");
    // The host's own port of that number never listened: namespaces stay apart.
    let host = SocketAddr::from(([127, 0, 0, 1], port));
    refuse(host, 1);
    assert_eq!(diagnosis(&d, host, "never_listened"), 1.0);
    // The host's client sees its target diagnosed in the namespace that refused it.
    let all = targets(&d);
    let target = (all["targets"].as_array().unwrap().iter())
        .find(|t| t["dst_addr"] == ns.ns_ip() && t["dst_port"] == port)
        .unwrap_or_else(|| panic!("no target: {all:#}"));
    assert_eq!(target["diagnosis"], "listener_killed", "{target:#}");
    assert_eq!(target["listener"]["netns"].as_u64(), inode, "{target:#}");
}
