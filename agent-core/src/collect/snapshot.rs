//! What one collection of the kernel's aggregates yields, labels resolved: the input of
//! analysis and exposition. Counts are cumulative since the maps were created.
use std::{collections::BTreeMap, net::IpAddr};

use crate::collect::{labels::Label, listening::ListenerEvent, workload::Workload};

/// Connect outcomes to one target with one errno, labels resolved. `errno` is `None` for
/// successes (only collected for watched ports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub cgroup_id: u64,
    pub workload: Workload,
    pub comm: Label,
    pub proto: &'static str,
    pub dst_addr: IpAddr,
    pub dst_port: u16,
    pub errno: Option<Label>,
    pub count: u64,
    /// `CLOCK_MONOTONIC` of the last one.
    pub last_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetReceived {
    pub workload: Workload,
    pub comm: Label,
    pub dst_addr: IpAddr,
    pub dst_port: u16,
    pub state: &'static str,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetSent {
    pub workload: Workload,
    pub comm: Label,
    pub reason: Label,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    /// The network namespace that refused (its inode number; 0: unknown).
    pub netns: u32,
    pub local_addr: IpAddr,
    pub local_port: u16,
    pub count: u64,
}

/// Counts the kernel could not key by their full label set (map full), by what it kept: past
/// a full target or reset map the destination folds and the process stays; past the folded
/// maps too, `workload` and `comm` are `other`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overflow {
    /// `(workload, comm, proto, errno) → count`.
    pub failures: BTreeMap<(Workload, Label, &'static str, Label), u64>,
    /// `(workload, comm, state) → count`.
    pub resets_received: BTreeMap<(Workload, Label, &'static str), u64>,
    pub resets_sent: BTreeMap<Label, u64>,
    pub inbound: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Failures and (for watched ports) successes.
    pub outcomes: Vec<Outcome>,
    pub resets_received: Vec<ResetReceived>,
    pub resets_sent: Vec<ResetSent>,
    pub inbound: Vec<Inbound>,
    pub overflow: Overflow,
    /// `(where, count)` for every drop point, zeros included.
    pub drops: Vec<(&'static str, u64)>,
    /// `(program, kernel run time ns, runs)` while `kernel.bpf_stats_enabled=1`, else empty.
    pub bpf_stats: Vec<(String, u64, u64)>,
    /// `(program, runs the kernel skipped)`: a program interrupted on a CPU is not run again
    /// there for the nested event.
    pub recursion_misses: Vec<(String, u64)>,
    /// Listener events since the last tick (the tick drains them; a scrape leaves them).
    pub listeners: Vec<ListenerEvent>,
    /// Listener events the kernel could not deliver, since its maps were made.
    pub listeners_dropped: u64,
}

impl Snapshot {
    pub fn failures(&self) -> impl Iterator<Item = (&Outcome, &Label)> {
        self.outcomes.iter().filter_map(|o| Some((o, o.errno.as_ref()?)))
    }
}
