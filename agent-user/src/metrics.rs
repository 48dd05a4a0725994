//! Prometheus exposition. [`render`] writes a collected [`Snapshot`] (pure, tested without a
//! kernel); [`scrape`] collects from the kernel maps and writes everything, once per request.
use std::{
    collections::BTreeMap,
    hash::Hash,
    net::IpAddr,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use crate::{
    collector::{CollectError, Snapshot},
    daemon::Shared,
    exposition::{Kind, Sample, Text},
    labels::Label,
    loader::{HOOKS, HookReport},
    series::{OTHER, SeriesCap, Table, Tally},
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

/// A `refusal_connect_failures_total` label set; `None` address and port: folded into `other`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FailureSeries {
    pub workload: Label,
    pub comm: Label,
    pub proto: &'static str,
    pub dst_addr: Option<IpAddr>,
    pub dst_port: Option<u16>,
    pub errno: Label,
}

/// A `refusal_resets_received_total` label set.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReceivedSeries {
    pub workload: Label,
    pub comm: Label,
    pub dst_addr: Option<IpAddr>,
    pub dst_port: Option<u16>,
    pub state: &'static str,
}

/// A `refusal_resets_sent_total` label set; `None` workload and comm: folded into `other`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SentSeries {
    pub workload: Option<Label>,
    pub comm: Option<Label>,
    pub reason: Label,
}

impl FailureSeries {
    fn labels<'a>(&self, l: Sample<'a>) -> Sample<'a> {
        l.label("workload", &self.workload)
            .label("comm", &self.comm)
            .label("proto", self.proto)
            .or_other("dst_addr", self.dst_addr)
            .or_other("dst_port", self.dst_port)
            .label("errno", &self.errno)
    }
}

impl ReceivedSeries {
    fn labels<'a>(&self, l: Sample<'a>) -> Sample<'a> {
        l.label("workload", &self.workload)
            .label("comm", &self.comm)
            .or_other("dst_addr", self.dst_addr)
            .or_other("dst_port", self.dst_port)
            .label("state", self.state)
    }
}

impl SentSeries {
    fn labels<'a>(&self, l: Sample<'a>) -> Sample<'a> {
        l.label("workload", self.workload.as_deref().unwrap_or(OTHER))
            .label("comm", self.comm.as_deref().unwrap_or(OTHER))
            .label("reason", &self.reason)
    }
}

fn inbound_labels<'a>(local: &Option<(IpAddr, u16)>, l: Sample<'a>) -> Sample<'a> {
    l.or_other("local_addr", local.map(|k| k.0))
        .or_other("local_port", local.map(|k| k.1))
}

/// How one capped family writes a row's labels.
type Labels<S> = for<'a> fn(&S, Sample<'a>) -> Sample<'a>;

/// Writes one kernel-counted family: `rows` through the table's cap (a new label set past it
/// folds to `fold` of it), then the kernel's own overflow, which is outside the cap.
fn capped<S: Hash + Eq>(
    out: &mut Text,
    (name, help): (&str, &str),
    table: &mut Table<S>,
    labels: Labels<S>,
    fold: impl Fn(&S) -> S,
    rows: impl IntoIterator<Item = (S, u64)>,
    overflow: impl IntoIterator<Item = (S, u64)>,
) {
    let mut tally = Tally::default();
    for (s, n) in rows {
        tally.add(table.row(s, &fold, labels), n);
    }
    for (s, n) in overflow {
        tally.add(table.fixed(s, labels), n);
    }
    out.family(name, help, Kind::Counter);
    tally.write(out, name, table);
}

