//! `/api/targets`: each target with its state, counts, times, diagnosis and a sentence a person
//! can read. The serialized form is [`crate::analysis::TargetView`]; [`Target`] is what
//! `refusal-agent status` reads back.
use std::collections::BTreeMap;

use serde::Deserialize;

use crate::daemon::Shared;

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

pub fn targets_json(shared: &Shared) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let offset = now.as_secs_f64() - crate::collector::monotonic_ns() as f64 / 1e9;
    let analysis = shared.analysis();
    let body = serde_json::json!({ "targets": analysis.targets(offset), "inbound": analysis.inbound() });
    serde_json::to_string_pretty(&body).unwrap_or_default()
}
