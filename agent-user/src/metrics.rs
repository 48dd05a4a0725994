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
pub const RESETS_RECEIVED: &str = "refusal_resets_received_total";
pub const RESETS_SENT: &str = "refusal_resets_sent_total";
pub const INBOUND_REFUSED: &str = "refusal_inbound_refused_total";

/// What the agent knows about itself, rendered as `refusal_agent_*` metrics.
#[derive(Clone, Debug)]
pub struct AgentInfo {
    pub version: &'static str,
    pub kernel: String,
    pub hooks: Vec<HookReport>,
}

pub type Samples = BTreeMap<Vec<String>, f64>;

/// One metric family from label values in `label_names` order; gauges unless `counter`.
pub fn family(name: &str, help: &str, kind: MetricType, label_names: &[&str], samples: Samples) -> MetricFamily {
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
            if kind == MetricType::COUNTER {
                let mut c = Counter::default();
                c.set_value(v);
                m.set_counter(c);
            } else {
                let mut g = Gauge::default();
                g.set_value(v);
                m.set_gauge(g);
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

/// Adds `count` under `labels`, or under `labels` with the `fold` positions set to `other` once
/// `metric` holds `max_series` label sets.
fn add(
    samples: &mut Samples,
    series: &mut SeriesCap,
    metric: &'static str,
    mut labels: Vec<String>,
    fold: &[usize],
    count: u64,
) {
    if !series.admit(metric, &labels) {
        for &i in fold {
            labels[i] = OTHER.into();
        }
    }
    *samples.entry(labels).or_default() += count as f64;
}

fn other() -> String {
    OTHER.into()
}

pub fn render(snap: &Snapshot, series: &mut SeriesCap, info: &AgentInfo) -> Vec<MetricFamily> {
    let mut failures = Samples::new();
    for (f, errno) in snap.failures() {
        let labels = vec![
            f.workload.clone(),
            f.comm.clone(),
            f.proto.into(),
            f.dst_addr.clone(),
            f.dst_port.to_string(),
            errno.into(),
        ];
        add(&mut failures, series, CONNECT_FAILURES, labels, &[3, 4], f.count);
    }
    for ((proto, errno), count) in &snap.overflow.failures {
        *failures
            .entry(vec![other(), other(), (*proto).into(), other(), other(), errno.clone()])
            .or_default() += *count as f64;
    }

    let mut received = Samples::new();
    for r in &snap.resets_received {
        let labels = vec![
            r.workload.clone(),
            r.comm.clone(),
            r.dst_addr.clone(),
            r.dst_port.to_string(),
            r.state.into(),
        ];
        add(&mut received, series, RESETS_RECEIVED, labels, &[2, 3], r.count);
    }
    for (state, count) in &snap.overflow.resets_received {
        *received
            .entry(vec![other(), other(), other(), other(), (*state).into()])
            .or_default() += *count as f64;
    }

    let mut sent = Samples::new();
    for r in &snap.resets_sent {
        add(
            &mut sent,
            series,
            RESETS_SENT,
            vec![r.workload.clone(), r.comm.clone(), r.reason.clone()],
            &[0, 1],
            r.count,
        );
    }
    for (reason, count) in &snap.overflow.resets_sent {
        *sent.entry(vec![other(), other(), reason.clone()]).or_default() += *count as f64;
    }

    let mut inbound = Samples::new();
    for i in &snap.inbound {
        add(
            &mut inbound,
            series,
            INBOUND_REFUSED,
            vec![i.local_addr.clone(), i.local_port.to_string()],
            // Both: a flood of local addresses must not grow one series per address.
            &[0, 1],
            i.count,
        );
    }
    if snap.overflow.inbound > 0 {
        *inbound.entry(vec![other(), other()]).or_default() += snap.overflow.inbound as f64;
    }

    let mut attached = Samples::new();
    for hook in HOOKS {
        let used = info.hooks.iter().find(|h| h.hook == hook.name).and_then(|h| h.mode);
        for (mode, _) in hook.chain {
            // A chain may list a mode twice (inbound: tcp_send_reset, then kfree_skb).
            let v = attached.entry(vec![hook.name.into(), mode.name().into()]).or_default();
            *v = v.max(f64::from(u8::from(used == Some(*mode))));
        }
    }
    let drops: Samples = snap
        .drops
        .iter()
        .map(|(w, n)| (vec![w.to_string()], *n as f64))
        .collect();
    let overflow: Samples = [CONNECT_FAILURES, RESETS_RECEIVED, RESETS_SENT, INBOUND_REFUSED]
        .into_iter()
        .map(|m| (m, 0))
        .chain(series.overflow())
        .map(|(m, n)| (vec![m.to_string()], n as f64))
        .collect();

    let run_seconds: Samples = snap
        .bpf_stats
        .iter()
        .map(|(p, ns, _)| (vec![p.clone()], *ns as f64 / 1e9))
        .collect();
    let runs: Samples = snap
        .bpf_stats
        .iter()
        .map(|(p, _, n)| (vec![p.clone()], *n as f64))
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
            RESETS_RECEIVED,
            "RSTs received, by remote end and the TCP state the RST hit.",
            MetricType::COUNTER,
            &["workload", "comm", "dst_addr", "dst_port", "state"],
            received,
        ),
        family(
            RESETS_SENT,
            "RSTs this host's sockets sent, by sk_rst_reason.",
            MetricType::COUNTER,
            &["workload", "comm", "reason"],
            sent,
        ),
        family(
            INBOUND_REFUSED,
            "Inbound connection attempts this host refused (RST, no socket), by local address and port.",
            MetricType::COUNTER,
            &["local_addr", "local_port"],
            inbound,
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
            "refusal_agent_bpf_run_seconds_total",
            "Kernel time spent in each of the agent's programs (while kernel.bpf_stats_enabled=1).",
            MetricType::COUNTER,
            &["program"],
            run_seconds,
        ),
        family(
            "refusal_agent_bpf_runs_total",
            "Runs of each of the agent's programs (while kernel.bpf_stats_enabled=1).",
            MetricType::COUNTER,
            &["program"],
            runs,
        ),
        family(
            "refusal_agent_http_rejected_connections_total",
            "HTTP connections closed at once because the connection cap was reached.",
            MetricType::COUNTER,
            &[],
            Samples::from([(vec![], crate::http::rejected_connections() as f64)]),
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

/// Collects and encodes one scrape, then gives the transient memory back to the system.
pub fn scrape(shared: Arc<Shared>) -> Result<String, prometheus::Error> {
    let families = Exporter(shared).collect();
    let text = encode(&families);
    drop(families);
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe { libc::malloc_trim(0) };
    text
}

/// Collects from the kernel maps on every scrape.
pub struct Exporter(pub Arc<Shared>);

impl Collector for Exporter {
    fn desc(&self) -> Vec<&Desc> {
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        match self.0.snapshot() {
            Ok(snap) => {
                let mut series = self.0.series();
                let mut families = render(&snap, &mut series, &self.0.info);
                families.extend(self.0.analysis().families(&mut series));
                families
            }
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
    use crate::{
        collector::{Outcome, Overflow},
        config::AttachMode,
    };

    fn failure(addr: &str, port: u16, count: u64) -> Outcome {
        Outcome {
            cgroup_id: 1,
            workload: "/".into(),
            comm: "curl".into(),
            proto: "tcp",
            dst_addr: addr.into(),
            dst_port: port,
            errno: Some("ECONNREFUSED".into()),
            count,
            last_ns: 0,
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
        let success = Outcome {
            errno: None,
            ..failure("127.0.0.1", 9, 3)
        };
        let snap = Snapshot {
            outcomes: vec![failure("127.0.0.1", 9, 500), success],
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
        assert!(text.contains("refusal_agent_probe_attached{hook=\"connect\",mode=\"fentry\"} 0\n"));
        assert!(text.contains("refusal_agent_build_info{version=\"0.1.0\",kernel=\"6.18.0\"} 1\n"));
        // Successes feed verdicts only; the failure counter holds exactly the failures.
        assert_eq!(text.matches("refusal_connect_failures_total{").count(), 1, "{text}");
    }

    #[test]
    fn renders_resets_and_inbound_and_their_overflow() {
        let snap = Snapshot {
            resets_received: vec![crate::collector::ResetReceived {
                workload: "/".into(),
                comm: "unknown".into(),
                dst_addr: "::1".into(),
                dst_port: 80,
                state: "established",
                count: 2,
            }],
            resets_sent: vec![crate::collector::ResetSent {
                workload: "/".into(),
                comm: "srv".into(),
                reason: "tcp_abort_on_linger".into(),
                count: 4,
            }],
            inbound: vec![crate::collector::Inbound {
                local_addr: "10.0.0.1".into(),
                local_port: 8080,
                count: 9,
            }],
            overflow: Overflow {
                inbound: 5,
                ..Default::default()
            },
            ..Default::default()
        };
        let text = encode(&render(&snap, &mut SeriesCap::new(10), &info())).unwrap();
        for line in [
            "refusal_resets_received_total{workload=\"/\",comm=\"unknown\",dst_addr=\"::1\",dst_port=\"80\",state=\"established\"} 2\n",
            "refusal_resets_sent_total{workload=\"/\",comm=\"srv\",reason=\"tcp_abort_on_linger\"} 4\n",
            "refusal_inbound_refused_total{local_addr=\"10.0.0.1\",local_port=\"8080\"} 9\n",
            "refusal_inbound_refused_total{local_addr=\"other\",local_port=\"other\"} 5\n",
            // inbound lists tp_btf twice (tcp_send_reset, kfree_skb): one series, not attached here.
            "refusal_agent_probe_attached{hook=\"inbound\",mode=\"tp_btf\"} 0\n",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }

    #[test]
    fn folding_keeps_totals_exact() {
        let snap = Snapshot {
            outcomes: (0..5).map(|i| failure(&format!("10.0.0.{i}"), 80, 10 + i)).collect(),
            overflow: Overflow {
                failures: [(("tcp", "ECONNREFUSED".to_string()), 7)].into_iter().collect(),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut cap = SeriesCap::new(2);
        let fams = render(&snap, &mut cap, &info());
        let failures = &fams[0];
        // 2 admitted, the 3 folded ones under dst_addr="other", and the kernel's overflow slot.
        assert_eq!(failures.get_metric().len(), 4);
        let total: f64 = failures.get_metric().iter().map(|m| m.get_counter().get_value()).sum();
        assert_eq!(total, (10 + 11 + 12 + 13 + 14 + 7) as f64);
        let text = encode(&fams).unwrap();
        assert!(
            text.contains("refusal_agent_series_overflow_total{metric=\"refusal_connect_failures_total\"} 3\n"),
            "{text}"
        );
    }
}
