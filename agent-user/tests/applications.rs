//! What applications saw, call by call. Python and Node clients, as their applications connect
//! (a socket timeout: non-blocking connect, poll, `SO_ERROR`; none: a blocking connect), into a
//! network namespace that refuses with ICMP errors and RSTs, drops, and accepts: every connect
//! a client saw fail is counted once, with the errno it saw, and the kernel's own counters agree
//! where the kernel counts.
use std::{
    collections::BTreeMap,
    io::Write,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};
use testkit::{Daemon, HiddenCloses, Netns, metrics::FAILURES, privileged, value, which};

const BIN: &str = env!("CARGO_BIN_EXE_refusal-agent");
const CLIENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");

const HOST_UNREACHABLE: u16 = 7300;
const ADMIN_PROHIBITED: u16 = 7301;
const RESET: u16 = 7302;
const DROPPED: u16 = 7303;
const LISTENING: u16 = 7304;
const ICMP: [u16; 2] = [HOST_UNREACHABLE, ADMIN_PROHIBITED];
/// Refused by ICMP until the test lifts the rule; a retransmitted SYN then gets through.
const LIFTED: u16 = 7305;

/// The firewall: `reject` as firewalld and Kubernetes network policies do it. ICMP errors are
/// not rate-limited in the namespace, so the first SYN's comes back while connect(2) still
/// holds the socket: the case the kernel keeps as a soft error.
fn firewall(ns: &Netns) {
    ns.nft(&format!(
        "table inet t {{\n chain input {{\n type filter hook input priority 0;\n \
         tcp dport {HOST_UNREACHABLE} reject with icmpx type host-unreachable\n \
         meta nfproto ipv4 tcp dport {ADMIN_PROHIBITED} reject with icmp type admin-prohibited\n \
         meta nfproto ipv6 tcp dport {ADMIN_PROHIBITED} reject with icmpv6 type admin-prohibited\n \
         tcp dport {RESET} reject with tcp reset\n \
         tcp dport {DROPPED} drop\n }}\n}}\n\
         table inet lifted {{\n chain input {{\n type filter hook input priority -1;\n \
         tcp dport {LIFTED} reject with icmpx type host-unreachable\n }}\n}}\n"
    ));
    ns.exec("sysctl -qw net.ipv4.icmp_ratelimit=0 net.ipv6.icmp.ratelimit=0");
}

/// Listeners on both families inside the namespace, until dropped.
struct Listeners(Child);

