//! Prometheus exposition. [`render`] turns a collected [`Snapshot`] into metric families (pure,
//! tested without a kernel); [`Exporter`] is the `prometheus` Collector that collects from the
//! kernel maps at scrape time.
use std::{collections::BTreeMap, sync::Arc};

use prometheus::{
    Encoder, TextEncoder,
    core::{Collector, Desc},
    proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType},
};

use crate::{
    collector::Snapshot,
    daemon::Shared,
    loader::{HOOKS, HookReport},
    series::{OTHER, SeriesCap},
};

pub const CONNECT_FAILURES: &str = "refusal_connect_failures_total";

/// What the agent knows about itself, rendered as `refusal_agent_*` metrics.
#[derive(Clone, Debug)]
pub struct AgentInfo {
    pub version: &'static str,
    pub kernel: String,
    pub hooks: Vec<HookReport>,
}

type Samples = BTreeMap<Vec<String>, f64>;

fn family(
    name: &str,
    help: &str,
    kind: MetricType,
    label_names: &[&str],
    samples: Samples,
) -> MetricFamily {
    let metrics = samples
        .into_iter()
        .map(|(values, v)| {
            let mut m = Metric::default();
            m.set_label(
                label_names
                    .iter()
                    .zip(values)
                    .map(|(n, val)| {
                        let mut l = LabelPair::default();
                        l.set_name((*n).to_string());
                        l.set_value(val);
                        l
                    })
                    .collect(),
            );
            match kind {
                MetricType::COUNTER => {
                    let mut c = Counter::default();
                    c.set_value(v);
                    m.set_counter(c);
                }
                _ => {
                    let mut g = Gauge::default();
                    g.set_value(v);
                    m.set_gauge(g);
                }
            }
            m
        })
        .collect();
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

pub fn render(snap: &Snapshot, series: &mut SeriesCap, info: &AgentInfo) -> Vec<MetricFamily> {
    let mut failures = Samples::new();
    for f in &snap.failures {
        let mut labels = vec![
            f.workload.clone(),
            f.comm.clone(),
            f.proto.to_string(),
            f.dst_addr.clone(),
            f.dst_port.to_string(),
            f.errno.clone(),
        ];
        if !series.admit(CONNECT_FAILURES, &labels) {
            labels[3] = OTHER.into();
            labels[4] = OTHER.into();
        }
        *failures.entry(labels).or_default() += f.count as f64;
    }
    for (proto, errno, count) in &snap.overflow {
        let labels = vec![
            OTHER.into(),
            OTHER.into(),
            proto.to_string(),
            OTHER.into(),
            OTHER.into(),
            errno.clone(),
        ];
        *failures.entry(labels).or_default() += *count as f64;
    }

    let mut attached = Samples::new();
    for hook in HOOKS {
        let used = info
            .hooks
            .iter()
            .find(|h| h.hook == hook.name)
            .and_then(|h| h.mode);
        for (mode, _) in hook.chain {
            attached.insert(
                vec![hook.name.to_string(), mode.name().to_string()],
                f64::from(u8::from(used == Some(*mode))),
            );
        }
    }
    let drops: Samples = snap
        .drops
        .iter()
        .map(|(w, n)| (vec![w.to_string()], *n as f64))
        .collect();
    let overflow: Samples = std::iter::once((CONNECT_FAILURES, 0))
        .chain(series.overflow())
        .map(|(m, n)| (vec![m.to_string()], n as f64))
        .collect();

    // An empty family is not valid exposition (the encoder refuses it).
    [
        family(
            CONNECT_FAILURES,
            "Outgoing connects that failed, by target and errno (counted in the kernel).",
            MetricType::COUNTER,
            &["workload", "comm", "proto", "dst_addr", "dst_port", "errno"],
            failures,
        ),
        family(
            "refusal_agent_build_info",
            "Agent version and the kernel it runs on.",
            MetricType::GAUGE,
            &["version", "kernel"],
            Samples::from([(vec![info.version.to_string(), info.kernel.clone()], 1.0)]),
        ),
        family(
            "refusal_agent_probe_attached",
            "1 for the attach mode each hook uses, 0 for the modes it could use.",
            MetricType::GAUGE,
            &["hook", "mode"],
            attached,
        ),
        family(
            "refusal_agent_events_dropped_total",
            "Events the agent had to give up, by where (counts themselves are kept).",
            MetricType::COUNTER,
            &["where"],
            drops,
        ),
        family(
            "refusal_agent_series_overflow_total",
            "Distinct label sets folded into \"other\" because a metric reached max_series.",
            MetricType::COUNTER,
            &["metric"],
            overflow,
        ),
    ]
    .into_iter()
    .filter(|f| !f.get_metric().is_empty())
    .collect()
}

pub fn encode(families: &[MetricFamily]) -> Result<String, prometheus::Error> {
    let mut out = Vec::new();
    TextEncoder::new().encode(families, &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

/// Collects from the kernel maps on every scrape.
pub struct Exporter(pub Arc<Shared>);

impl Collector for Exporter {
    fn desc(&self) -> Vec<&Desc> {
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        match self.0.snapshot() {
            Ok(snap) => render(
                &snap,
                &mut self.0.series.lock().unwrap_or_else(|p| p.into_inner()),
                &self.0.info,
            ),
            Err(e) => {
                tracing::warn!(error = %e, "collection failed");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{collector::Failure, config::AttachMode};

    fn failure(addr: &str, port: u16, count: u64) -> Failure {
        Failure {
            workload: "/".into(),
            comm: "curl".into(),
            proto: "tcp",
            dst_addr: addr.into(),
            dst_port: port,
            errno: "ECONNREFUSED".into(),
            count,
        }
    }

    fn info() -> AgentInfo {
        AgentInfo {
            version: "0.1.0",
            kernel: "6.18.0".into(),
            hooks: vec![
                HookReport {
                    hook: "state",
                    mode: Some(AttachMode::TpBtf),
                    refused: vec![],
                },
                HookReport {
                    hook: "connect",
                    mode: Some(AttachMode::TpBtf),
                    refused: vec![],
                },
            ],
        }
    }

    #[test]
    fn renders_failures_with_design_labels() {
        let snap = Snapshot {
            failures: vec![failure("127.0.0.1", 9, 500)],
            ..Default::default()
        };
        let text = encode(&render(&snap, &mut SeriesCap::new(10), &info())).unwrap();
        assert!(
            text.contains(
                "refusal_connect_failures_total{workload=\"/\",comm=\"curl\",proto=\"tcp\",dst_addr=\"127.0.0.1\",dst_port=\"9\",errno=\"ECONNREFUSED\"} 500\n"
            ),
            "{text}"
        );
        assert!(text.contains("refusal_agent_probe_attached{hook=\"state\",mode=\"tp_btf\"} 1\n"));
        assert!(
            text.contains("refusal_agent_probe_attached{hook=\"connect\",mode=\"fentry\"} 0\n")
        );
        assert!(text.contains("refusal_agent_build_info{version=\"0.1.0\",kernel=\"6.18.0\"} 1\n"));
    }

    #[test]
    fn folding_keeps_totals_exact() {
        let snap = Snapshot {
            failures: (0..5)
                .map(|i| failure(&format!("10.0.0.{i}"), 80, 10 + i))
                .collect(),
            overflow: vec![("tcp", "ECONNREFUSED".into(), 7)],
            ..Default::default()
        };
        let mut cap = SeriesCap::new(2);
        let fams = render(&snap, &mut cap, &info());
        let failures = &fams[0];
        // 2 admitted, the 3 folded ones under dst_addr="other", and the kernel's overflow slot.
        assert_eq!(failures.get_metric().len(), 4);
        let total: f64 = failures
            .get_metric()
            .iter()
            .map(|m| m.get_counter().get_value())
            .sum();
        assert_eq!(total, (10 + 11 + 12 + 13 + 14 + 7) as f64);
        let text = encode(&fams).unwrap();
        assert!(
            text.contains(
                "refusal_agent_series_overflow_total{metric=\"refusal_connect_failures_total\"} 3\n"
            ),
            "{text}"
        );
    }
}
