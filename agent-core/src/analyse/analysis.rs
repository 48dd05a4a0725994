//! Turns collected snapshots into verdicts and diagnoses: feeds count deltas to the episode
//! engine, keeps the episode counters and the cold-start histograms, keeps the listener history
//! and diagnoses refusals from it in the network namespace that refused, and says which ports
//! the kernel should watch for successes. The daemon drives it on its tick; no I/O here: what
//! it needs from the host (a fresh listing of its listeners) it asks for
//! ([`Analysis::listing_due`]) and is given ([`Analysis::listed`]).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use foldhash::{HashMap, HashMapExt};

use crate::{
    analyse::{
        diagnosis::Diagnosis,
        histogram::Histogram,
        listeners::{Book, Finding},
        verdict::{Engine, Outcome, State, Target, format_duration},
    },
    collect::{labels::Label, listening::Seed, snapshot::Snapshot},
    config::Thresholds,
};

/// A target (README, "Verdicts"): workload, comm, destination address and port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetId {
    pub workload: Label,
    pub comm: Label,
    pub dst_addr: IpAddr,
    pub dst_port: u16,
}

/// Buckets from 0.1 s to 10 min, dense where boots land (1–180 s).
pub const COLD_START_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 150.0, 180.0, 240.0,
    300.0, 450.0, 600.0,
];

/// How long an inbound refusal keeps its diagnosis exported after the last one.
const INBOUND_RECENT: Duration = Duration::from_secs(300);
/// Listing the host's listeners costs a netlink dump: at most this often.
const LISTENERS_EVERY: Duration = Duration::from_secs(1);

/// One kernel counter of connect outcomes: the kernel's key as resolved (proto is TCP).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CounterId {
    cgroup_id: u64,
    comm: Label,
    dst_addr: IpAddr,
    dst_port: u16,
    errno: Option<Label>,
}

pub struct Analysis {
    engine: Engine<TargetId>,
    /// Cumulative counts already fed to the engine, per kernel counter: an unchanged counter
    /// costs one lookup a tick.
    seen: HashMap<CounterId, u64>,
    /// Cumulative failures by errno per target, for the API.
    errnos: HashMap<TargetId, Vec<(Label, u64)>>,
    episodes: BTreeMap<(TargetId, &'static str), u64>,
    cold_starts: BTreeMap<(Label, u16), Histogram>,
    /// Inbound refusals by the namespace that refused and the local address and port.
    inbound_seen: HashMap<Local, u64>,
    inbound_last: HashMap<Local, Duration>,
    listeners: Book,
    listed_at: Option<Duration>,
    now: Duration,
}

/// A local address and port in a network namespace.
type Local = (u32, IpAddr, u16);

impl Analysis {
    /// `started` is the agent's start (monotonic), `seed` the listeners that existed then.
    pub fn new(thresholds: Thresholds, seed: Seed, started: Duration) -> Self {
        Self {
            engine: Engine::new(thresholds),
            seen: HashMap::new(),
            errnos: HashMap::new(),
            episodes: BTreeMap::new(),
            cold_starts: BTreeMap::new(),
            inbound_seen: HashMap::new(),
            inbound_last: HashMap::new(),
            listeners: Book::new(started, seed),
            listed_at: None,
            now: started,
        }
    }

