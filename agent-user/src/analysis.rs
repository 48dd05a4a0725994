//! Turns collected snapshots into verdicts and diagnoses: feeds count deltas to the episode
//! engine, keeps the episode counters and the cold-start histogram, diagnoses inbound
//! refusals against the host's listeners, and says which ports the kernel should watch for
//! successes. Runs on the daemon's tick; no kernel access here.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use foldhash::{HashMap, HashMapExt};
use serde::Serialize;

use crate::{
    collector::Snapshot,
    exposition::{Histogram, Kind, Sample, Text},
    labels::Label,
    listeners::{self, Diagnosis},
    series::{SeriesCap, Tally, TargetSeries},
    verdict::{Engine, Outcome, State, Thresholds},
};

/// A target as DESIGN.md defines it: workload, comm, destination address and port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetId {
    pub workload: Label,
    pub comm: Label,
    pub dst_addr: IpAddr,
    pub dst_port: u16,
}

impl TargetId {
    fn series(&self) -> TargetSeries {
        TargetSeries {
            workload: self.workload.clone(),
            comm: self.comm.clone(),
            dst: Some((self.dst_addr, self.dst_port)),
        }
    }
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
    inbound_seen: HashMap<(IpAddr, u16), u64>,
    inbound_last: HashMap<(IpAddr, u16), Duration>,
    /// The host's TCP listeners as last listed; `None` until a listing succeeds and after one
    /// fails: then nothing is diagnosed, rather than everything `not_listening`.
    listeners: Option<Vec<SocketAddr>>,
    listeners_at: Option<Duration>,
    /// Lists the listeners (sock_diag; a stand-in in tests).
    list_listeners: fn() -> Result<Vec<SocketAddr>, listeners::ListenError>,
    now: Duration,
}

const COLD_START: &str = "refusal_cold_start_duration_seconds";

impl Analysis {
    pub fn new(thresholds: Thresholds) -> Self {
        Self {
            engine: Engine::new(thresholds),
            seen: HashMap::new(),
            errnos: HashMap::new(),
            episodes: BTreeMap::new(),
            cold_starts: BTreeMap::new(),
            inbound_seen: HashMap::new(),
            inbound_last: HashMap::new(),
            listeners: None,
            listeners_at: None,
            list_listeners: listeners::tcp_listeners,
            now: Duration::ZERO,
        }
    }

