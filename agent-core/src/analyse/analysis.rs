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
        advice::{Advice, Boots},
        diagnosis::{self, Diagnosis},
        histogram::Histogram,
        listeners::{Book, Finding},
        verdict::{Engine, Outcome, State, Target, format_duration, format_secs},
    },
    collect::{labels::Label, listening::Seed, snapshot::Snapshot, workload::Workload},
    config::Thresholds,
};

/// A target (README, "Verdicts"): workload, comm, destination address and port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetId {
    pub workload: Workload,
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
    cold_starts: BTreeMap<(Workload, u16), Histogram>,
    /// Cold-start durations per target and per destination port, for retry advice.
    boots_by_target: Boots<TargetId>,
    boots_by_port: Boots<u16>,
    /// Inbound refusals by the namespace that refused and the local address and port.
    inbound_seen: HashMap<Local, u64>,
    inbound_last: HashMap<Local, Duration>,
    /// The same by address and port: when this host last refused it, in which namespace (a
    /// lookup per target instead of a walk of every refused address).
    refused_by: HashMap<(IpAddr, u16), (Duration, u32)>,
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
            boots_by_target: Boots::default(),
            boots_by_port: Boots::default(),
            inbound_seen: HashMap::new(),
            inbound_last: HashMap::new(),
            refused_by: HashMap::new(),
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
        self.update_inbound(snap, now);
        self.judge_gave_up(now);
        self.engine.tick(now);
        let th = self.engine.thresholds();
        let (forget, window) = (th.forget_after, th.advice_window);
        self.listeners.forget(now, forget);
        self.boots_by_target.prune(now, window);
        self.boots_by_port.prune(now, window);
        self.engine.watched().map(|id| id.dst_port).collect()
    }

    /// Ends the episodes of clients that stopped retrying while their target began accepting
    /// within `cold_start_max` of their last refusal (README, "Verdicts"). A client is taken to
    /// have stopped after `gave_up_after` of silence, or twice its longest wait between two
    /// retries if that is longer: one that merely waits longer comes back and cold-starts.
    fn judge_gave_up(&mut self, now: Duration) {
        let th = self.engine.thresholds();
        let mut quiet = (self.engine.open())
            .filter(|(_, ep)| now >= ep.last + th.gave_up_after.max(ep.longest_gap * 2))
            .peekable();
        if quiet.peek().is_none() {
            return;
        }
        // Every client's last success per destination, sorted: one pass over the targets per
        // tick, not one per quiet episode (a port scan leaves thousands).
        let mut successes: HashMap<(IpAddr, u16), Vec<Duration>> = HashMap::new();
        for (other, t) in self.engine.iter() {
            if let Some(at) = t.last_success {
                successes.entry((other.dst_addr, other.dst_port)).or_default().push(at);
            }
        }
        successes.values_mut().for_each(|v| v.sort_unstable());
        let ended: Vec<(TargetId, Duration, bool)> = quiet
            .filter_map(|(id, ep)| {
                let (at, listening) = self.accepting_since(id, ep.started, ep.last, &successes)?;
                (at.saturating_sub(ep.last) <= th.cold_start_max).then(|| (id.clone(), at, listening))
            })
            .collect();
        for (id, at, listening) in ended {
            if let Some(outcome) = self.engine.gave_up(&id, now, at, listening) {
                self.ended(&id, outcome);
            }
        }
    }

    /// When `id`'s destination began accepting, after an episode that started at `started` and
    /// refused last at `last`: a listener of this host on it appeared (`true`), or another
    /// client got through (`false`); the earlier of the two. `successes` holds every client's
    /// last success per destination, sorted; a client's own is older than its open episode.
    fn accepting_since(
        &self,
        id: &TargetId,
        started: Duration,
        last: Duration,
        successes: &HashMap<(IpAddr, u16), Vec<Duration>>,
    ) -> Option<(Duration, bool)> {
        let local = SocketAddr::new(id.dst_addr, id.dst_port);
        let listener = self.refused_in(local).and_then(|ns| {
            (self.listeners.listening(ns, id.dst_port))
                .filter(|l| diagnosis::diagnose(local, &[l.local]).is_none())
                .filter_map(|l| l.since.filter(|at| *at >= started))
                .min()
        });
        let other = successes
            .get(&(id.dst_addr, id.dst_port))
            .and_then(|v| v.get(v.partition_point(|at| *at < last)).copied());
        match (listener, other) {
            (Some(l), Some(o)) if o < l => Some((o, false)),
            (Some(l), _) => Some((l, true)),
            (None, o) => o.map(|o| (o, false)),
        }
    }

    fn ended(&mut self, id: &TargetId, outcome: Outcome) {
        if let Outcome::ColdStart { seconds } = outcome {
            (self.cold_starts.entry((id.workload.clone(), id.dst_port)))
                .or_insert_with(|| Histogram::new(COLD_START_BUCKETS))
                .observe(seconds);
            self.boots_by_target.add(id.clone(), self.now, seconds);
            self.boots_by_port.add(id.dst_port, self.now, seconds);
        }
        *self.episodes.entry((id.clone(), outcome.name())).or_default() += 1;
    }

    /// Retry advice from `id`'s cold starts, once there are enough.
    pub fn target_advice(&self, id: &TargetId) -> Option<Advice> {
        self.boots_by_target
            .advice(id, self.engine.thresholds().advice_min_cold_starts)
    }

    fn port_advice_sentence(&self, port: u16) -> Option<String> {
        let advice = self
            .boots_by_port
            .advice(&port, self.engine.thresholds().advice_min_cold_starts)?;
        Some(advice.sentence(&format!(":{port}"), self.engine.thresholds().advice_window))
    }

    /// Retry advice per destination port, for the ports with enough cold starts, by port.
    pub fn port_advice(&self) -> BTreeMap<u16, Advice> {
        let min = self.engine.thresholds().advice_min_cold_starts;
        (self.boots_by_port.keys())
            .filter_map(|port| Some((*port, self.boots_by_port.advice(port, min)?)))
            .collect()
    }

    pub fn thresholds(&self) -> &Thresholds {
        self.engine.thresholds()
    }

    fn update_inbound(&mut self, snap: &Snapshot, now: Duration) {
        for i in &snap.inbound {
            let key = (i.netns, i.local_addr, i.local_port);
            let seen = self.inbound_seen.entry(key).or_default();
            if i.count > *seen {
                *seen = i.count;
                self.inbound_last.insert(key, now);
                self.refused_by.insert((i.local_addr, i.local_port), (now, i.netns));
            }
        }
        let recent = |at: &Duration| now.saturating_sub(*at) < INBOUND_RECENT;
        self.inbound_last.retain(|_, at| recent(at));
        self.refused_by.retain(|_, (at, _)| recent(at));
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
    pub fn cold_starts(&self) -> impl Iterator<Item = (&(Workload, u16), &Histogram)> {
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
        self.refused_by.get(&(local.ip(), local.port())).map(|(_, ns)| *ns)
    }

    /// Drop points of the analysis itself, for `refusal_agent_events_dropped_total`.
    pub fn drops(&self) -> [(&'static str, u64); 1] {
        [("listener_history_full", self.listeners.evicted())]
    }

    /// The target's diagnosis, if any, and the sentence that explains its state. `clock` turns
    /// a monotonic time into a time of day.
    pub fn explain(&self, id: &TargetId, clock: &impl Fn(Duration) -> String) -> (Option<&'static str>, String) {
        let mut explanation = self.engine.explain(id, self.now).unwrap_or_default();
        let advice = self.port_advice_sentence(id.dst_port);
        let Some(t) = self.engine.get(id).filter(|t| t.state != State::Ok) else {
            if let Some(t) = self.engine.get(id).filter(|t| t.open.is_none())
                && let Some(Outcome::GaveUp {
                    retried,
                    boot,
                    listening,
                }) = t.history.last().and_then(|e| e.outcome)
            {
                let accepted = if listening {
                    "started listening"
                } else {
                    "accepted another client"
                };
                explanation = format!(
                    "{} stopped retrying after {}; :{} {accepted} {} after the first refusal: its retry budget is \
                     shorter than the boot",
                    id.comm,
                    format_secs(retried),
                    id.dst_port,
                    format_secs(boot),
                );
                explanation.extend(advice.map(|a| format!("; {a}")));
            }
            return (None, explanation);
        };
        if t.state == State::Refusing {
            explanation.extend(advice.map(|a| format!("; {a}")));
        }
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
            // The client's own address is wrong: that says more than where the port listens or
            // did not, but less than a listener that went away.
            if !diagnosis.is_some_and(|d| d.starts_with("listener_")) {
                diagnosis = Some("stale_address");
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::{
        listening::{ListenerEvent, Process},
        snapshot::{Inbound, Outcome as Counted},
    };

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A cumulative counter of `comm`'s connects to 127.0.0.1:`port`, the last at `at_ms`.
    fn counted(comm: &str, port: u16, errno: Option<&str>, count: u64, at_ms: u64) -> Counted {
        Counted {
            cgroup_id: 1,
            workload: "/".into(),
            comm: comm.into(),
            proto: "tcp",
            dst_addr: "127.0.0.1".parse().unwrap(),
            dst_port: port,
            errno: errno.map(Into::into),
            count,
            last_ns: at_ms * 1_000_000,
        }
    }

    struct Run {
        a: Analysis,
        outcomes: Vec<Counted>,
        inbound: u64,
    }

    impl Run {
        fn new() -> Run {
            Run {
                a: Analysis::new(Thresholds::default(), Seed::own_only(0, Ok(vec![])), Duration::ZERO),
                outcomes: Vec::new(),
                inbound: 0,
            }
        }

        /// `comm` refused at each of `at_ms`, one update per refusal, this host refusing.
        fn refused(&mut self, comm: &str, port: u16, at_ms: &[u64]) {
            for &at in at_ms {
                let n = self.count(comm, port, Some("ECONNREFUSED")) + 1;
                self.set(counted(comm, port, Some("ECONNREFUSED"), n, at));
                self.inbound += 1;
                self.update(Duration::from_millis(at), vec![]);
            }
        }

        fn succeeded(&mut self, comm: &str, port: u16, at_ms: u64) {
            let n = self.count(comm, port, None) + 1;
            self.set(counted(comm, port, None, n, at_ms));
            self.update(Duration::from_millis(at_ms), vec![]);
        }

        fn count(&self, comm: &str, port: u16, errno: Option<&str>) -> u64 {
            let same = |o: &&Counted| &*o.comm == comm && o.dst_port == port && o.errno.as_deref() == errno;
            self.outcomes.iter().find(same).map_or(0, |o| o.count)
        }

        fn set(&mut self, c: Counted) {
            self.outcomes
                .retain(|o| !(o.comm == c.comm && o.dst_port == c.dst_port && o.errno == c.errno));
            self.outcomes.push(c);
        }

        fn update(&mut self, now: Duration, listeners: Vec<ListenerEvent>) {
            let snap = Snapshot {
                outcomes: self.outcomes.clone(),
                inbound: vec![Inbound {
                    netns: 0,
                    local_addr: "127.0.0.1".parse().unwrap(),
                    local_port: 8080,
                    count: self.inbound,
                }],
                listeners,
                ..Snapshot::default()
            };
            self.a.update(&snap, now);
        }

        fn listens(&mut self, port: u16, at: Duration) {
            let ev = ListenerEvent::Started {
                at,
                netns: 0,
                local: SocketAddr::from(([0, 0, 0, 0], port)),
                owner: Process {
                    tgid: 7,
                    comm: "srv".into(),
                    workload: "/".into(),
                },
            };
            self.update(at, vec![ev]);
        }

        fn outcomes(&self, comm: &str) -> Vec<Outcome> {
            let (_, t) = self.a.targets().find(|(id, _)| &*id.comm == comm).expect(comm);
            t.history.iter().filter_map(|e| e.outcome).collect()
        }
    }

    #[test]
    fn a_client_whose_budget_is_shorter_than_the_boot_gave_up() {
        let mut r = Run::new();
        // curl --retry-connrefused --retry-max-time 3: tries at 0, 1 and 3 s.
        r.refused("curl", 8080, &[0, 1000, 3000]);
        // wget keeps trying every second and gets through once the server listens at 6 s.
        r.refused("wget", 8080, &[0, 1000, 2000, 3000, 4000, 5000]);
        r.listens(8080, s(6));
        r.succeeded("wget", 8080, 6500);
        // Silent for less than gave_up_after (30 s): it may still come back.
        r.update(s(32), vec![]);
        assert_eq!(r.outcomes("curl"), []);
        r.update(s(33), vec![]);
        let gave_up = Outcome::GaveUp {
            retried: 3.0,
            boot: 6.0,
            listening: true,
        };
        assert_eq!(r.outcomes("curl"), [gave_up]);
        assert_eq!(r.outcomes("wget"), [Outcome::ColdStart { seconds: 6.5 }]);
        let id =
            r.a.targets()
                .map(|(id, _)| id.clone())
                .find(|id| &*id.comm == "curl")
                .unwrap();
        assert_eq!(
            r.a.explain(&id, &|_| String::new()).1,
            "curl stopped retrying after 3s; :8080 started listening 6s after the first refusal: its retry budget \
             is shorter than the boot"
        );
        let names: Vec<_> = r.a.episodes().map(|((id, o), n)| (&*id.comm, *o, *n)).collect();
        assert_eq!(names, [("curl", "gave_up", 1), ("wget", "cold_start", 1)]);
    }

    #[test]
    fn a_client_that_waits_long_between_retries_is_not_given_up_on() {
        let mut r = Run::new();
        // Retries every 20 s: silent 30 s is not enough, 40 s (twice its wait) is.
        r.refused("slow", 8080, &[0, 20_000]);
        r.listens(8080, s(25));
        r.update(s(55), vec![]);
        assert_eq!(r.outcomes("slow"), []);
        r.succeeded("slow", 8080, 58_000);
        assert_eq!(r.outcomes("slow"), [Outcome::ColdStart { seconds: 58.0 }]);
    }

    #[test]
    fn another_client_getting_through_is_the_target_accepting() {
        let mut r = Run::new();
        r.refused("short", 8080, &[0, 2000]);
        r.refused("long", 8080, &[0, 2000, 4000, 8000]);
        r.succeeded("long", 8080, 9000);
        r.update(s(40), vec![]);
        let gave_up = Outcome::GaveUp {
            retried: 2.0,
            boot: 9.0,
            listening: false,
        };
        assert_eq!(r.outcomes("short"), [gave_up]);
    }

    #[test]
    fn advice_once_enough_cold_starts_were_seen() {
        let mut r = Run::new();
        for (i, boot) in [12u64, 20, 30, 45, 52].into_iter().enumerate() {
            let t0 = i as u64 * 100_000;
            r.refused("app", 9000, &[t0]);
            r.succeeded("app", 9000, t0 + boot * 1000);
            let seen = r.a.port_advice().get(&9000).map(|a| a.seen);
            assert_eq!(seen, (i == 4).then_some(5), "after {} cold starts", i + 1);
        }
        let a = r.a.port_advice()[&9000];
        assert_eq!(
            (a.min, a.p50, a.p95, a.max, a.retry_for),
            (12.0, 30.0, 52.0, 52.0, 60.0)
        );
        let id = r.a.targets().next().unwrap().0.clone();
        assert_eq!(r.a.target_advice(&id).map(|a| a.seen), Some(5));
    }
}
