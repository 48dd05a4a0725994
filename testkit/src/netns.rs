//! Network namespaces joined to the host by veth pairs, with their own nftables rules.
use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

use crate::process::sh;

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

    /// Joins this namespace to `peer` by a veth pair of their own, on `10.210.<n>.0/24` and
    /// `fd00:210:<n>::/64` (`n` this one's): returns the peer's addresses on it, IPv4 and IPv6.
    /// Traffic between the two never crosses the host's stack, so each one's counters are its own.
    /// Neighbours are static: a first SYN never waits on address resolution (IPv6's waits for
    /// the new link-local address to leave DAD).
    pub fn link(&self, peer: &Netns) -> [String; 2] {
        let (n, name, pname) = (self.n, &self.name, &peer.name);
        let (mac, pmac) = (format!("02:00:00:d2:{n:02x}:01"), format!("02:00:00:d2:{n:02x}:02"));
        sh(&format!(
            "ip link add rfl{n} address {mac} netns {name} type veth peer name rfp{n} address {pmac} netns {pname} \
             && ip -n {name} addr add 10.210.{n}.1/24 dev rfl{n} && ip -n {name} -6 addr add fd00:210:{n}::1/64 dev rfl{n} nodad \
             && ip -n {pname} addr add 10.210.{n}.2/24 dev rfp{n} && ip -n {pname} -6 addr add fd00:210:{n}::2/64 dev rfp{n} nodad \
             && ip -n {name} neigh add 10.210.{n}.2 lladdr {pmac} dev rfl{n} nud permanent \
             && ip -n {name} neigh add fd00:210:{n}::2 lladdr {pmac} dev rfl{n} nud permanent \
             && ip -n {pname} neigh add 10.210.{n}.1 lladdr {mac} dev rfp{n} nud permanent \
             && ip -n {pname} neigh add fd00:210:{n}::1 lladdr {mac} dev rfp{n} nud permanent \
             && ip -n {name} link set rfl{n} up && ip -n {pname} link set rfp{n} up"
        ));
        [format!("10.210.{n}.2"), format!("fd00:210:{n}::2")]
    }

    /// A counter of the namespace's `/proc/net/snmp` or `/proc/net/netstat` (as `nstat` names
    /// them: `TcpAttemptFails`, `TcpExtTCPAbortOnTimeout`).
    pub fn counter(&self, name: &str) -> u64 {
        let out = self.exec("cat /proc/net/snmp /proc/net/netstat");
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        // Each group is a line of names and a line of values, both led by `Group:`.
        lines
            .chunks(2)
            .find_map(|pair| {
                let [names, values] = pair else { return None };
                let (group, names) = names.split_once(':')?;
                let field = name.strip_prefix(group)?;
                let i = names.split_whitespace().position(|n| n == field)?;
                values.split_once(':')?.1.split_whitespace().nth(i)?.parse().ok()
            })
            .unwrap_or_else(|| panic!("no counter {name} in {}", self.name))
    }

    /// Runs `cmd` inside the namespace.
    pub fn exec(&self, cmd: &str) -> Output {
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