    /// Feeds what changed since the last snapshot; `now` is `CLOCK_MONOTONIC`, the clock of the
    /// kernel's timestamps. Returns the ports the kernel should watch for successes.
    pub fn update(&mut self, snap: &Snapshot, now: Duration) -> BTreeSet<u16> {
        self.now = now;
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
            let key = (i.local_addr, i.local_port);
            let seen = self.inbound_seen.entry(key).or_default();
            if i.count > *seen {
                *seen = i.count;
                self.inbound_last.insert(key, now);
            }
        }
        self.inbound_last
            .retain(|_, at| now.saturating_sub(*at) < INBOUND_RECENT);
        let stale = self
            .listeners_at
            .is_none_or(|at| now.saturating_sub(at) >= LISTENERS_EVERY);
        if !self.inbound_last.is_empty() && stale {
            self.listeners = (self.list_listeners)()
                .inspect_err(
                    |e| tracing::warn!(error = %e, "listing listening sockets: inbound refusals go undiagnosed"),
                )
                .ok();
            self.listeners_at = Some(now);
        }
    }

    /// Diagnoses of the inbound refusals seen recently, in no order.
    fn diagnoses(&self) -> impl Iterator<Item = (SocketAddr, Diagnosis)> + '_ {
        self.inbound_last.keys().filter_map(|&(addr, port)| {
            let local = SocketAddr::new(addr, port);
            Some((local, listeners::diagnose(local, self.listeners.as_ref()?)?))
        })
    }

    /// [`Analysis::diagnoses`] by address and port.
    fn inbound_diagnoses(&self) -> Vec<(SocketAddr, Diagnosis)> {
        let mut out: Vec<_> = self.diagnoses().collect();
        out.sort();
        out
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

    /// Writes the verdict metrics: target states, episodes, inbound diagnoses, cold starts.
    pub fn render(&self, series: &mut SeriesCap, out: &mut Text) {
        // One series per target, for the state it is in: three per target would triple a port
        // scan's scrape for zeros that absent series express as well.
        let table = &mut series.target_state;
        let mut states = Vec::new();
        for (id, t) in self.engine.iter().filter(|(_, t)| t.state != State::Ok) {
            let row = table.row(id.series(), TargetSeries::folded, TargetSeries::labels);
            states.push((row, t.state.name()));
        }
        // A gauge: targets folded together are one series at 1, not a sum.
        states.sort_unstable();
        states.dedup();
        out.family(
            "refusal_target_state",
            "1 for the state each target with refusals is in (refusing, persistent, flapping).",
            Kind::Gauge,
        );
        for (row, state) in states {
            (out.sample("refusal_target_state").cached(table.labels(row)))
                .label("state", state)
                .count(1);
        }

        let table = &mut series.episodes;
        let mut tally = Tally::default();
        let fold = |(t, outcome): &(TargetSeries, &'static str)| (t.folded(), *outcome);
        for ((id, outcome), n) in &self.episodes {
            tally.add(table.row((id.series(), *outcome), fold, episode_labels), *n);
        }
        out.family(
            "refusal_episodes_total",
            "Refusal episodes that ended, by outcome: cold_start (came up in time) or recovered (after persistent).",
            Kind::Counter,
        );
        tally.write(out, "refusal_episodes_total", table);

        out.family(
            "refusal_inbound_diagnosis",
            "Why this host refuses connections to a local address and port (not_listening, loopback_only, wrong_address).",
            Kind::Gauge,
        );
        for (local, d) in self.diagnoses() {
            out.sample("refusal_inbound_diagnosis")
                .plain("local_addr", local.ip())
                .plain("local_port", local.port())
                .label("diagnosis", d.name())
                .count(1);
        }

        out.family(
            COLD_START,
            "Time from an episode's first refusal to the first successful connect, for cold starts.",
            Kind::Histogram,
        );
        for ((workload, port), h) in &self.cold_starts {
            h.write(out, COLD_START, |s| {
                s.label("workload", workload).plain("dst_port", *port)
            });
        }
    }

    /// One entry per target for `/api/targets`. `realtime_offset` turns monotonic seconds into
    /// Unix time.
    pub fn targets(&self, realtime_offset: f64) -> Vec<TargetView> {
        let unix = |d: Option<Duration>| d.map(|d| d.as_secs_f64() + realtime_offset);
        self.engine
            .iter()
            .map(|(id, t)| {
                let stale = if t.state == State::Ok {
                    None
                } else {
                    self.stale_address(id)
                };
                let mut explanation = self.engine.explain(id, self.now).unwrap_or_default();
                if let Some(other) = &stale {
                    explanation.push_str(&format!(
                        "; the same workload reaches port {} on {other}: stale address",
                        id.dst_port
                    ));
                }
                let counts = self.errnos.get(id).into_iter().flatten();
                TargetView {
                    workload: id.workload.to_string(),
                    comm: id.comm.to_string(),
                    dst_addr: id.dst_addr.to_string(),
                    dst_port: id.dst_port,
                    state: t.state,
                    counts: counts.map(|(e, n)| (e.to_string(), *n)).collect(),
                    refused_total: t.refused_total,
                    first_refusal: unix(t.first_refusal),
                    last_refusal: unix(t.last_refusal),
                    last_success: unix(t.last_success),
                    episodes_total: t.episodes_total,
                    cold_starts: t.cold_starts,
                    recoveries: t.recoveries,
                    open_episode: t.open.as_ref().map(|e| EpisodeView {
                        started: e.started.as_secs_f64() + realtime_offset,
                        refused: e.refused,
                    }),
                    recent_outcomes: t.history.iter().filter_map(|e| e.outcome).collect(),
                    diagnosis: stale.map(|_| "stale_address"),
                    explanation,
                }
            })
            .collect()
    }

    /// Recent inbound refusals with their diagnosis, for `/api/targets`: `unknown` for all of
    /// them while the listeners cannot be listed.
    pub fn inbound(&self) -> Vec<InboundView> {
        let view = |local: SocketAddr, diagnosis, explanation| InboundView {
            local_addr: local.ip().to_string(),
            local_port: local.port(),
            refused_total: self.inbound_seen.get(&(local.ip(), local.port())).copied().unwrap_or(0),
            diagnosis,
            explanation,
        };
        let Some(listeners) = &self.listeners else {
            let mut all: Vec<SocketAddr> = self.inbound_last.keys().map(|&(a, p)| SocketAddr::new(a, p)).collect();
            all.sort();
            let why = "this host's listening sockets could not be listed (sock_diag), so the refusal is not diagnosed";
            return all.into_iter().map(|l| view(l, "unknown", why.to_string())).collect();
        };
        self.inbound_diagnoses()
            .into_iter()
            .map(|(local, d)| view(local, d.name(), d.explain(local, listeners)))
            .collect()
    }
}

fn episode_labels<'a>((target, outcome): &(TargetSeries, &str), l: Sample<'a>) -> Sample<'a> {
    target.labels(l).label("outcome", outcome)
}

