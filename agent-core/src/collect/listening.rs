//! Listeners as collected: the kernel's events (a socket started or stopped listening, the OOM
//! killer chose a victim) decoded, and the seed, the listeners that existed when the agent
//! started, per network namespace.
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use agent_common::{ListenEvent, listen_event};

use crate::collect::{
    labels::{self, Label},
    workload::Workload,
};

/// A process as the kernel or `/proc` named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    pub tgid: u32,
    pub comm: Label,
    pub workload: Workload,
}

/// How the task that closed a listener was doing, from `PF_EXITING` and its wait status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Not exiting: it closed the socket and lives on.
    Alive,
    Exited {
        code: u8,
    },
    Signaled {
        signal: u8,
        core: bool,
    },
}

impl Ending {
    pub fn from_status(exiting: bool, status: u32) -> Ending {
        let signal = (status & 0x7f) as u8;
        match (exiting, signal) {
            (false, _) => Ending::Alive,
            (true, 0) => Ending::Exited {
                code: (status >> 8) as u8,
            },
            (true, signal) => Ending::Signaled {
                signal,
                core: status & 0x80 != 0,
            },
        }
    }
}

/// One event from the kernel's listener ring; times are `CLOCK_MONOTONIC`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenerEvent {
    Started {
        at: Duration,
        netns: u32,
        local: SocketAddr,
        owner: Process,
    },
    Stopped {
        at: Duration,
        netns: u32,
        local: SocketAddr,
        /// The task that dropped the socket (its thread id is `pid`).
        by: Process,
        pid: u32,
        ending: Ending,
        /// The last RST the closing process received on a connection: when, and from whom.
        last_reset: Option<(Duration, SocketAddr)>,
    },
    /// The OOM killer chose this task (`tgid` 0 where the kernel gives only the thread).
    OomVictim { at: Duration, tgid: u32, pid: u32 },
}

impl ListenerEvent {
    /// Decodes a raw event; `workload` is its cgroup's name. `None` for an unknown kind.
    pub fn decode(raw: &ListenEvent, workload: Workload, comm: Label) -> Option<ListenerEvent> {
        let at = Duration::from_nanos(raw.ts_ns);
        let local = SocketAddr::new(labels::canonical_ip(raw.addr), raw.port);
        let process = Process {
            tgid: raw.tgid,
            comm,
            workload,
        };
        Some(match raw.kind {
            listen_event::STARTED => ListenerEvent::Started {
                at,
                netns: raw.netns,
                local,
                owner: process,
            },
            listen_event::STOPPED => ListenerEvent::Stopped {
                at,
                netns: raw.netns,
                local,
                by: process,
                pid: raw.pid,
                ending: Ending::from_status(raw.exiting != 0, raw.exit_status),
                last_reset: (raw.reset_ns != 0).then(|| {
                    let peer = SocketAddr::new(labels::canonical_ip(raw.reset_addr), raw.reset_port);
                    (Duration::from_nanos(raw.reset_ns), peer)
                }),
            },
            listen_event::OOM_VICTIM => ListenerEvent::OomVictim {
                at,
                tgid: raw.tgid,
                pid: raw.pid,
            },
            _ => return None,
        })
    }
}

/// A listening socket found at start, and the process holding it when that could be found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seeded {
    pub local: SocketAddr,
    pub owner: Option<Process>,
}

/// The listeners that existed when the agent started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seed {
    /// The agent's own network namespace.
    pub own: u32,
    /// Per network namespace found at start: its listeners, or why they could not be listed.
    pub namespaces: BTreeMap<u32, Result<Vec<Seeded>, String>>,
    /// Every network namespace of the host was found: one not in `namespaces` was made later,
    /// so its every listener is seen starting. False when some process's could not be read.
    pub complete: bool,
}

impl Seed {
    /// A seed of the own namespace only (the others unknown), as listed at start.
    pub fn own_only(own: u32, listeners: Result<Vec<SocketAddr>, String>) -> Seed {
        let listeners = listeners.map(|l| l.into_iter().map(|local| Seeded { local, owner: None }).collect());
        Seed {
            own,
            namespaces: BTreeMap::from([(own, listeners)]),
            complete: false,
        }
    }
}

/// Signal names as `kill -l` prints them, with the `SIG` prefix; unknown ones as `signal <n>`.
pub fn signal_name(signal: u8) -> String {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match usize::from(signal).checked_sub(1).and_then(|i| NAMES.get(i)) {
        Some(name) => (*name).to_string(),
        None => format!("signal {signal}"),
    }
}

#[cfg(test)]
mod tests {
    use agent_common::COMM_LEN;

    use super::*;

    #[test]
    fn wait_statuses() {
        assert_eq!(Ending::from_status(false, 0x9), Ending::Alive);
        assert_eq!(Ending::from_status(true, 0x300), Ending::Exited { code: 3 });
        assert_eq!(Ending::from_status(true, 0), Ending::Exited { code: 0 });
        assert_eq!(
            Ending::from_status(true, 0x9),
            Ending::Signaled { signal: 9, core: false }
        );
        assert_eq!(
            Ending::from_status(true, 0x8b),
            Ending::Signaled { signal: 11, core: true }
        );
    }

    #[test]
    fn decodes_a_stop_with_its_last_reset() {
        let mut raw = ListenEvent {
            ts_ns: 5_000_000_000,
            kind: listen_event::STOPPED,
            tgid: 88,
            pid: 89,
            netns: 4026531840,
            port: 8080,
            exiting: 1,
            exit_status: 0x100,
            reset_ns: 4_960_000_000,
            reset_port: 443,
            comm: [0; COMM_LEN],
            ..ListenEvent::default()
        };
        raw.addr = std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets();
        raw.reset_addr = std::net::Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped().octets();
        let ev = ListenerEvent::decode(&raw, "/".into(), "node".into()).unwrap();
        let ListenerEvent::Stopped {
            local,
            ending,
            last_reset,
            by,
            pid,
            ..
        } = ev
        else {
            panic!("{ev:?}")
        };
        assert_eq!(local.to_string(), "127.0.0.1:8080");
        assert_eq!(ending, Ending::Exited { code: 1 });
        assert_eq!((by.tgid, pid, &*by.comm), (88, 89, "node"));
        assert_eq!(
            last_reset,
            Some((Duration::from_millis(4960), "10.0.0.7:443".parse().unwrap()))
        );
        raw.kind = 99;
        assert_eq!(ListenerEvent::decode(&raw, "/".into(), "x".into()), None);
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(11), "SIGSEGV");
        assert_eq!(signal_name(31), "SIGSYS");
        assert_eq!(signal_name(40), "signal 40");
        assert_eq!(signal_name(0), "signal 0");
    }
}