impl Listeners {
    fn start(ns: &Netns) -> Listeners {
        let script = format!(
            "import socket, time\nfor p in ({LISTENING}, {LIFTED}):\n    s = socket.create_server(('::', p), family=socket.AF_INET6, dualstack_ipv6=True, backlog=4096)\n    globals()[f's{{p}}'] = s\nprint('up', flush=True)\ntime.sleep(3600)\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "python3", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 listener");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        assert_eq!(line.trim(), "up");
        Listeners(child)
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every family, port and way of waiting (adjusted as below) once, then `extra` seeded random calls, shuffled.
/// Node has no TCP_SYNCNT, so its calls to the dropping port always carry a timeout;
/// Python's blocking ones give up after one retransmission (ETIMEDOUT from the kernel, in 3 s).
fn plan(hosts: &[String; 2], seed: u64, extra: usize, node: bool) -> Vec<Value> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let ports = [HOST_UNREACHABLE, ADMIN_PROHIBITED, RESET, DROPPED, LISTENING];
    let timeouts = [None, Some(0.3), Some(2.0)];
    let mut calls = Vec::new();
    for host in hosts {
        for port in ports {
            for timeout in timeouts {
                calls.push((host.clone(), port, timeout));
            }
        }
    }
    for _ in 0..extra {
        let call = (
            hosts[rng.usize(..2)].clone(),
            ports[rng.usize(..ports.len())],
            timeouts[rng.usize(..3)],
        );
        calls.push(call);
    }
    rng.shuffle(&mut calls);
    calls
        .into_iter()
        .map(|(host, port, mut timeout)| {
            if node && port == DROPPED && timeout.is_none() {
                timeout = Some(0.3);
            }
            // A short timeout to an ICMP-refused port gives up on a soft error over IPv6 (no
            // error queue there): tested on its own, below, where an ICMP error lost on the
            // way cannot pass for one the kernel kept.
            if ICMP.contains(&port) && timeout == Some(0.3) {
                timeout = Some(2.0);
            }
            json!({ "host": host, "port": port, "timeout": timeout, "syncnt": (port == DROPPED).then_some(1) })
        })
        .collect()
}

/// Runs `plan` through a client, returning what each call saw.
fn run(client: &[&str], plan: &[Value]) -> std::thread::JoinHandle<Vec<String>> {
    let mut child = Command::new(client[0])
        .args(&client[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{client:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(plan).unwrap().as_bytes())
        .unwrap();
    let client = client.join(" ");
    std::thread::spawn(move || {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{client}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{client}: {e}: {out:?}"))
    })
}

/// The errno a call that saw `what` is counted with, if any: what the client got, and for
/// a client that gave up first, the ICMP error the kernel already held for the connect (the
/// errno the kernel itself would have returned at its own timeout).
fn counted_as(call: &Value, what: &str) -> Option<&'static str> {
    let v6 = call["host"].as_str().unwrap().contains(':');
    match (what, call["port"].as_u64().unwrap() as u16) {
        ("ok", _) | ("timeout", DROPPED) => None,
        ("timeout", HOST_UNREACHABLE) => Some("EHOSTUNREACH"),
        ("timeout", ADMIN_PROHIBITED) => Some(if v6 { "EACCES" } else { "EHOSTUNREACH" }),
        (errno, _) => Some(
            ["ECONNREFUSED", "EHOSTUNREACH", "EACCES", "ETIMEDOUT"]
                .into_iter()
                .find(|e| *e == errno)
                .unwrap_or_else(|| panic!("{call}: unexpected {errno}")),
        ),
    }
}

#[test]
fn every_connect_a_client_saw_fail_is_counted_once_with_its_errno() {
    if !privileged("every_connect_a_client_saw_fail_is_counted_once_with_its_errno") {
        return;
    }
    let node = which("node").expect("node (cargo xtask setup installs nodejs)");
    let ns = Netns::new(31);
    firewall(&ns);
    let _listeners = Listeners::start(&ns);
    // The clients in a namespace of their own, so the kernel's counters there are theirs alone.
    let clients = Netns::new(34);
    let hosts = clients.link(&ns);
    let d = Daemon::start(BIN, &[]);
    let kernel = || ["TcpAttemptFails", "TcpExtTCPAbortOnTimeout"].map(|c| clients.counter(c) as f64);
    let kernel_before = kernel();
    let hidden_closes = HiddenCloses::start(HOST_UNREACHABLE..=DROPPED);

    // Every combination once, and 10 at random: 40 calls a client.
    let python_plan = plan(&hosts, 17, 10, false);
    let node_plan = plan(&hosts, 23, 10, true);
    let inside = ["ip", "netns", "exec", clients.name.as_str()];
    let py = run(
        &[&inside[..], &["python3", &format!("{CLIENTS}/connects.py")]].concat(),
        &python_plan,
    );
    let js = run(
        &[
            &inside[..],
            &[node.to_str().unwrap(), &format!("{CLIENTS}/connects.js")],
        ]
        .concat(),
        &node_plan,
    );
    let mut expected: BTreeMap<(String, u16, &str), f64> = BTreeMap::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (plan, saw) in [(&python_plan, py.join().unwrap()), (&node_plan, js.join().unwrap())] {
        assert_eq!(saw.len(), plan.len());
        for (call, what) in plan.iter().zip(&saw) {
            *seen.entry(what.clone()).or_default() += 1;
            if let Some(errno) = counted_as(call, what) {
                let host = call["host"].as_str().unwrap().to_string();
                *expected
                    .entry((host, call["port"].as_u64().unwrap() as u16, errno))
                    .or_default() += 1.0;
            }
        }
    }
    eprintln!("the clients saw {seen:?}");
    // Each outcome happened: a mix that lost one would prove nothing about it.
    for what in ["ok", "timeout", "ECONNREFUSED", "EHOSTUNREACH", "EACCES", "ETIMEDOUT"] {
        assert!(seen.contains_key(what), "no call saw {what}: {seen:?}");
    }

    std::thread::sleep(Duration::from_millis(600));
    let m = d.metrics();
    // The closes no BPF program could see on this sandbox's kernel (see `HiddenCloses`): each
    // may be missing from the agent's counts, and nothing else may. Elsewhere none are hidden
    // and the bounds below are equalities.
    let hidden = hidden_closes.read();
    let counted = |(host, port, errno): &(String, u16, &str)| {
        let port = port.to_string();
        value(
            &m,
            FAILURES,
            &[("dst_addr", host.as_str()), ("dst_port", &port), ("errno", errno)],
        )
    };
    if !hidden.is_empty() {
        let short: Vec<_> = expected.iter().filter(|(k, n)| counted(k) != **n).collect();
        eprintln!("closed while PID 1 was the current task, unseen by BPF here: {hidden:?}; short: {short:?}");
    }
    // A run the kernel skipped (an event nested in a run on the same CPU) would explain a miss.
    let skipped: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("refusal_agent_bpf_recursion_misses_total{") && !l.ends_with(" 0"))
        .collect();
    for (key, n) in &expected {
        let (unseen, counted) = (hidden.at(&key.0, key.1), counted(key));
        assert!(
            (n - unseen..=*n).contains(&counted),
            "{key:?}: counted {counted} of {n} ({unseen} hidden); expected {expected:?}; runs the kernel skipped: {skipped:?}"
        );
    }
    // The kernel's own counters, where it counts. A connect it times out itself is
    // TcpExtTCPAbortOnTimeout: exactly the agent's ETIMEDOUT. TcpAttemptFails counts the
    // connects the kernel failed (tcp_done in SYN_SENT): every RST and timeout, and the ICMP
    // errors that came while connect(2) did not hold the socket; not those the kernel kept as
    // soft errors, which clients read with SO_ERROR (or gave up on) and closed, and which the
    // agent counts too.
    let [attempt_fails, aborted_on_timeout] = {
        let after = kernel();
        [after[0] - kernel_before[0], after[1] - kernel_before[1]]
    };
    let saw = |what: &str| seen.get(what).copied().unwrap_or(0) as f64;
    assert_eq!(
        aborted_on_timeout,
        saw("ETIMEDOUT"),
        "TcpExtTCPAbortOnTimeout, {seen:?}"
    );
    let timeouts_hidden: f64 = hosts.iter().map(|h| hidden.at(h, DROPPED)).sum();
    assert!(
        (aborted_on_timeout - timeouts_hidden..=aborted_on_timeout).contains(&value(
            &m,
            FAILURES,
            &[("errno", "ETIMEDOUT")]
        ))
    );
    let expected_total: f64 = expected.values().sum();
    let kernel_decided = saw("ECONNREFUSED") + saw("ETIMEDOUT");
    assert!(
        (kernel_decided..=expected_total).contains(&attempt_fails),
        "TcpAttemptFails {attempt_fails}: at least the {kernel_decided} RSTs and timeouts, at most the clients' {expected_total}"
    );
    eprintln!(
        "TcpAttemptFails {attempt_fails}, the clients {expected_total}: {} soft errors the kernel did not count",
        expected_total - attempt_fails
    );
    // Nothing else: no other errno, no port that answered.
    for host in &hosts {
        let n: f64 = expected.iter().filter(|((h, ..), _)| h == host).map(|(_, n)| n).sum();
        assert!(
            (n - hidden.to_addr(host)..=n).contains(&value(&m, FAILURES, &[("dst_addr", host)])),
            "{host}"
        );
    }
}

#[test]
fn an_icmp_error_then_a_retransmission_that_gets_through_counts_nothing() {
    if !privileged("an_icmp_error_then_a_retransmission_that_gets_through_counts_nothing") {
        return;
    }
    let ns = Netns::new(32);
    firewall(&ns);
    let _listeners = Listeners::start(&ns);
    let d = Daemon::start(BIN, &[]);
    // Blocking connects: the first SYN's ICMP error is kept (a soft error, and queued on the
    // socket); the rule is lifted before the retransmission a second later, which connects.
    let calls: Vec<Value> = [ns.ns_ip(), ns.ns_ip6()]
        .into_iter()
        .map(|host| json!({ "host": host, "port": LIFTED, "timeout": null, "syncnt": null }))
        .collect();
    let clients: Vec<_> = calls
        .iter()
        .map(|c| run(&["python3", &format!("{CLIENTS}/connects.py")], std::slice::from_ref(c)))
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    ns.exec("nft delete table inet lifted");
    for c in clients {
        assert_eq!(c.join().unwrap(), ["ok"]);
    }
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(value(&d.metrics(), FAILURES, &[("dst_port", &LIFTED.to_string())]), 0.0);
}

#[test]
fn a_client_that_gives_up_after_an_icmp_error_is_counted_with_it() {
    if !privileged("a_client_that_gives_up_after_an_icmp_error_is_counted_with_it") {
        return;
    }
    let ns = Netns::new(33);
    firewall(&ns);
    let d = Daemon::start(BIN, &[]);
    // IPv6 queues no ICMP error on a socket without IPV6_RECVERR, so nothing wakes the client:
    // the first SYN's error is kept as a soft one, and the client's 0.3 s run out before the
    // retransmission a second later. Counted with the error the kernel kept.
    let calls: Vec<Value> = [HOST_UNREACHABLE, ADMIN_PROHIBITED]
        .into_iter()
        .flat_map(|port| std::iter::repeat_n(port, 5))
        .map(|port| json!({ "host": ns.ns_ip6(), "port": port, "timeout": 0.3, "syncnt": null }))
        .collect();
    let saw = run(&["python3", &format!("{CLIENTS}/connects.py")], &calls)
        .join()
        .unwrap();
    assert_eq!(saw, ["timeout"; 10]);
    std::thread::sleep(Duration::from_millis(600));
    let m = d.metrics();
    // By address too: every daemon counts the whole host, and the mix test next door refuses
    // the same ports from its own namespace.
    let host = ns.ns_ip6();
    let count = |port: u16, errno| {
        let port = port.to_string();
        value(
            &m,
            FAILURES,
            &[("dst_addr", &host), ("dst_port", &port), ("errno", errno)],
        )
    };
    assert_eq!(count(HOST_UNREACHABLE, "EHOSTUNREACH"), 5.0);
    assert_eq!(count(ADMIN_PROHIBITED, "EACCES"), 5.0);
    assert_eq!(value(&m, FAILURES, &[("dst_addr", &host)]), 10.0);
}
