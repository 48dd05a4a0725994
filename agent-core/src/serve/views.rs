//! `/api/targets`: each target with its state, counts, times, diagnosis and a sentence a person
//! can read, and the recent inbound refusals, both with the listener history of the port where
//! this host refused; retry advice per target and per destination port. [`TargetView`] is what the daemon serves; [`Target`] is what
//! `refusal-agent status` reads back.
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    analyse::{
        advice::Advice,
        analysis::Analysis,
        listeners::{Cause, Finding, Listener, Lost},
        verdict::{Outcome, State},
    },
    collect::listening::Process,
};

#[derive(Clone, Debug, Serialize)]
pub struct ProcessView {
    pub pid: u32,
    pub comm: String,
    pub workload: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

impl From<&Process> for ProcessView {
    fn from(p: &Process) -> Self {
        ProcessView {
            pid: p.tgid,
            comm: p.comm.to_string(),
            workload: p.workload.workload.clone(),
            namespace: p.workload.namespace.clone(),
            pod: p.workload.pod.clone(),
            container: p.workload.container.clone(),
        }
    }
}

/// A listener now.
#[derive(Clone, Debug, Serialize)]
pub struct ListeningView {
    pub local: String,
    pub process: Option<ProcessView>,
    /// Unix time; `null`: since before the agent started.
    pub since: Option<f64>,
}

/// A listener that went away.
#[derive(Clone, Debug, Serialize)]
pub struct LostView {
    pub local: String,
    pub process: Option<ProcessView>,
    pub since: Option<f64>,
    pub until: f64,
    #[serde(flatten)]
    pub cause: Cause,
    /// "exited with code 3", "was killed by SIGKILL (OOM)", …
    pub detail: String,
    /// The task that dropped the socket, when not the process that listened.
    pub closed_by: Option<ProcessView>,
    /// Milliseconds between the last RST the process received and its death, and its peer.
    pub after_reset: Option<ResetView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ResetView {
    pub ms: u64,
    pub peer: String,
}

/// The listener history of a port in the network namespace that refused.
#[derive(Clone, Debug, Serialize)]
pub struct ListenerView {
    pub netns: u32,
    pub listening: Vec<ListeningView>,
    /// Newest last.
    pub lost: Vec<LostView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct InboundView {
    pub netns: u32,
    pub local_addr: String,
    pub local_port: u16,
    pub refused_total: u64,
    pub diagnosis: &'static str,
    pub explanation: String,
    pub listener: ListenerView,
}

#[derive(Clone, Debug, Serialize)]
pub struct EpisodeView {
    pub started: f64,
    pub refused: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetView {
    pub workload: String,
    /// The Kubernetes names (empty outside Kubernetes).
    pub namespace: String,
    pub pod: String,
    pub container: String,
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
    pub gave_ups: u64,
    pub open_episode: Option<EpisodeView>,
    pub recent_outcomes: Vec<Outcome>,
    pub diagnosis: Option<&'static str>,
    pub explanation: String,
    /// Where this host refused the target: its listener history.
    pub listener: Option<ListenerView>,
    /// How long to retry, from this target's cold starts, once enough were seen.
    pub advice: Option<AdviceView>,
}

/// Retry advice from cold starts: seconds, and a sentence.
#[derive(Clone, Debug, Serialize)]
pub struct AdviceView {
    #[serde(flatten)]
    pub advice: Advice,
    /// The window the cold starts were seen in, seconds.
    pub window: f64,
    pub sentence: String,
}

/// Retry advice for a destination port, from every client's cold starts to it.
#[derive(Clone, Debug, Serialize)]
pub struct PortAdviceView {
    pub dst_port: u16,
    #[serde(flatten)]
    pub advice: AdviceView,
}

/// One destination port's advice as `status` reads it back.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct PortAdvice {
    pub dst_port: u16,
    pub sentence: String,
}

/// A target as `status` reads it back from `/api/targets`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Target {
    pub workload: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub pod: String,
    #[serde(default)]
    pub container: String,
    pub comm: String,
    pub dst_addr: String,
    pub dst_port: u16,
    pub state: String,
    #[serde(default)]
    pub counts: BTreeMap<String, u64>,
    pub refused_total: u64,
    pub last_refusal: Option<f64>,
    pub diagnosis: Option<String>,
    pub explanation: String,
}

fn advice_view(advice: Advice, what: &str, window: Duration) -> AdviceView {
    AdviceView {
        advice,
        window: window.as_secs_f64(),
        sentence: advice.sentence(what, window),
    }
}

/// Monotonic times as Unix times and times of day.
struct Clock(f64);

impl Clock {
    fn unix(&self, d: Duration) -> f64 {
        d.as_secs_f64() + self.0
    }

