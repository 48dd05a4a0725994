//! `/api/targets`: failures grouped per target, for people and `refusal-agent status`.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{collector::Snapshot, daemon::Shared};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub workload: String,
    pub comm: String,
    pub proto: String,
    pub dst_addr: String,
    pub dst_port: u16,
    /// Failed connects by symbolic errno.
    pub counts: BTreeMap<String, u64>,
    pub total: u64,
}

pub fn targets(snap: &Snapshot) -> Vec<Target> {
    let mut by_target: BTreeMap<(String, String, String, String, u16), Target> = BTreeMap::new();
    for (f, errno) in snap.failures() {
        let key = (
            f.workload.clone(),
            f.comm.clone(),
            f.proto.to_string(),
            f.dst_addr.clone(),
            f.dst_port,
        );
        let t = by_target.entry(key).or_insert_with(|| Target {
            workload: f.workload.clone(),
            comm: f.comm.clone(),
            proto: f.proto.to_string(),
            dst_addr: f.dst_addr.clone(),
            dst_port: f.dst_port,
            ..Target::default()
        });
        *t.counts.entry(errno.to_string()).or_default() += f.count;
        t.total += f.count;
    }
    by_target.into_values().collect()
}

pub fn targets_json(shared: &Shared) -> Result<String, crate::collector::CollectError> {
    let snap = shared.snapshot()?;
    Ok(serde_json::to_string_pretty(&serde_json::json!({ "targets": targets(&snap) })).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::Outcome;

    #[test]
    fn groups_errnos_per_target() {
        let f = |errno: &str, count| Outcome {
            cgroup_id: 1,
            workload: "/".into(),
            comm: "curl".into(),
            proto: "tcp",
            dst_addr: "10.0.0.7".into(),
            dst_port: 8080,
            errno: Some(errno.into()),
            count,
            last_ns: 0,
        };
        let snap = Snapshot {
            outcomes: vec![f("ECONNREFUSED", 3), f("ETIMEDOUT", 2)],
            ..Default::default()
        };
        let t = targets(&snap);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].total, 5);
        assert_eq!(t[0].counts["ECONNREFUSED"], 3);
        assert_eq!(t[0].counts["ETIMEDOUT"], 2);
    }
}