/// Writes the kernel-counted metrics of `snap`, folding label sets past the cap.
pub fn render(snap: &Snapshot, series: &mut SeriesCap, out: &mut Text) {
    let other = Label::from(OTHER);
    capped(
        out,
        (
            CONNECT_FAILURES,
            "Outgoing connects that failed, by target and errno (counted in the kernel).",
        ),
        &mut series.failures,
        FailureSeries::labels,
        |s| FailureSeries {
            dst_addr: None,
            dst_port: None,
            ..s.clone()
        },
        snap.failures().map(|(f, errno)| {
            let s = FailureSeries {
                workload: f.workload.clone(),
                comm: f.comm.clone(),
                proto: f.proto,
                dst_addr: Some(f.dst_addr),
                dst_port: Some(f.dst_port),
                errno: errno.clone(),
            };
            (s, f.count)
        }),
        snap.overflow.failures.iter().map(|((proto, errno), n)| {
            let s = FailureSeries {
                workload: other.clone(),
                comm: other.clone(),
                proto,
                dst_addr: None,
                dst_port: None,
                errno: errno.clone(),
            };
            (s, *n)
        }),
    );
    capped(
        out,
        (
            RESETS_RECEIVED,
            "RSTs received, by remote end and the TCP state the RST hit.",
        ),
        &mut series.resets_received,
        ReceivedSeries::labels,
        |s| ReceivedSeries {
            dst_addr: None,
            dst_port: None,
            ..s.clone()
        },
        snap.resets_received.iter().map(|r| {
            let s = ReceivedSeries {
                workload: r.workload.clone(),
                comm: r.comm.clone(),
                dst_addr: Some(r.dst_addr),
                dst_port: Some(r.dst_port),
                state: r.state,
            };
            (s, r.count)
        }),
        snap.overflow.resets_received.iter().map(|(state, n)| {
            let s = ReceivedSeries {
                workload: other.clone(),
                comm: other.clone(),
                dst_addr: None,
                dst_port: None,
                state,
            };
            (s, *n)
        }),
    );
    let sent = |workload, comm, reason: &Label| SentSeries {
        workload,
        comm,
        reason: reason.clone(),
    };
    capped(
        out,
        (RESETS_SENT, "RSTs this host's sockets sent, by sk_rst_reason."),
        &mut series.resets_sent,
        SentSeries::labels,
        |s| sent(None, None, &s.reason),
        snap.resets_sent.iter().map(|r| {
            let s = sent(Some(r.workload.clone()), Some(r.comm.clone()), &r.reason);
            (s, r.count)
        }),
        snap.overflow
            .resets_sent
            .iter()
            .map(|(reason, n)| (sent(None, None, reason), *n)),
    );
    // Both address and port fold: a flood of local addresses must not grow one series each.
    capped(
        out,
        (
            INBOUND_REFUSED,
            "Inbound connection attempts this host refused (RST, no socket), by local address and port.",
        ),
        &mut series.inbound,
        inbound_labels,
        |_| None,
        snap.inbound
            .iter()
            .map(|i| (Some((i.local_addr, i.local_port)), i.count)),
        (snap.overflow.inbound > 0).then_some((None, snap.overflow.inbound)),
    );
}

/// Writes the `refusal_agent_*` metrics. Last: the overflow counts include what the other
/// families folded in this scrape.
pub fn render_agent(snap: &Snapshot, series: &SeriesCap, info: &AgentInfo, out: &mut Text) {
    out.family(
        "refusal_agent_build_info",
        "Agent version and the kernel it runs on.",
        Kind::Gauge,
    );
    out.sample("refusal_agent_build_info")
        .label("version", info.version)
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
    out.family(
        "refusal_agent_probe_attached",
        "1 for the attach mode each hook uses, 0 for the modes it could use.",
        Kind::Gauge,
    );
    for ((hook, mode), used) in attached {
        out.sample("refusal_agent_probe_attached")
            .label("hook", hook)
            .label("mode", mode)
            .count(u64::from(used));
    }

    out.family(
        "refusal_agent_events_dropped_total",
        "Events the agent had to give up, by where (counts themselves are kept).",
        Kind::Counter,
    );
    for (w, n) in &snap.drops {
        out.sample("refusal_agent_events_dropped_total")
            .label("where", w)
            .count(*n);
    }

    let mut stats = snap.bpf_stats.clone();
    stats.sort();
    out.family(
        "refusal_agent_bpf_run_seconds_total",
        "Kernel time spent in each of the agent's programs (while kernel.bpf_stats_enabled=1).",
        Kind::Counter,
    );
    for (program, ns, _) in &stats {
        out.sample("refusal_agent_bpf_run_seconds_total")
            .label("program", program)
            .value(*ns as f64 / 1e9);
    }
    out.family(
        "refusal_agent_bpf_runs_total",
        "Runs of each of the agent's programs (while kernel.bpf_stats_enabled=1).",
        Kind::Counter,
    );
    for (program, _, runs) in &stats {
        out.sample("refusal_agent_bpf_runs_total")
            .label("program", program)
            .count(*runs);
    }

    out.family(
        "refusal_agent_http_rejected_connections_total",
        "HTTP connections closed at once because the connection cap was reached.",
        Kind::Counter,
    );
    out.sample("refusal_agent_http_rejected_connections_total")
        .count(crate::http::rejected_connections());

    out.family(
        "refusal_agent_series_overflow_total",
        "Distinct label sets folded into \"other\" because a metric reached max_series.",
        Kind::Counter,
    );
    let mut overflow: Vec<_> = series.overflow().collect();
    overflow.sort();
    for (metric, n) in overflow {
        out.sample("refusal_agent_series_overflow_total")
            .label("metric", metric)
            .count(n);
    }
}