    /// Feeds what changed since the last snapshot; `now` is `CLOCK_MONOTONIC`, the clock of the
    /// kernel's timestamps. Returns the ports the kernel should watch for successes.
    pub fn update(&mut self, snap: &Snapshot, now: Duration) -> BTreeSet<u16> {
        self.now = now;
        self.listeners.apply(&snap.listeners, snap.listeners_dropped);
        let mut deltas: Vec<(u64, TargetId, Option<Label>, u64)> = Vec::new();
        for o in snap.outcomes.iter().filter(|o| o.proto == "tcp") {
            let counter = CounterId {
                cgroup_id: o.cgroup_id,
                comm: o.comm.clone(),
                dst_addr: o.dst_addr,
                dst_port: o.dst_port,
                errno: o.errno.clone(),
            };
            let seen = self.seen.entry(counter).or_default();
            if o.count <= *seen {
                continue;
            }
            let id = TargetId {
                workload: o.workload.clone(),
                comm: o.comm.clone(),
                dst_addr: o.dst_addr,
                dst_port: o.dst_port,
            };
            deltas.push((o.last_ns, id, o.errno.clone(), o.count - *seen));
            *seen = o.count;
        }
        // In event order, so an episode's first refusal precedes its success.
        deltas.sort();
        for (last_ns, id, errno, n) in deltas {
            let at = Duration::from_nanos(last_ns);
            if let Some(errno) = errno {
                self.engine.refused(&id, at, n);
                let counts = self.errnos.entry(id).or_default();
                match counts.iter_mut().find(|(e, _)| *e == errno) {
                    Some((_, total)) => *total += n,
                    None => counts.push((errno, n)),
                }
            } else if let Some(outcome) = self.engine.succeeded(&id, at, n) {
                self.ended(&id, outcome);
            }
        }
        self.engine.tick(now);
        self.listeners.forget(now, self.engine.thresholds().forget_after);
        self.update_inbound(snap, now);
        self.engine.watched().map(|id| id.dst_port).collect()
    }

    fn ended(&mut self, id: &TargetId, outcome: Outcome) {
        let name = match outcome {
            Outcome::ColdStart { seconds } => {
                (self.cold_starts.entry((id.workload.clone(), id.dst_port)))
                    .or_insert_with(|| Histogram::new(COLD_START_BUCKETS))
                    .observe(seconds);
                "cold_start"
            }
            Outcome::Recovered { .. } => "recovered",
        };
        *self.episodes.entry((id.clone(), name)).or_default() += 1;
    }

    fn update_inbound(&mut self, snap: &Snapshot, now: Duration) {
        for i in &snap.inbound {
            let key = (i.netns, i.local_addr, i.local_port);
            let seen = self.inbound_seen.entry(key).or_default();
            if i.count > *seen {
                *seen = i.count;
                self.inbound_last.insert(key, now);
            }
        }
        self.inbound_last
            .retain(|_, at| now.saturating_sub(*at) < INBOUND_RECENT);
    }

    /// Whether the own namespace's listeners should be listed now: listener events were lost,
    /// or they could not be listed before and inbound refusals want a diagnosis; at most once a
    /// second.
    pub fn listing_due(&self, now: Duration) -> bool {
        let stale = self
            .listed_at
            .is_none_or(|at| now.saturating_sub(at) >= LISTENERS_EVERY);
        let own_unknown = !self.listeners.own_known();
        stale && (self.listeners.resync_due() || (own_unknown && !self.inbound_last.is_empty()))
    }

    /// The own namespace's listeners as listed at `now`; `None`: the listing failed.
    pub fn listed(&mut self, listeners: Option<Vec<SocketAddr>>, now: Duration) {
        self.listeners.listed(listeners, now);
        self.listed_at = Some(now);
    }

    /// Monotonic time of the last update.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Every target known, in order.
    pub fn targets(&self) -> impl Iterator<Item = (&TargetId, &Target)> {
        self.engine.iter()
    }

    /// Failed connects to `id` by errno since the agent started.
    pub fn errnos(&self, id: &TargetId) -> impl Iterator<Item = &(Label, u64)> {
        self.errnos.get(id).into_iter().flatten()
    }

