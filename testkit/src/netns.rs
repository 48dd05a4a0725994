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
