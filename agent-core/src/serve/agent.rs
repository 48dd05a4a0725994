//! The agent's own families (`refusal_agent_*`): what it is, what attached, what it had to give
//! up.
use std::collections::BTreeMap;

use crate::{
    collect::snapshot::Snapshot,
    kernel::hooks::{HOOKS, HookReport},
    serve::{exposition::Text, families as f, series::SeriesCap},
};

/// What the agent knows about itself.
#[derive(Clone, Debug)]
pub struct AgentInfo {
    pub version: &'static str,
    /// The git commit it was built from (`unknown` outside a checkout).
    pub revision: &'static str,
    pub kernel: String,
    pub hooks: Vec<HookReport>,
}

/// What the agent gave up, refused or failed beyond the kernel's drop points.
#[derive(Clone, Copy, Debug, Default)]
pub struct UserDrops<'a> {
    /// Drop points of the analysis (`where`, count).
    pub analysis: &'a [(&'static str, u64)],
    /// The HTTP server's rejected connections.
    pub http_rejected: u64,
    /// Collections of the kernel's maps that failed, for the tick and for scrapes.
    pub collections_failed: [u64; 2],
}

/// Writes the `refusal_agent_*` metrics. Last in a scrape: the overflow counts include what the
/// other families folded in it.
pub fn render(snap: &Snapshot, series: &SeriesCap, info: &AgentInfo, drops: UserDrops<'_>, out: &mut Text) {
    f::BUILD_INFO.open(out);
    out.sample(f::BUILD_INFO.name)
        .label("version", info.version)
        .label("revision", info.revision)
        .label("kernel", &info.kernel)
        .value(1.0);

    let mut attached: BTreeMap<_, bool> = BTreeMap::new();
    // An opt-in hook left off has no report, and no series: it is not missing.
    for hook in HOOKS {
        let Some(report) = info.hooks.iter().find(|h| h.hook == hook.name) else {
            continue;
        };
        let used = report.mode;
        for (mode, _) in hook.chain {
            // A chain may list a mode twice (inbound: tcp_send_reset, then kfree_skb).
            let v = attached.entry((hook.name, mode.name())).or_default();
            *v |= used == Some(*mode);
        }
    }
    f::PROBE_ATTACHED.open(out);
    for ((hook, mode), used) in attached {
        out.sample(f::PROBE_ATTACHED.name)
            .label("hook", hook)
            .label("mode", mode)
            .count(u64::from(used));
    }

    f::EVENTS_DROPPED.open(out);
    for (w, n) in snap.drops.iter().chain(drops.analysis) {
        out.sample(f::EVENTS_DROPPED.name).label("where", w).count(*n);
    }

    let mut stats = snap.bpf_stats.clone();
    stats.sort();
    f::BPF_RUN_SECONDS.open(out);
    for (program, ns, _) in &stats {
        out.sample(f::BPF_RUN_SECONDS.name)
            .label("program", program)
            .value(*ns as f64 / 1e9);
    }
    f::BPF_RUNS.open(out);
    for (program, _, runs) in &stats {
        out.sample(f::BPF_RUNS.name).label("program", program).count(*runs);
    }

    let mut misses = snap.recursion_misses.clone();
    misses.sort();
    f::BPF_RECURSION_MISSES.open(out);
    for (program, n) in &misses {
        out.sample(f::BPF_RECURSION_MISSES.name)
            .label("program", program)
            .count(*n);
    }

    f::HTTP_REJECTED.open(out);
    out.sample(f::HTTP_REJECTED.name).count(drops.http_rejected);

    f::COLLECTIONS_FAILED.open(out);
    for (during, n) in ["tick", "scrape"].into_iter().zip(drops.collections_failed) {
        out.sample(f::COLLECTIONS_FAILED.name).label("during", during).count(n);
    }

    f::SERIES_OVERFLOW.open(out);
    let mut overflow: Vec<_> = series.overflow().collect();
    overflow.sort();
    for (metric, n) in overflow {
        out.sample(f::SERIES_OVERFLOW.name).label("metric", metric).count(n);
    }
}