/// Size of the last exposition: a new buffer is made this big from the start, instead of grown
/// (and copied) from empty.
static LAST_SIZE: AtomicUsize = AtomicUsize::new(0);
/// The buffer of the last exposition sent, back for the next one: megabytes at 10,000 series,
/// allocated and faulted in once rather than on every scrape.
static SPARE: Mutex<String> = Mutex::new(String::new());

/// A written exposition, handed to the HTTP layer without a copy. Its buffer returns to
/// [`SPARE`] once the last response sending it is done.
#[derive(Debug)]
pub struct Exposition(String);

impl AsRef<[u8]> for Exposition {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl Drop for Exposition {
    fn drop(&mut self) {
        let mut spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
        // Of two buffers (a scrape while another's answer was still being sent), keep the larger.
        if self.0.capacity() > spare.capacity() {
            std::mem::swap(&mut *spare, &mut self.0);
            spare.clear();
        }
    }
}

/// Collects from the kernel maps and writes the whole exposition.
pub fn scrape(shared: &Shared) -> Result<Exposition, CollectError> {
    let snap = shared.snapshot()?;
    let mut buffer = std::mem::take(&mut *SPARE.lock().unwrap_or_else(|p| p.into_inner()));
    let last = LAST_SIZE.load(Ordering::Relaxed);
    buffer.reserve(last + last / 16);
    let mut out = Text::new(buffer);
    let mut series = shared.series();
    render(&snap, &mut series, &mut out);
    shared.analysis().render(&mut series, &mut out);
    render_agent(&snap, &series, &shared.info, &mut out);
    let text = out.finish();
    LAST_SIZE.store(text.len(), Ordering::Relaxed);
    Ok(Exposition(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        collector::{Inbound, Outcome, Overflow, ResetReceived, ResetSent},
        config::AttachMode,
    };

    fn failure(addr: &str, port: u16, count: u64) -> Outcome {
        Outcome {
            cgroup_id: 1,
            workload: "/".into(),
            comm: "curl".into(),
            proto: "tcp",
            dst_addr: addr.parse().unwrap(),
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
                HookReport {
                    hook: "inbound",
                    mode: None,
                    refused: vec![(AttachMode::TpBtf, "no".into())],
                },
            ],
        }
    }

    fn text(snap: &Snapshot, series: &mut SeriesCap) -> String {
        let mut out = Text::default();
        render(snap, series, &mut out);
        render_agent(snap, series, &info(), &mut out);
        out.finish()
    }

    #[test]
    fn renders_exactly() {
        let snap = Snapshot {
            outcomes: vec![
                failure("10.0.0.7", 80, 3),
                // The same label set from another cgroup: one series, summed.
                Outcome {
                    cgroup_id: 2,
                    ..failure("10.0.0.7", 80, 2)
                },
                Outcome {
                    comm: "a\"b\\c\nd".into(),
                    ..failure("10.0.0.8", 443, 1)
                },
                // Successes feed verdicts only.
                Outcome {
                    errno: None,
                    ..failure("10.0.0.7", 80, 9)
                },
            ],
            resets_received: vec![ResetReceived {
                workload: "/".into(),
                comm: "unknown".into(),
                dst_addr: "::1".parse().unwrap(),
                dst_port: 80,
                state: "established",
                count: 2,
            }],
            resets_sent: vec![ResetSent {
                workload: "service:srv.service".into(),
                comm: "srv".into(),
                reason: "tcp_abort_on_linger".into(),
                count: 4,
            }],
            inbound: vec![Inbound {
                local_addr: "10.0.0.1".parse().unwrap(),
                local_port: 8080,
                count: 9,
            }],
            overflow: Overflow {
                inbound: 5,
                ..Default::default()
            },
            drops: vec![("owner_map_full", 0)],
            ..Default::default()
        };
        let expected = r#"# HELP refusal_connect_failures_total Outgoing connects that failed, by target and errno (counted in the kernel).
# TYPE refusal_connect_failures_total counter
refusal_connect_failures_total{workload="/",comm="curl",proto="tcp",dst_addr="10.0.0.7",dst_port="80",errno="ECONNREFUSED"} 5
refusal_connect_failures_total{workload="/",comm="a\"b\\c\nd",proto="tcp",dst_addr="10.0.0.8",dst_port="443",errno="ECONNREFUSED"} 1
# HELP refusal_resets_received_total RSTs received, by remote end and the TCP state the RST hit.
# TYPE refusal_resets_received_total counter
refusal_resets_received_total{workload="/",comm="unknown",dst_addr="::1",dst_port="80",state="established"} 2
# HELP refusal_resets_sent_total RSTs this host's sockets sent, by sk_rst_reason.
# TYPE refusal_resets_sent_total counter
refusal_resets_sent_total{workload="service:srv.service",comm="srv",reason="tcp_abort_on_linger"} 4
# HELP refusal_inbound_refused_total Inbound connection attempts this host refused (RST, no socket), by local address and port.
# TYPE refusal_inbound_refused_total counter
refusal_inbound_refused_total{local_addr="10.0.0.1",local_port="8080"} 9
refusal_inbound_refused_total{local_addr="other",local_port="other"} 5
# HELP refusal_agent_build_info Agent version and the kernel it runs on.
# TYPE refusal_agent_build_info gauge
refusal_agent_build_info{version="0.1.0",kernel="6.18.0"} 1
"#;
        let text = text(&snap, &mut SeriesCap::new(10));
        assert!(text.starts_with(expected), "{text}");
        for line in [
            "refusal_agent_probe_attached{hook=\"state\",mode=\"tp_btf\"} 1\n",
            "refusal_agent_probe_attached{hook=\"connect\",mode=\"fentry\"} 0\n",
            // inbound lists tp_btf twice (tcp_send_reset, kfree_skb): one series, not attached here.
            "refusal_agent_probe_attached{hook=\"inbound\",mode=\"tp_btf\"} 0\n",
            "refusal_agent_events_dropped_total{where=\"owner_map_full\"} 0\n",
            "refusal_agent_http_rejected_connections_total 0\n",
            "refusal_agent_series_overflow_total{metric=\"refusal_connect_failures_total\"} 0\n",
        ] {
            assert_eq!(text.matches(line).count(), 1, "{line}\n{text}");
        }
        // An opt-in hook left off (no report) is not missing: no series to alert on.
        assert!(!text.contains("hook=\"connect_sync\""), "{text}");
        // No bpf stats: those families are left out, not written empty.
        assert!(!text.contains("refusal_agent_bpf_runs_total"), "{text}");
    }

    #[test]
    fn folding_keeps_totals_exact() {
        let snap = Snapshot {
            outcomes: (0..5).map(|i| failure(&format!("10.0.0.{i}"), 80, 10 + i)).collect(),
            overflow: Overflow {
                failures: [(("tcp", Label::from("ECONNREFUSED")), 7)].into_iter().collect(),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut cap = SeriesCap::new(2);
        let text = text(&snap, &mut cap);
        let failures: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("refusal_connect_failures_total{"))
            .collect();
        // 2 admitted, the 3 folded ones under dst_addr="other", and the kernel's overflow slot.
        assert_eq!(
            failures,
            [
                "refusal_connect_failures_total{workload=\"/\",comm=\"curl\",proto=\"tcp\",dst_addr=\"10.0.0.0\",dst_port=\"80\",errno=\"ECONNREFUSED\"} 10",
                "refusal_connect_failures_total{workload=\"/\",comm=\"curl\",proto=\"tcp\",dst_addr=\"10.0.0.1\",dst_port=\"80\",errno=\"ECONNREFUSED\"} 11",
                "refusal_connect_failures_total{workload=\"/\",comm=\"curl\",proto=\"tcp\",dst_addr=\"other\",dst_port=\"other\",errno=\"ECONNREFUSED\"} 39",
                "refusal_connect_failures_total{workload=\"other\",comm=\"other\",proto=\"tcp\",dst_addr=\"other\",dst_port=\"other\",errno=\"ECONNREFUSED\"} 7",
            ]
        );
        assert!(
            text.contains("refusal_agent_series_overflow_total{metric=\"refusal_connect_failures_total\"} 3\n"),
            "{text}"
        );
        // The same label sets again: admitted ones stay admitted, folded ones are not counted twice.
        let again = super::tests::text(&snap, &mut cap);
        assert_eq!(again, text);
    }
}