#[derive(Clone, Debug, Serialize)]
pub struct InboundView {
    pub local_addr: String,
    pub local_port: u16,
    pub refused_total: u64,
    pub diagnosis: &'static str,
    pub explanation: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct EpisodeView {
    pub started: f64,
    pub refused: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetView {
    pub workload: String,
    pub comm: String,
    pub dst_addr: String,
    pub dst_port: u16,
    pub state: State,
    /// Failed connects by errno since the agent started.
    pub counts: BTreeMap<String, u64>,
    pub refused_total: u64,
    pub first_refusal: Option<f64>,
    pub last_refusal: Option<f64>,
    pub last_success: Option<f64>,
    pub episodes_total: u64,
    pub cold_starts: u64,
    pub recoveries: u64,
    pub open_episode: Option<EpisodeView>,
    pub recent_outcomes: Vec<Outcome>,
    pub diagnosis: Option<&'static str>,
    pub explanation: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::{Inbound, Outcome as Seen};

    fn seen(addr: &str, errno: Option<&str>, count: u64, last_s: u64) -> Seen {
        Seen {
            cgroup_id: 1,
            workload: "/".into(),
            comm: "app".into(),
            proto: "tcp",
            dst_addr: addr.parse().unwrap(),
            dst_port: 8080,
            errno: errno.map(Into::into),
            count,
            last_ns: last_s * 1_000_000_000,
        }
    }

    fn snap(outcomes: Vec<Seen>) -> Snapshot {
        Snapshot {
            outcomes,
            ..Default::default()
        }
    }

    fn text(a: &Analysis, series: &mut SeriesCap) -> String {
        let mut out = Text::default();
        a.render(series, &mut out);
        out.finish()
    }

    #[test]
    fn deltas_drive_episodes_watch_set_and_metrics() {
        let mut a = Analysis::new(Thresholds::default());
        let refused = |n, t| seen("10.0.0.7", Some("ECONNREFUSED"), n, t);
        assert_eq!(
            a.update(&snap(vec![refused(2, 10)]), Duration::from_secs(10)),
            BTreeSet::from([8080])
        );
        // Same cumulative count again: nothing new.
        a.update(&snap(vec![refused(2, 10)]), Duration::from_secs(11));
        let ok = seen("10.0.0.7", None, 1, 14);
        assert_eq!(
            a.update(&snap(vec![refused(5, 13), ok]), Duration::from_secs(14)),
            BTreeSet::new()
        );
        let t = &a.targets(0.0)[0];
        assert_eq!((t.state, t.refused_total, t.cold_starts), (State::Ok, 5, 1));
        assert_eq!(t.counts["ECONNREFUSED"], 5);
        let text = text(&a, &mut SeriesCap::new(100));
        assert!(text.contains("refusal_episodes_total{workload=\"/\",comm=\"app\",dst_addr=\"10.0.0.7\",dst_port=\"8080\",outcome=\"cold_start\"} 1\n"), "{text}");
        assert!(
            text.contains("refusal_cold_start_duration_seconds_sum{workload=\"/\",dst_port=\"8080\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("refusal_cold_start_duration_seconds_bucket{workload=\"/\",dst_port=\"8080\",le=\"5\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn inbound_refusals_go_undiagnosed_while_listeners_cannot_be_listed() {
        let inbound = |port, count| Inbound {
            local_addr: "10.0.0.1".parse().unwrap(),
            local_port: port,
            count,
        };
        let snap = Snapshot {
            inbound: vec![inbound(7000, 3), inbound(7001, 1)],
            ..Snapshot::default()
        };
        let mut a = Analysis::new(Thresholds::default());
        a.list_listeners = || Err(listeners::ListenError::Malformed("test"));
        a.update(&snap, Duration::from_secs(10));
        let t = text(&a, &mut SeriesCap::new(100));
        assert!(!t.contains("refusal_inbound_diagnosis{"), "{t}");
        let views = a.inbound();
        let rows: Vec<_> = views
            .iter()
            .map(|v| (v.local_port, v.refused_total, v.diagnosis))
            .collect();
        assert_eq!(rows, [(7000, 3, "unknown"), (7001, 1, "unknown")]);
        // Once a listing works, the diagnosis comes back: nothing listens on either port.
        a.list_listeners = || Ok(vec!["10.0.0.1:22".parse().unwrap()]);
        a.update(&snap, Duration::from_secs(12));
        let diagnoses: Vec<_> = a.inbound().iter().map(|v| v.diagnosis).collect();
        assert_eq!(diagnoses, ["not_listening", "not_listening"]);
        let t = text(&a, &mut SeriesCap::new(100));
        assert_eq!(t.matches("diagnosis=\"not_listening\"} 1").count(), 2, "{t}");
    }

    #[test]
    fn another_address_answering_is_a_stale_address() {
        let mut a = Analysis::new(Thresholds::default());
        let s = snap(vec![
            seen("10.0.0.7", Some("ECONNREFUSED"), 3, 10),
            seen("10.0.0.8", None, 4, 11),
        ]);
        a.update(&s, Duration::from_secs(12));
        let views = a.targets(0.0);
        let stale = views.iter().find(|t| t.dst_addr == "10.0.0.7").unwrap();
        assert_eq!(stale.diagnosis, Some("stale_address"));
        assert!(
            stale
                .explanation
                .ends_with("the same workload reaches port 8080 on 10.0.0.8: stale address"),
            "{}",
            stale.explanation
        );
        let text = text(&a, &mut SeriesCap::new(100));
        assert!(text.contains("refusal_target_state{workload=\"/\",comm=\"app\",dst_addr=\"10.0.0.7\",dst_port=\"8080\",state=\"refusing\"} 1\n"), "{text}");
        assert!(!text.contains("state=\"persistent\""), "{text}");
    }

    #[test]
    fn targets_past_the_cap_fold_into_one_state_series() {
        let mut a = Analysis::new(Thresholds::default());
        let s = snap(
            (1..=4)
                .map(|i| seen(&format!("10.0.0.{i}"), Some("ECONNREFUSED"), 1, 10))
                .collect(),
        );
        a.update(&s, Duration::from_secs(10));
        let mut cap = SeriesCap::new(2);
        let text = text(&a, &mut cap);
        let states: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("refusal_target_state{"))
            .collect();
        assert_eq!(
            states,
            [
                "refusal_target_state{workload=\"/\",comm=\"app\",dst_addr=\"10.0.0.1\",dst_port=\"8080\",state=\"refusing\"} 1",
                "refusal_target_state{workload=\"/\",comm=\"app\",dst_addr=\"10.0.0.2\",dst_port=\"8080\",state=\"refusing\"} 1",
                "refusal_target_state{workload=\"/\",comm=\"app\",dst_addr=\"other\",dst_port=\"other\",state=\"refusing\"} 1",
            ]
        );
        assert_eq!(cap.overflow().last(), Some(("refusal_target_state", 2)));
    }
}
