//! The answers: the Prometheus exposition of a snapshot and an analysis, and the
//! `/api/targets` views. [`families`] names every family once, and which of two writers writes
//! it: the families with a series per target or port go straight into one buffer
//! ([`exposition`], through the series caps), the agent's own through the `prometheus` crate's
//! registry ([`agent`]).
pub mod agent;
pub mod counts;
pub mod exposition;
pub mod families;
pub mod series;
pub mod verdicts;
pub mod views;

use crate::{analyse::analysis::Analysis, collect::snapshot::Snapshot};

/// Writes the directly written families of a scrape into `out`, the kernel-counted ones and
/// the verdicts, and returns the counters the agent's own families export (whose overflow
/// counts include what these folded in this scrape).
pub fn scrape(
    snap: &Snapshot,
    analysis: &Analysis,
    series: &mut series::SeriesCap,
    out: &mut exposition::Text,
) -> agent::Counters {
    counts::render(snap, series, out);
    verdicts::render(analysis, series, out);
    agent::Counters::new(snap, &analysis.drops(), series)
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, time::Duration};

    use super::{
        agent::{AgentInfo, AgentMetrics, Counters},
        exposition::Text,
        families::Writer,
        series::SeriesCap,
        *,
    };
    use crate::{
        analyse::verdict::State,
        collect::{
            labels::Label,
            listening::{Ending, ListenerEvent, Process, Seed},
            snapshot::{Inbound, Outcome, Outcome as Seen, Overflow, ResetReceived, ResetSent},
            workload::Workload,
        },
        config::{AttachMode, Thresholds},
        kernel::hooks::HookReport,
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
            revision: "1b92d99",
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

    /// The kernel-counted families of `snap`, then the agent's own with its counters.
    fn text(snap: &Snapshot, series: &mut SeriesCap) -> String {
        let mut out = Text::default();
        counts::render(snap, series, &mut out);
        let mut text = out.finish();
        let agent = AgentMetrics::new(&info()).unwrap();
        agent.encode(Counters::new(snap, &[], series), &mut text).unwrap();
        text
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
                netns: 0,
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
refusal_connect_failures_total{workload="/",namespace="",pod="",container="",comm="curl",proto="tcp",dst_addr="10.0.0.7",dst_port="80",errno="ECONNREFUSED"} 5
refusal_connect_failures_total{workload="/",namespace="",pod="",container="",comm="a\"b\\c\nd",proto="tcp",dst_addr="10.0.0.8",dst_port="443",errno="ECONNREFUSED"} 1
# HELP refusal_resets_received_total RSTs received, by remote end and the TCP state the RST hit.
# TYPE refusal_resets_received_total counter
refusal_resets_received_total{workload="/",namespace="",pod="",container="",comm="unknown",dst_addr="::1",dst_port="80",state="established"} 2
# HELP refusal_resets_sent_total RSTs this host's sockets sent, by sk_rst_reason.
# TYPE refusal_resets_sent_total counter
refusal_resets_sent_total{workload="service:srv.service",namespace="",pod="",container="",comm="srv",reason="tcp_abort_on_linger"} 4
# HELP refusal_inbound_refused_total Inbound connection attempts this host refused (RST, no socket), by local address and port.
# TYPE refusal_inbound_refused_total counter
refusal_inbound_refused_total{local_addr="10.0.0.1",local_port="8080"} 9
refusal_inbound_refused_total{local_addr="other",local_port="other"} 5
# HELP refusal_agent_build_info Agent version, the git revision it was built from, and the kernel it runs on.
# TYPE refusal_agent_build_info gauge
refusal_agent_build_info{kernel="6.18.0",revision="1b92d99",version="0.1.0"} 1
"#;
        let text = text(&snap, &mut SeriesCap::new(10));
        // No bpf stats: the registry's first family (by name) is left out, not written empty.
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
        assert!(!text.contains("refusal_agent_bpf_runs_total"), "{text}");
        // Both writers, one exposition.
        families::check(&text).unwrap();
    }

    #[test]
    fn folding_keeps_totals_exact() {
        let snap = Snapshot {
            outcomes: (0..5).map(|i| failure(&format!("10.0.0.{i}"), 80, 10 + i)).collect(),
            overflow: Overflow {
                failures: [(
                    (
                        Workload::from("other"),
                        Label::from("other"),
                        "tcp",
                        Label::from("ECONNREFUSED"),
                    ),
                    7,
                )]
                .into_iter()
                .collect(),
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
                "refusal_connect_failures_total{workload=\"/\",namespace=\"\",pod=\"\",container=\"\",comm=\"curl\",proto=\"tcp\",dst_addr=\"10.0.0.0\",dst_port=\"80\",errno=\"ECONNREFUSED\"} 10",
                "refusal_connect_failures_total{workload=\"/\",namespace=\"\",pod=\"\",container=\"\",comm=\"curl\",proto=\"tcp\",dst_addr=\"10.0.0.1\",dst_port=\"80\",errno=\"ECONNREFUSED\"} 11",
                "refusal_connect_failures_total{workload=\"/\",namespace=\"\",pod=\"\",container=\"\",comm=\"curl\",proto=\"tcp\",dst_addr=\"other\",dst_port=\"other\",errno=\"ECONNREFUSED\"} 39",
                "refusal_connect_failures_total{workload=\"other\",namespace=\"\",pod=\"\",container=\"\",comm=\"other\",proto=\"tcp\",dst_addr=\"other\",dst_port=\"other\",errno=\"ECONNREFUSED\"} 7",
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

    fn seen(addr: &str, errno: Option<&str>, count: u64, last_s: u64) -> Seen {
        Seen {
            cgroup_id: 1,
            workload: "/".into(),
            comm: "app".into(),
            proto: "tcp",
            dst_addr: addr.parse().unwrap(),
            dst_port: 8080,
            errno: errno.map(Into::into),
            count,
            last_ns: last_s * 1_000_000_000,
        }
    }

    fn snap_of(outcomes: Vec<Seen>) -> Snapshot {
        Snapshot {
            outcomes,
            ..Default::default()
        }
    }

    /// The own namespace listed at start, with nothing listening.
    fn seed() -> Seed {
        Seed::own_only(0, Ok(vec![]))
    }

    fn verdict_text(a: &Analysis, series: &mut SeriesCap) -> String {
        let mut out = Text::default();
        verdicts::render(a, series, &mut out);
        out.finish()
    }

    #[test]
    fn deltas_drive_episodes_watch_set_and_metrics() {
        let mut a = Analysis::new(Thresholds::default(), seed(), Duration::ZERO);
        let refused = |n, t| seen("10.0.0.7", Some("ECONNREFUSED"), n, t);
        assert_eq!(
            a.update(&snap_of(vec![refused(2, 10)]), Duration::from_secs(10)),
            BTreeSet::from([8080])
        );
        // Same cumulative count again: nothing new.
        a.update(&snap_of(vec![refused(2, 10)]), Duration::from_secs(11));
        let ok = seen("10.0.0.7", None, 1, 14);
        assert_eq!(
            a.update(&snap_of(vec![refused(5, 13), ok]), Duration::from_secs(14)),
            BTreeSet::new()
        );
        let t = &views::targets(&a, 0.0)[0];
        assert_eq!((t.state, t.refused_total, t.cold_starts), (State::Ok, 5, 1));
        assert_eq!(t.counts["ECONNREFUSED"], 5);
        let text = verdict_text(&a, &mut SeriesCap::new(100));
        assert!(text.contains("refusal_episodes_total{workload=\"/\",namespace=\"\",pod=\"\",container=\"\",comm=\"app\",dst_addr=\"10.0.0.7\",dst_port=\"8080\",outcome=\"cold_start\"} 1\n"), "{text}");
        assert!(
            text.contains("refusal_cold_start_duration_seconds_sum{workload=\"/\",namespace=\"\",pod=\"\",container=\"\",dst_port=\"8080\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("refusal_cold_start_duration_seconds_bucket{workload=\"/\",namespace=\"\",pod=\"\",container=\"\",dst_port=\"8080\",le=\"5\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn inbound_refusals_go_undiagnosed_while_listeners_cannot_be_listed() {
        let inbound = |port, count| Inbound {
            netns: 0,
            local_addr: "10.0.0.1".parse().unwrap(),
            local_port: port,
            count,
        };
        let snap = Snapshot {
            inbound: vec![inbound(7000, 3), inbound(7001, 1)],
            ..Snapshot::default()
        };
        let mut a = Analysis::new(
            Thresholds::default(),
            Seed::own_only(0, Err("sock_diag: EPERM".into())),
            Duration::ZERO,
        );
        a.update(&snap, Duration::from_secs(10));
        assert!(a.listing_due(Duration::from_secs(10)));
        a.listed(None, Duration::from_secs(10));
        let t = verdict_text(&a, &mut SeriesCap::new(100));
        assert!(!t.contains("refusal_inbound_diagnosis{"), "{t}");
        let views = views::inbound(&a, 0.0);
        let rows: Vec<_> = views
            .iter()
            .map(|v| (v.local_port, v.refused_total, v.diagnosis))
            .collect();
        assert_eq!(rows, [(7000, 3, "unknown"), (7001, 1, "unknown")]);
        // Once a listing works, the diagnosis comes back: nothing listens on either port.
        a.update(&snap, Duration::from_secs(12));
        assert!(a.listing_due(Duration::from_secs(12)));
        a.listed(Some(vec!["10.0.0.1:22".parse().unwrap()]), Duration::from_secs(12));
        let diagnoses: Vec<_> = views::inbound(&a, 0.0).iter().map(|v| v.diagnosis).collect();
        assert_eq!(diagnoses, ["not_listening", "not_listening"]);
        let t = verdict_text(&a, &mut SeriesCap::new(100));
        assert_eq!(t.matches("diagnosis=\"not_listening\"} 1").count(), 2, "{t}");
    }

    #[test]
    fn another_address_answering_is_a_stale_address() {
        let mut a = Analysis::new(Thresholds::default(), seed(), Duration::ZERO);
        let s = snap_of(vec![
            seen("10.0.0.7", Some("ECONNREFUSED"), 3, 10),
            seen("10.0.0.8", None, 4, 11),
        ]);
        a.update(&s, Duration::from_secs(12));
        let views = views::targets(&a, 0.0);
        let stale = views.iter().find(|t| t.dst_addr == "10.0.0.7").unwrap();
        assert_eq!(stale.diagnosis, Some("stale_address"));
        assert!(
            stale
                .explanation
                .ends_with("the same workload reaches port 8080 on 10.0.0.8: stale address"),
            "{}",
            stale.explanation
        );
        let text = verdict_text(&a, &mut SeriesCap::new(100));
        assert!(text.contains("refusal_target_state{workload=\"/\",namespace=\"\",pod=\"\",container=\"\",comm=\"app\",dst_addr=\"10.0.0.7\",dst_port=\"8080\",state=\"refusing\"} 1\n"), "{text}");
        assert!(!text.contains("state=\"persistent\""), "{text}");
    }

    #[test]
    fn targets_past_the_cap_fold_into_one_state_series() {
        let mut a = Analysis::new(Thresholds::default(), seed(), Duration::ZERO);
        let s = snap_of(
            (1..=4)
                .map(|i| seen(&format!("10.0.0.{i}"), Some("ECONNREFUSED"), 1, 10))
                .collect(),
        );
        a.update(&s, Duration::from_secs(10));
        let mut cap = SeriesCap::new(2);
        let text = verdict_text(&a, &mut cap);
        let states: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("refusal_target_state{"))
            .collect();
        assert_eq!(
            states,
            [
                "refusal_target_state{workload=\"/\",namespace=\"\",pod=\"\",container=\"\",comm=\"app\",dst_addr=\"10.0.0.1\",dst_port=\"8080\",state=\"refusing\"} 1",
                "refusal_target_state{workload=\"/\",namespace=\"\",pod=\"\",container=\"\",comm=\"app\",dst_addr=\"10.0.0.2\",dst_port=\"8080\",state=\"refusing\"} 1",
                "refusal_target_state{workload=\"/\",namespace=\"\",pod=\"\",container=\"\",comm=\"app\",dst_addr=\"other\",dst_port=\"other\",state=\"refusing\"} 1",
            ]
        );
        assert_eq!(cap.overflow().last(), Some(("refusal_target_state", 2)));
    }

    /// Every family a full scrape writes is in the table, with its type and exactly its labels.
    #[test]
    fn a_scrape_writes_the_families_of_the_table() {
        let mut a = Analysis::new(Thresholds::default(), seed(), Duration::ZERO);
        let refused = |n, t| seen("10.0.0.7", Some("ECONNREFUSED"), n, t);
        a.update(&snap_of(vec![refused(2, 10)]), Duration::from_secs(10));
        a.update(
            &snap_of(vec![refused(3, 11), seen("10.0.0.7", None, 1, 12)]),
            Duration::from_secs(12),
        );
        a.update(&snap_of(vec![refused(4, 13)]), Duration::from_secs(13));
        let snap = Snapshot {
            outcomes: vec![refused(4, 13)],
            resets_received: vec![ResetReceived {
                workload: "/".into(),
                comm: "app".into(),
                dst_addr: "::1".parse().unwrap(),
                dst_port: 80,
                state: "established",
                count: 1,
            }],
            resets_sent: vec![ResetSent {
                workload: "/".into(),
                comm: "app".into(),
                reason: "not_specified".into(),
                count: 1,
            }],
            inbound: vec![Inbound {
                netns: 0,
                local_addr: "10.0.0.1".parse().unwrap(),
                local_port: 7000,
                count: 1,
            }],
            drops: vec![("owner_map_full", 0)],
            bpf_stats: vec![("sock_state_btf".into(), 1_000, 2)],
            recursion_misses: vec![("sock_state_btf".into(), 3)],
            listeners: vec![ListenerEvent::Stopped {
                at: Duration::from_secs(14),
                netns: 0,
                local: "0.0.0.0:7000".parse().unwrap(),
                by: Process {
                    tgid: 9,
                    comm: "srv".into(),
                    workload: "/".into(),
                },
                pid: 9,
                ending: Ending::Exited { code: 1 },
                last_reset: None,
            }],
            ..Default::default()
        };
        a.update(&snap, Duration::from_secs(14));
        a.listed(Some(vec![]), Duration::from_secs(14));
        let mut out = Text::default();
        let mut series = SeriesCap::new(100);
        let counters = scrape(&snap, &a, &mut series, &mut out);
        let mut text = out.finish();
        let direct = families::check(&text).unwrap();
        AgentMetrics::new(&info()).unwrap().encode(counters, &mut text).unwrap();
        let written = families::check(&text).unwrap();
        let of = |writer| -> BTreeSet<&str> {
            (families::ALL.iter())
                .filter(|f| f.writer == writer)
                .map(|f| f.name)
                .collect()
        };
        assert_eq!(direct, of(Writer::Direct), "the direct writer's families");
        // The process collector is the daemon's (agent-user's `serve::metrics` tests it).
        let all: BTreeSet<&str> = families::ALL
            .iter()
            .map(|f| f.name)
            .filter(|n| !n.starts_with("process_"))
            .collect();
        assert_eq!(written, all, "families never written");
    }
}
