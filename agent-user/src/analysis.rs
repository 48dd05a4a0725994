//! Turns collected snapshots into verdicts and diagnoses: feeds count deltas to the episode
//! engine, keeps the episode counters and the cold-start histogram, diagnoses inbound
//! refusals against the host's listeners, and says which ports the kernel should watch for
//! successes. Runs on the daemon's tick; no kernel access here.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    time::Duration,
};

use prometheus::{
    HistogramOpts, HistogramVec,
    proto::{MetricFamily, MetricType},
};
use serde::Serialize;

use crate::{
    collector::Snapshot,
    listeners::{self, Diagnosis},
    metrics::{Samples, family},
    series::{OTHER, SeriesCap},
    verdict::{Engine, Outcome, State, Thresholds},
};

/// A target as DESIGN.md defines it: workload, comm, destination address and port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetId {
    pub workload: String,
    pub comm: String,
    pub dst_addr: String,
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

type OutcomeKey = (TargetId, Option<String>);

pub struct Analysis {
    engine: Engine<TargetId>,
    /// Cumulative counts already fed to the engine.
    seen: HashMap<OutcomeKey, u64>,
    /// Cumulative failures by errno per target, for the API.
    errnos: BTreeMap<TargetId, BTreeMap<String, u64>>,
    episodes: BTreeMap<(TargetId, &'static str), u64>,
    cold_starts: HistogramVec,
    inbound_seen: HashMap<(String, u16), u64>,
    inbound_last: HashMap<(String, u16), Duration>,
    listeners: Vec<SocketAddr>,
    listeners_at: Option<Duration>,
    now: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("registering the cold start histogram: {0}")]
pub struct AnalysisError(#[from] prometheus::Error);

impl Analysis {
    pub fn new(thresholds: Thresholds) -> Result<Self, AnalysisError> {
        let opts = HistogramOpts::new(
            "refusal_cold_start_duration_seconds",
            "Time from an episode's first refusal to the first successful connect, for cold starts.",
        )
        .buckets(COLD_START_BUCKETS.to_vec());
        Ok(Self {
            engine: Engine::new(thresholds),
            seen: HashMap::new(),
            errnos: BTreeMap::new(),
            episodes: BTreeMap::new(),
            cold_starts: HistogramVec::new(opts, &["workload", "dst_port"])?,
            inbound_seen: HashMap::new(),
            inbound_last: HashMap::new(),
            listeners: Vec::new(),
            listeners_at: None,
            now: Duration::ZERO,
        })
    }

    /// Feeds what changed since the last snapshot; `now` is `CLOCK_MONOTONIC`, the clock of the
    /// kernel's timestamps. Returns the ports the kernel should watch for successes.
    pub fn update(&mut self, snap: &Snapshot, now: Duration) -> BTreeSet<u16> {
        self.now = now;
        // Sum per label set first: two cgroups may name the same workload.
        let mut current: BTreeMap<OutcomeKey, (u64, u64)> = BTreeMap::new();
        for o in snap.outcomes.iter().filter(|o| o.proto == "tcp") {
            let id = TargetId {
                workload: o.workload.clone(),
                comm: o.comm.clone(),
                dst_addr: o.dst_addr.clone(),
                dst_port: o.dst_port,
            };
            let e = current.entry((id, o.errno.clone())).or_default();
            e.0 += o.count;
            e.1 = e.1.max(o.last_ns);
        }
        let mut deltas: Vec<(u64, OutcomeKey, u64)> = Vec::new();
        for (key, (count, last_ns)) in current {
            let seen = self.seen.entry(key.clone()).or_default();
            if count > *seen {
                deltas.push((last_ns, key.clone(), count - *seen));
                *seen = count;
            }
            if let Some(errno) = &key.1 {
                self.errnos
                    .entry(key.0.clone())
                    .or_default()
                    .insert(errno.clone(), count);
            }
        }
        // In event order, so an episode's first refusal precedes its success.
        deltas.sort();
        for (last_ns, (id, errno), n) in deltas {
            let at = Duration::from_nanos(last_ns);
            if errno.is_some() {
                self.engine.refused(&id, at, n);
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
                self.cold_starts
                    .with_label_values(&[id.workload.as_str(), &id.dst_port.to_string()])
                    .observe(seconds);
                "cold_start"
            }
            Outcome::Recovered { .. } => "recovered",
        };
        *self.episodes.entry((id.clone(), name)).or_default() += 1;
    }

    fn update_inbound(&mut self, snap: &Snapshot, now: Duration) {
        for i in &snap.inbound {
            let key = (i.local_addr.clone(), i.local_port);
            let seen = self.inbound_seen.entry(key.clone()).or_default();
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
            match listeners::tcp_listeners() {
                Ok(l) => self.listeners = l,
                Err(e) => tracing::warn!(error = %e, "listing listening sockets"),
            }
            self.listeners_at = Some(now);
        }
    }

    /// Diagnoses of the inbound refusals seen recently.
    pub fn inbound_diagnoses(&self) -> Vec<(SocketAddr, Diagnosis)> {
        let mut out: Vec<_> = self
            .inbound_last
            .keys()
            .filter_map(|(addr, port)| {
                let local = SocketAddr::new(addr.parse().ok()?, *port);
                Some((local, listeners::diagnose(local, &self.listeners)?))
            })
            .collect();
        out.sort();
        out
    }

    /// Another address on the same port answers the same workload while this one refuses.
    fn stale_address(&self, id: &TargetId) -> Option<String> {
        self.engine
            .iter()
            .filter(|(other, t)| {
                other.workload == id.workload
                    && other.dst_port == id.dst_port
                    && other.dst_addr != id.dst_addr
                    && t.last_success.is_some()
            })
            .map(|(other, _)| other.dst_addr.clone())
            .next()
    }

    pub fn families(&self, series: &mut SeriesCap) -> Vec<MetricFamily> {
        let mut states = Samples::new();
        for (id, t) in self.engine.iter().filter(|(_, t)| t.state != State::Ok) {
            let mut labels = vec![
                id.workload.clone(),
                id.comm.clone(),
                id.dst_addr.clone(),
                id.dst_port.to_string(),
            ];
            if !series.admit("refusal_target_state", &labels) {
                labels[2] = OTHER.into();
                labels[3] = OTHER.into();
            }
            // One series per target, for the state it is in: three per target would triple a
            // port scan's scrape for zeros that absent series express as well.
            labels.push(t.state.name().into());
            states.insert(labels, 1.0);
        }
        let mut episodes = Samples::new();
        for ((id, outcome), n) in &self.episodes {
            let mut labels = vec![
                id.workload.clone(),
                id.comm.clone(),
                id.dst_addr.clone(),
                id.dst_port.to_string(),
                outcome.to_string(),
            ];
            if !series.admit("refusal_episodes_total", &labels) {
                labels[2] = OTHER.into();
                labels[3] = OTHER.into();
            }
            *episodes.entry(labels).or_default() += *n as f64;
        }
        let diagnoses: Samples = self
            .inbound_diagnoses()
            .into_iter()
            .map(|(local, d)| {
                (
                    vec![local.ip().to_string(), local.port().to_string(), d.name().to_string()],
                    1.0,
                )
            })
            .collect();
        let mut out: Vec<MetricFamily> = [
            family(
                "refusal_target_state",
                "1 for the state each target with refusals is in (refusing, persistent, flapping).",
                MetricType::GAUGE,
                &["workload", "comm", "dst_addr", "dst_port", "state"],
                states,
            ),
            family(
                "refusal_episodes_total",
                "Refusal episodes that ended, by outcome: cold_start (came up in time) or recovered (after persistent).",
                MetricType::COUNTER,
                &["workload", "comm", "dst_addr", "dst_port", "outcome"],
                episodes,
            ),
            family(
                "refusal_inbound_diagnosis",
                "Why this host refuses connections to a local address and port (not_listening, loopback_only, wrong_address).",
                MetricType::GAUGE,
                &["local_addr", "local_port", "diagnosis"],
                diagnoses,
            ),
        ]
        .into_iter()
        .filter(|f| !f.get_metric().is_empty())
        .collect();
        out.extend(
            prometheus::core::Collector::collect(&self.cold_starts)
                .into_iter()
                .filter(|f| !f.get_metric().is_empty()),
        );
        out
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
                TargetView {
                    workload: id.workload.clone(),
                    comm: id.comm.clone(),
                    dst_addr: id.dst_addr.clone(),
                    dst_port: id.dst_port,
                    state: t.state,
                    counts: self.errnos.get(id).cloned().unwrap_or_default(),
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

    /// Recent inbound refusals with their diagnosis, for `/api/targets`.
    pub fn inbound(&self) -> Vec<InboundView> {
        self.inbound_diagnoses()
            .into_iter()
            .map(|(local, d)| InboundView {
                local_addr: local.ip().to_string(),
                local_port: local.port(),
                refused_total: self
                    .inbound_seen
                    .get(&(local.ip().to_string(), local.port()))
                    .copied()
                    .unwrap_or(0),
                diagnosis: d.name(),
                explanation: d.explain(local, &self.listeners),
            })
            .collect()
    }
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
    use crate::{collector::Outcome as Seen, metrics::encode};

    fn seen(addr: &str, errno: Option<&str>, count: u64, last_s: u64) -> Seen {
        Seen {
            cgroup_id: 1,
            workload: "/".into(),
            comm: "app".into(),
            proto: "tcp",
            dst_addr: addr.into(),
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

    #[test]
    fn deltas_drive_episodes_watch_set_and_metrics() {
        let mut a = Analysis::new(Thresholds::default()).unwrap();
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
        let text = encode(&a.families(&mut SeriesCap::new(100))).unwrap();
        assert!(text.contains("refusal_episodes_total{workload=\"/\",comm=\"app\",dst_addr=\"10.0.0.7\",dst_port=\"8080\",outcome=\"cold_start\"} 1\n"), "{text}");
        assert!(
            text.contains("refusal_cold_start_duration_seconds_sum{dst_port=\"8080\",workload=\"/\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("refusal_cold_start_duration_seconds_bucket{dst_port=\"8080\",workload=\"/\",le=\"5\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn another_address_answering_is_a_stale_address() {
        let mut a = Analysis::new(Thresholds::default()).unwrap();
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
        let text = encode(&a.families(&mut SeriesCap::new(100))).unwrap();
        assert!(text.contains("refusal_target_state{workload=\"/\",comm=\"app\",dst_addr=\"10.0.0.7\",dst_port=\"8080\",state=\"refusing\"} 1\n"), "{text}");
        assert!(!text.contains("state=\"persistent\""), "{text}");
    }
}
