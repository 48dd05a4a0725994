//! Connect failures the kernel closed while the sandbox's init (PID 1) was the current task.
//! The kernel of these machines (a Firecracker guest, 6.18.44-fc) runs no BPF program while a
//! thread of PID 1 is current, in process context and in the softirq work that lands on it:
//! bpftrace sees none of its syscalls or context switches, and a connect its SYN's
//! retransmission, ICMP error or RST closes in such a softirq is invisible to every BPF program,
//! the agent's and bpftrace's alike. ftrace still records those closes, so a test can tell them
//! apart from a close the agent should have seen and did not.
use std::{
    collections::{BTreeMap, BTreeSet},
    ops::RangeInclusive,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

const TRACEFS: &str = "/sys/kernel/tracing";
/// `TCP_SYN_SENT` and `TCP_CLOSE` in the event's `oldstate`/`newstate` fields.
const SYN_SENT: u8 = 2;
const CLOSE: u8 = 7;

/// An ftrace instance recording SYN_SENT → CLOSE to a range of ports, until dropped.
pub struct HiddenCloses {
    dir: PathBuf,
    init_threads: BTreeSet<u32>,
}

impl HiddenCloses {
    /// Starts recording closes to `ports` (every destination address).
    pub fn start(ports: RangeInclusive<u16>) -> HiddenCloses {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(format!(
            "{TRACEFS}/instances/refusal-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e} (tracefs at {TRACEFS}?)", dir.display()));
        let hidden = HiddenCloses {
            dir,
            init_threads: init_threads(),
        };
        let event = hidden.dir.join("events/sock/inet_sock_set_state");
        let filter = format!(
            "oldstate == {SYN_SENT} && newstate == {CLOSE} && dport >= {} && dport <= {}",
            ports.start(),
            ports.end()
        );
        for (file, value) in [("filter", filter.as_str()), ("enable", "1")] {
            std::fs::write(event.join(file), value).unwrap_or_else(|e| panic!("{}/{file}: {e}", event.display()));
        }
        hidden
    }

    /// The closes so far that ran with a thread of PID 1 current.
    pub fn read(&self) -> Hidden {
        let path = self.dir.join("trace");
        let trace = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut init = init_threads();
        init.extend(&self.init_threads);
        let mut per_target = BTreeMap::new();
        for line in trace.lines().filter(|l| !l.starts_with('#')) {
            let (tid, target) = parse(line).unwrap_or_else(|| panic!("unexpected trace line: {line}"));
            if init.contains(&tid) {
                *per_target.entry(target).or_default() += 1;
            }
        }
        Hidden(per_target)
    }
}

/// Hidden closes by destination address (as the agent's `dst_addr` label writes it) and port.
#[derive(Debug)]
pub struct Hidden(BTreeMap<(String, u16), usize>);

impl Hidden {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Those to `addr`:`port`, as a metric value.
    pub fn at(&self, addr: &str, port: u16) -> f64 {
        self.0.get(&(addr.to_string(), port)).copied().unwrap_or(0) as f64
    }

    /// Those to `addr`, every port recorded.
    pub fn to_addr(&self, addr: &str) -> f64 {
        self.0
            .iter()
            .filter(|((a, _), _)| a == addr)
            .map(|(_, n)| *n as f64)
            .sum()
    }
}

impl Drop for HiddenCloses {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("events/sock/inet_sock_set_state/enable"), "0");
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The thread ids of PID 1 (ftrace names the current task by thread id).
fn init_threads() -> BTreeSet<u32> {
    std::fs::read_dir("/proc/1/task")
        .expect("/proc/1/task")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// `<comm>-<tid> [cpu] flags time: inet_sock_set_state: family=AF_INET … dport=7300 …
/// daddr=10.0.0.2 daddrv6=::ffff:10.0.0.2 …`: the thread id and the destination.
fn parse(line: &str) -> Option<(u32, (String, u16))> {
    let (task, rest) = line.split_once(" [")?;
    let tid = task.trim().rsplit_once('-')?.1.parse().ok()?;
    let fields: BTreeMap<&str, &str> = rest
        .split_once("inet_sock_set_state: ")?
        .1
        .split_whitespace()
        .filter_map(|f| f.split_once('='))
        .collect();
    let addr = match *fields.get("family")? {
        "AF_INET" => fields.get("daddr")?,
        _ => fields.get("daddrv6")?,
    };
    Some((tid, (addr.to_string(), fields.get("dport")?.parse().ok()?)))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn a_trace_line_gives_its_thread_and_destination() {
        let v4 = " tokio-rt-worker-77      [000] .Ns2. 24379.466512: inet_sock_set_state: family=AF_INET protocol=IPPROTO_TCP sport=49822 dport=7300 saddr=10.210.34.1 daddr=10.210.34.2 saddrv6=::ffff:10.210.34.1 daddrv6=::ffff:10.210.34.2 oldstate=TCP_SYN_SENT newstate=TCP_CLOSE";
        assert_eq!(parse(v4), Some((77, ("10.210.34.2".into(), 7300))));
        let v6 = "           <...>-802     [001] ..s2. 1.5: inet_sock_set_state: family=AF_INET6 protocol=IPPROTO_TCP sport=1 dport=7301 saddr=0.0.0.0 daddr=0.0.0.0 saddrv6=fd00:210:34::1 daddrv6=fd00:210:34::2 oldstate=TCP_SYN_SENT newstate=TCP_CLOSE";
        assert_eq!(parse(v6), Some((802, ("fd00:210:34::2".into(), 7301))));
        assert_eq!(
            parse("tokio-rt-worker-77 [000] ..s2. 1.5: sched_switch: prev_pid=1"),
            None
        );
    }
}