    /// Ended episodes per target and outcome (`cold_start`, `recovered`).
    pub fn episodes(&self) -> impl Iterator<Item = (&(TargetId, &'static str), &u64)> {
        self.episodes.iter()
    }

    /// Cold-start durations per workload and destination port.
    pub fn cold_starts(&self) -> impl Iterator<Item = (&(Label, u16), &Histogram)> {
        self.cold_starts.iter()
    }

    /// What the listeners say about each inbound refusal seen recently, in no order:
    /// `(namespace, local address, finding)`.
    pub fn inbound_findings(&self) -> impl Iterator<Item = (u32, SocketAddr, Finding<'_>)> {
        self.inbound_last.keys().map(|&(ns, addr, port)| {
            let local = SocketAddr::new(addr, port);
            (ns, local, self.listeners.finding(ns, local))
        })
    }

    /// The diagnoses of the inbound refusals seen recently, by local address, deduplicated
    /// across namespaces, sorted.
    pub fn diagnoses(&self) -> BTreeSet<(SocketAddr, Diagnosis)> {
        self.inbound_findings()
            .filter_map(|(_, local, f)| Some((local, f.diagnosis()?)))
            .collect()
    }

    /// Inbound refusals to `local` in namespace `netns` since the agent started.
    pub fn inbound_refused(&self, netns: u32, local: SocketAddr) -> u64 {
        let key = (netns, local.ip(), local.port());
        self.inbound_seen.get(&key).copied().unwrap_or(0)
    }

    /// The listener history.
    pub fn listeners(&self) -> &Book {
        &self.listeners
    }

    /// The namespace that refused connections to `local` most recently, if this host did.
    pub fn refused_in(&self, local: SocketAddr) -> Option<u32> {
        (self.inbound_last.iter())
            .filter(|((_, addr, port), _)| *addr == local.ip() && *port == local.port())
            .max_by_key(|(_, at)| **at)
            .map(|((ns, _, _), _)| *ns)
    }

    /// Drop points of the analysis itself, for `refusal_agent_events_dropped_total`.
    pub fn drops(&self) -> [(&'static str, u64); 1] {
        [("listener_history_full", self.listeners.evicted())]
    }

    /// The target's diagnosis, if any, and the sentence that explains its state. `clock` turns
    /// a monotonic time into a time of day.
    pub fn explain(&self, id: &TargetId, clock: &impl Fn(Duration) -> String) -> (Option<&'static str>, String) {
        let mut explanation = self.engine.explain(id, self.now).unwrap_or_default();
        let Some(t) = self.engine.get(id).filter(|t| t.state != State::Ok) else {
            return (None, explanation);
        };
        let local = SocketAddr::new(id.dst_addr, id.dst_port);
        let mut diagnosis = None;
        match self.refused_in(local) {
            // This host sent the RST: its listeners say why.
            Some(ns) => {
                let finding = self.listeners.finding(ns, local);
                if let Some(d) = finding.diagnosis() {
                    diagnosis = Some(d.name());
                    explanation.push_str("; ");
                    explanation.push_str(&finding.sentence(local, self.now, clock));
                }
                if t.state == State::Flapping {
                    let window = self.engine.thresholds().flap_window;
                    let recent: Vec<_> = (self.listeners.history(ns, id.dst_port))
                        .filter(|l| self.now.saturating_sub(l.until) <= window)
                        .collect();
                    if let Some(last) = recent.last() {
                        explanation.push_str(&format!(
                            "; its listener went away {} in the last {}, last: {} {}",
                            times(recent.len()),
                            format_duration(window),
                            last.who(),
                            last.cause.describe()
                        ));
                    }
                }
            }
            None if !id.dst_addr.is_loopback() => explanation.push_str(&format!(
                "; {} is not this host: why nothing listens there is in that host's listener history",
                id.dst_addr
            )),
            None => {}
        }
        if let Some(other) = self.stale_address(id) {
            explanation.push_str(&format!(
                "; the same workload reaches port {} on {other}: stale address",
                id.dst_port
            ));
            diagnosis = diagnosis.or(Some("stale_address"));
        }
        (diagnosis, explanation)
    }

    /// Another address on the same port answers the same workload while this one refuses.
    fn stale_address(&self, id: &TargetId) -> Option<IpAddr> {
        self.engine
            .iter()
            .filter(|(other, t)| {
                other.workload == id.workload
                    && other.dst_port == id.dst_port
                    && other.dst_addr != id.dst_addr
                    && t.last_success.is_some()
            })
            .map(|(other, _)| other.dst_addr)
            .next()
    }
}

fn times(n: usize) -> String {
    format!("{n} time{}", if n == 1 { "" } else { "s" })
}
