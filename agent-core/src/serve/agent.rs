//! The agent's own families (`refusal_agent_*`): what it is, what attached, what it had to give
//! up, how long scrapes take. A few dozen series, written through the `prometheus` crate's
//! registry, which the daemon shares with the crate's process collector; the families with a
//! series per target stay on the direct writer ([`crate::serve::exposition`]).
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
    core::{Collector, Desc},
    proto,
};

use crate::{
    collect::snapshot::Snapshot,
    kernel::hooks::{HOOKS, HookReport},
    serve::{
        exposition::Kind,
        families::{self as f, Family},
        series::SeriesCap,
    },
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

/// Buckets of `refusal_agent_scrape_duration_seconds`: dense over the 1–50 ms a scrape takes
/// up to 10,000 series per family, 50 ms (the target) among them, and on to the seconds of a
/// scrape that waited.
pub const SCRAPE_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0];

/// What a collection was for, in the order of [`AgentMetrics::collection_failed`]'s label.
#[derive(Clone, Copy, Debug)]
pub enum During {
    Tick,
    Scrape,
}

/// The counters a scrape reads beyond the families it writes directly: the drop points (the
/// kernel's, from the snapshot, and the analysis'), the programs' run time, and what the series
/// caps folded (after the direct families went through them).
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub dropped: Vec<(&'static str, u64)>,
    /// Program, run time in ns, runs (present while `kernel.bpf_stats_enabled=1`).
    pub bpf: Vec<(String, u64, u64)>,
    /// Program, runs the kernel skipped (nested in a run on the same CPU).
    pub recursion_misses: Vec<(String, u64)>,
    pub overflow: Vec<(&'static str, u64)>,
}

impl Counters {
    pub fn new(snap: &Snapshot, analysis_drops: &[(&'static str, u64)], series: &SeriesCap) -> Self {
        Self {
            dropped: snap.drops.iter().chain(analysis_drops).copied().collect(),
            bpf: snap.bpf_stats.clone(),
            recursion_misses: snap.recursion_misses.clone(),
            overflow: series.overflow().collect(),
        }
    }
}

/// The agent's own families in one registry. The constant ones are set when it is made, the
/// daemon's counters are the crate's, and [`Counters`] reach it through a custom collector that
/// exports the last ones [`AgentMetrics::encode`] was given.
pub struct AgentMetrics {
    registry: Registry,
    counters: Arc<Mutex<Counters>>,
    http_rejected: IntCounter,
    collections_failed: IntCounterVec,
    scrape_duration: Histogram,
}

fn opts(family: &Family) -> Opts {
    Opts::new(family.name, family.help)
}

impl AgentMetrics {
    pub fn new(info: &AgentInfo) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();

        let build_info = IntGaugeVec::new(opts(&f::BUILD_INFO), f::BUILD_INFO.labels)?;
        build_info
            .with_label_values(&[info.version, info.revision, &info.kernel])
            .set(1);
        registry.register(Box::new(build_info))?;

        let probe_attached = IntGaugeVec::new(opts(&f::PROBE_ATTACHED), f::PROBE_ATTACHED.labels)?;
        for ((hook, mode), used) in attached(&info.hooks) {
            probe_attached.with_label_values(&[hook, mode]).set(i64::from(used));
        }
        registry.register(Box::new(probe_attached))?;

        let http_rejected = IntCounter::with_opts(opts(&f::HTTP_REJECTED))?;
        registry.register(Box::new(http_rejected.clone()))?;

        let collections_failed = IntCounterVec::new(opts(&f::COLLECTIONS_FAILED), f::COLLECTIONS_FAILED.labels)?;
        // Both from the start, at 0: a rate needs the series before the first failure.
        for during in ["tick", "scrape"] {
            collections_failed.with_label_values(&[during]);
        }
        registry.register(Box::new(collections_failed.clone()))?;

        let scrape_duration = Histogram::with_opts(
            HistogramOpts::new(f::SCRAPE_DURATION.name, f::SCRAPE_DURATION.help).buckets(SCRAPE_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(scrape_duration.clone()))?;

        let counters = Arc::new(Mutex::new(Counters::default()));
        registry.register(Box::new(CountersCollector::new(counters.clone())?))?;
        Ok(Self {
            registry,
            counters,
            http_rejected,
            collections_failed,
            scrape_duration,
        })
    }

    /// Adds another collector's families (the daemon's process collector).
    pub fn register(&self, collector: Box<dyn Collector>) -> Result<(), prometheus::Error> {
        self.registry.register(collector)
    }

    /// The HTTP server's count of connections it closed at once.
    pub fn http_rejected(&self) -> IntCounter {
        self.http_rejected.clone()
    }

    pub fn collection_failed(&self, during: During) {
        let label = match during {
            During::Tick => "tick",
            During::Scrape => "scrape",
        };
        self.collections_failed.with_label_values(&[label]).inc();
    }

    /// Times a scrape: observed when dropped.
    pub fn scrape_timer(&self) -> prometheus::HistogramTimer {
        self.scrape_duration.start_timer()
    }

    /// Appends every family of the registry to `out`, with `counters` as this scrape's.
    /// Scrapes are written one at a time (the HTTP server coalesces them), so the counters
    /// gathered are the ones given.
    pub fn encode(&self, counters: Counters, out: &mut String) -> Result<(), prometheus::Error> {
        *self.counters.lock().unwrap_or_else(|p| p.into_inner()) = counters;
        TextEncoder::new().encode_utf8(&self.registry.gather(), out)
    }
}

/// Per hook and mode of its chain, whether the hook uses that mode. An opt-in hook left off has
/// no report, and no series: it is not missing.
fn attached(reports: &[HookReport]) -> BTreeMap<(&'static str, &'static str), bool> {
    let mut attached: BTreeMap<_, bool> = BTreeMap::new();
    for hook in HOOKS {
        let Some(report) = reports.iter().find(|h| h.hook == hook.name) else {
            continue;
        };
        for (mode, _) in hook.chain {
            // A chain may list a mode twice (inbound: tcp_send_reset, then kfree_skb).
            *attached.entry((hook.name, mode.name())).or_default() |= report.mode == Some(*mode);
        }
    }
    attached
}

/// The custom collector of [`Counters`]: values the kernel and the scrape counted, exported as
/// they were read rather than counted again here.
struct CountersCollector {
    counters: Arc<Mutex<Counters>>,
    descs: Vec<Desc>,
}

const COUNTER_FAMILIES: [&Family; 5] = [
    &f::EVENTS_DROPPED,
    &f::BPF_RUN_SECONDS,
    &f::BPF_RUNS,
    &f::BPF_RECURSION_MISSES,
    &f::SERIES_OVERFLOW,
];

impl CountersCollector {
    fn new(counters: Arc<Mutex<Counters>>) -> Result<Self, prometheus::Error> {
        let descs = COUNTER_FAMILIES
            .iter()
            .map(|family| {
                let labels = family.labels.iter().map(|l| l.to_string()).collect();
                Desc::new(family.name.into(), family.help.into(), labels, Default::default())
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { counters, descs })
    }
}

/// A counter family of `rows`: a label value each and the value.
fn counter_family<'a>(family: &Family, rows: impl IntoIterator<Item = (&'a str, f64)>) -> proto::MetricFamily {
    debug_assert!(family.kind == Kind::Counter && family.labels.len() == 1);
    let mut mf = proto::MetricFamily::default();
    mf.set_name(family.name.into());
    mf.set_help(family.help.into());
    mf.set_field_type(proto::MetricType::COUNTER);
    let metrics = rows
        .into_iter()
        .map(|(label, value)| {
            let mut pair = proto::LabelPair::default();
            pair.set_name(family.labels[0].into());
            pair.set_value(label.into());
            let mut counter = proto::Counter::default();
            counter.set_value(value);
            let mut m = proto::Metric::from_label(vec![pair]);
            m.set_counter(counter);
            m
        })
        .collect();
    mf.set_metric(metrics);
    mf
}

impl Collector for CountersCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        // The registry leaves out a family with no rows (no bpf stats: none written, not empty).
        vec![
            counter_family(&f::EVENTS_DROPPED, c.dropped.iter().map(|(w, n)| (*w, *n as f64))),
            counter_family(
                &f::BPF_RUN_SECONDS,
                c.bpf.iter().map(|(p, ns, _)| (p.as_str(), *ns as f64 / 1e9)),
            ),
            counter_family(
                &f::BPF_RUNS,
                c.bpf.iter().map(|(p, _, runs)| (p.as_str(), *runs as f64)),
            ),
            counter_family(
                &f::BPF_RECURSION_MISSES,
                c.recursion_misses.iter().map(|(p, n)| (p.as_str(), *n as f64)),
            ),
            counter_family(&f::SERIES_OVERFLOW, c.overflow.iter().map(|(m, n)| (*m, *n as f64))),
        ]
    }
}
