//! `/api/targets`: each target with its state, counts, times, diagnosis and a sentence a person
//! can read, and the recent inbound refusals. [`TargetView`] is what the daemon serves;
//! [`Target`] is what `refusal-agent status` reads back.
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::analyse::{
    analysis::Analysis,
    verdict::{Outcome, State},
};

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

/// A target as `status` reads it back from `/api/targets`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Target {
    pub workload: String,
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

/// One entry per target. `realtime_offset` turns monotonic seconds into Unix time.
pub fn targets(analysis: &Analysis, realtime_offset: f64) -> Vec<TargetView> {
    let unix = |d: Option<Duration>| d.map(|d| d.as_secs_f64() + realtime_offset);
    analysis
        .targets()
        .map(|(id, t)| {
            let (diagnosis, explanation) = analysis.explain(id);
            TargetView {
                workload: id.workload.to_string(),
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
                open_episode: t.open.as_ref().map(|e| EpisodeView {
                    started: e.started.as_secs_f64() + realtime_offset,
                    refused: e.refused,
                }),
                recent_outcomes: t.history.iter().filter_map(|e| e.outcome).collect(),
                diagnosis,
                explanation,
            }
        })
        .collect()
}

/// Recent inbound refusals with their diagnosis: `unknown` for all of them while the listeners
/// cannot be listed.
pub fn inbound(analysis: &Analysis) -> Vec<InboundView> {
    let view = |local: SocketAddr, diagnosis, explanation| InboundView {
        local_addr: local.ip().to_string(),
        local_port: local.port(),
        refused_total: analysis.inbound_refused(local),
        diagnosis,
        explanation,
    };
    let Some(listeners) = analysis.listeners() else {
        let why = "this host's listening sockets could not be listed (sock_diag), so the refusal is not diagnosed";
        return (analysis.recent_inbound().into_iter())
            .map(|l| view(l, "unknown", why.to_string()))
            .collect();
    };
    let mut diagnosed: Vec<_> = analysis.diagnoses().collect();
    diagnosed.sort();
    diagnosed
        .into_iter()
        .map(|(local, d)| view(local, d.name(), d.explain(local, listeners)))
        .collect()
}

/// The whole `/api/targets` document.
pub fn document(analysis: &Analysis, realtime_offset: f64) -> serde_json::Value {
    serde_json::json!({ "targets": targets(analysis, realtime_offset), "inbound": inbound(analysis) })
}