    /// `12:03:04 UTC`.
    fn time_of_day(&self, d: Duration) -> String {
        let s = self.unix(d).max(0.0) as u64 % 86_400;
        format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
    }
}

fn listener_view(analysis: &Analysis, clock: &Clock, netns: u32, port: u16) -> ListenerView {
    let book = analysis.listeners();
    let listening = |l: &Listener| ListeningView {
        local: l.local.to_string(),
        process: l.owner.as_ref().map(ProcessView::from),
        since: l.since.map(|d| clock.unix(d)),
    };
    let lost = |l: &Lost| {
        let owner = l.listener.owner.as_ref();
        LostView {
            local: l.listener.local.to_string(),
            process: Some(ProcessView::from(owner.unwrap_or(&l.by))),
            since: l.listener.since.map(|d| clock.unix(d)),
            until: clock.unix(l.until),
            cause: l.cause,
            detail: l.cause.describe(),
            closed_by: owner.filter(|o| o.tgid != l.by.tgid).map(|_| ProcessView::from(&l.by)),
            after_reset: l.after_reset.map(|r| ResetView {
                ms: u64::try_from(r.gap.as_millis()).unwrap_or(u64::MAX),
                peer: r.peer.to_string(),
            }),
        }
    };
    ListenerView {
        netns,
        listening: book.listening(netns, port).map(listening).collect(),
        lost: book.history(netns, port).map(lost).collect(),
    }
}

/// One entry per target. `realtime_offset` turns monotonic seconds into Unix time.
pub fn targets(analysis: &Analysis, realtime_offset: f64) -> Vec<TargetView> {
    let clock = Clock(realtime_offset);
    let unix = |d: Option<Duration>| d.map(|d| clock.unix(d));
    analysis
        .targets()
        .map(|(id, t)| {
            let (diagnosis, explanation) = analysis.explain(id, &|d| clock.time_of_day(d));
            let local = SocketAddr::new(id.dst_addr, id.dst_port);
            TargetView {
                workload: id.workload.workload.clone(),
                namespace: id.workload.namespace.clone(),
                pod: id.workload.pod.clone(),
                container: id.workload.container.clone(),
                comm: id.comm.to_string(),
                dst_addr: id.dst_addr.to_string(),
                dst_port: id.dst_port,
                state: t.state,
                counts: analysis.errnos(id).map(|(e, n)| (e.to_string(), *n)).collect(),
                refused_total: t.refused_total,
                first_refusal: unix(t.first_refusal),
                last_refusal: unix(t.last_refusal),
                last_success: unix(t.last_success),
                episodes_total: t.episodes_total,
                cold_starts: t.cold_starts,
                recoveries: t.recoveries,
                gave_ups: t.gave_ups,
                open_episode: t.open.as_ref().map(|e| EpisodeView {
                    started: clock.unix(e.started),
                    refused: e.refused,
                }),
                recent_outcomes: t.history.iter().filter_map(|e| e.outcome).collect(),
                diagnosis,
                explanation,
                listener: (analysis.refused_in(local)).map(|ns| listener_view(analysis, &clock, ns, id.dst_port)),
                advice: analysis
                    .target_advice(id)
                    .map(|a| advice_view(a, &local.to_string(), analysis.thresholds().advice_window)),
            }
        })
        .collect()
}

/// Recent inbound refusals with their diagnosis, by address: `unknown` where the namespace's
/// listeners cannot be known; left out where a listener would accept now (transient).
pub fn inbound(analysis: &Analysis, realtime_offset: f64) -> Vec<InboundView> {
    let clock = Clock(realtime_offset);
    let mut found: Vec<_> = analysis.inbound_findings().collect();
    found.sort_by_key(|(ns, local, _)| (*local, *ns));
    found
        .into_iter()
        .filter(|(_, _, f)| *f != Finding::Accepting)
        .map(|(ns, local, f)| {
            let refused = analysis.inbound_refused(ns, local);
            let sentence = f.sentence(local, analysis.now(), &|d| clock.time_of_day(d));
            let explanation = match f {
                Finding::Lost(_) => format!("refused {refused} times {sentence}"),
                _ => sentence,
            };
            InboundView {
                netns: ns,
                local_addr: local.ip().to_string(),
                local_port: local.port(),
                refused_total: refused,
                diagnosis: f.diagnosis().map_or("unknown", |d| d.name()),
                explanation,
                listener: listener_view(analysis, &clock, ns, local.port()),
            }
        })
        .collect()
}

/// Retry advice per destination port, for the ports with enough cold starts.
pub fn ports(analysis: &Analysis) -> Vec<PortAdviceView> {
    let window = analysis.thresholds().advice_window;
    (analysis.port_advice().into_iter())
        .map(|(port, a)| PortAdviceView {
            dst_port: port,
            advice: advice_view(a, &format!(":{port}"), window),
        })
        .collect()
}

/// The whole `/api/targets` document.
pub fn document(analysis: &Analysis, realtime_offset: f64) -> serde_json::Value {
    serde_json::json!({
        "targets": targets(analysis, realtime_offset),
        "inbound": inbound(analysis, realtime_offset),
        "ports": ports(analysis),
    })
}
