//! Every metric family the agent exports, once: name, type, help, labels, how the series cap
//! applies and which of the two writers writes it. Both writers take their family headers from
//! here, the series caps take their overflow names from here, and tests check both writers'
//! output and the README's metric table against it.
use crate::serve::exposition::{Kind, Text};

#[derive(Debug, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// Label names in exposition order (a histogram's without `le`).
    pub labels: &'static [&'static str],
    pub cap: Cap,
    pub writer: Writer,
}

/// Which writer a family's samples come from (README, "Metrics"): each family has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writer {
    /// [`Text`], straight from the snapshot and the analysis, label text cached per series:
    /// the families with a series per target or port, up to `max_series` each.
    Direct,
    /// The `prometheus` crate's registry ([`crate::serve::agent::AgentMetrics`]): the agent's own
    /// families, a few dozen series, and the crate's process collector.
    Registry,
}

/// How `max_series` applies to a family (README, "Metrics").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    /// Bounded by construction: the agent's own families.
    None,
    /// Kernel-counted: past the cap new label sets fold into `other`, and
    /// `refusal_agent_series_overflow_total{metric}` is exported from the start.
    Always,
    /// Derived by the daemon: folds the same way; its overflow series appears once one folds.
    OnceFolded,
}

impl Family {
    /// Starts the family in `out`: its samples follow.
    pub fn open(&self, out: &mut Text) {
        out.family(self.name, self.help, self.kind);
    }
}

/// A family's labels after the workload's four (`workload`, `namespace`, `pod`, `container`),
/// which every family with a workload has.
macro_rules! workload_labels {
    ($($label:literal),*) => {
        &["workload", "namespace", "pod", "container", $($label),*]
    };
}

pub const CONNECT_FAILURES: Family = Family {
    name: "refusal_connect_failures_total",
    kind: Kind::Counter,
    help: "Outgoing connects that failed, by target and errno (counted in the kernel).",
    labels: workload_labels!("comm", "proto", "dst_addr", "dst_port", "errno"),
    cap: Cap::Always,
    writer: Writer::Direct,
};

pub const RESETS_RECEIVED: Family = Family {
    name: "refusal_resets_received_total",
    kind: Kind::Counter,
    help: "RSTs received, by remote end and the TCP state the RST hit.",
    labels: workload_labels!("comm", "dst_addr", "dst_port", "state"),
    cap: Cap::Always,
    writer: Writer::Direct,
};

pub const RESETS_SENT: Family = Family {
    name: "refusal_resets_sent_total",
    kind: Kind::Counter,
    help: "RSTs this host's sockets sent, by sk_rst_reason.",
    labels: workload_labels!("comm", "reason"),
    cap: Cap::Always,
    writer: Writer::Direct,
};

pub const INBOUND_REFUSED: Family = Family {
    name: "refusal_inbound_refused_total",
    kind: Kind::Counter,
    help: "Inbound connection attempts this host refused (RST, no socket), by local address and port.",
    labels: &["local_addr", "local_port"],
    cap: Cap::Always,
    writer: Writer::Direct,
};

pub const INBOUND_DIAGNOSIS: Family = Family {
    name: "refusal_inbound_diagnosis",
    kind: Kind::Gauge,
    help: "Why this host refuses connections to a local address and port (not_listening, loopback_only, wrong_address, listener_killed, listener_exited, listener_closed, never_listened).",
    labels: &["local_addr", "local_port", "diagnosis"],
    // Only ports refused in the last few minutes, and those are capped by the inbound family.
    cap: Cap::None,
    writer: Writer::Direct,
};

pub const TARGET_STATE: Family = Family {
    name: "refusal_target_state",
    kind: Kind::Gauge,
    help: "1 for the state each target with refusals is in (refusing, persistent, flapping).",
    labels: workload_labels!("comm", "dst_addr", "dst_port", "state"),
    cap: Cap::OnceFolded,
    writer: Writer::Direct,
};

pub const EPISODES: Family = Family {
    name: "refusal_episodes_total",
    kind: Kind::Counter,
    help: "Refusal episodes that ended, by outcome: cold_start (came up in time) or recovered (after persistent).",
    labels: workload_labels!("comm", "dst_addr", "dst_port", "outcome"),
    cap: Cap::OnceFolded,
    writer: Writer::Direct,
};

pub const COLD_START_DURATION: Family = Family {
    name: "refusal_cold_start_duration_seconds",
    kind: Kind::Histogram,
    help: "Time from an episode's first refusal to the first successful connect, for cold starts.",
    labels: workload_labels!("dst_port"),
    // One per workload and port that ever cold-started: bounded by the targets.
    cap: Cap::None,
    writer: Writer::Direct,
};

pub const LISTENER_LOST: Family = Family {
    name: "refusal_listener_lost_total",
    kind: Kind::Counter,
    help: "Listeners that went away, by cause (exited, killed, oom_killed, closed), and whether their process died within a second of a connection reset.",
    labels: workload_labels!("comm", "local_port", "cause", "after_reset"),
    cap: Cap::OnceFolded,
    writer: Writer::Direct,
};

pub const BUILD_INFO: Family = Family {
    name: "refusal_agent_build_info",
    kind: Kind::Gauge,
    help: "Agent version, the git revision it was built from, and the kernel it runs on.",
    labels: &["version", "revision", "kernel"],
    cap: Cap::None,
    writer: Writer::Registry,
};

pub const PROBE_ATTACHED: Family = Family {
    name: "refusal_agent_probe_attached",
    kind: Kind::Gauge,
    help: "1 for the attach mode each hook uses, 0 for the modes it could use.",
    labels: &["hook", "mode"],
    cap: Cap::None,
    writer: Writer::Registry,
};

pub const EVENTS_DROPPED: Family = Family {
    name: "refusal_agent_events_dropped_total",
    kind: Kind::Counter,
    help: "Events the agent had to give up, by where (counts themselves are kept).",
    labels: &["where"],
    cap: Cap::None,
    writer: Writer::Registry,
};

pub const BPF_RUN_SECONDS: Family = Family {
    name: "refusal_agent_bpf_run_seconds_total",
    kind: Kind::Counter,
    help: "Kernel time spent in each of the agent's programs (while kernel.bpf_stats_enabled=1).",
    labels: &["program"],
    cap: Cap::None,
    writer: Writer::Registry,
};

pub const BPF_RUNS: Family = Family {
    name: "refusal_agent_bpf_runs_total",
    kind: Kind::Counter,
    help: "Runs of each of the agent's programs (while kernel.bpf_stats_enabled=1).",
    labels: &["program"],
    cap: Cap::None,
    writer: Writer::Registry,
};

pub const BPF_RECURSION_MISSES: Family = Family {
    name: "refusal_agent_bpf_recursion_misses_total",
    kind: Kind::Counter,
    help: "Runs of each of the agent's programs the kernel skipped: the program was already running on that CPU (an interrupt during a run), so the nested event went unseen.",
    labels: &["program"],
    cap: Cap::None,
    writer: Writer::Registry,
};

pub const HTTP_REJECTED: Family = Family {
    name: "refusal_agent_http_rejected_connections_total",
    kind: Kind::Counter,
    help: "HTTP connections closed at once because the connection cap was reached.",
    labels: &[],
    cap: Cap::None,
    writer: Writer::Registry,
};

pub const COLLECTIONS_FAILED: Family = Family {
    name: "refusal_agent_collections_failed_total",
    kind: Kind::Counter,
    help: "Reads of the kernel's maps that failed, by what they were for (tick, scrape); a failed scrape answers 500 and /readyz is false until one succeeds.",
    labels: &["during"],
    cap: Cap::None,
    writer: Writer::Registry,
};

pub const SERIES_OVERFLOW: Family = Family {
    name: "refusal_agent_series_overflow_total",
    kind: Kind::Counter,
    help: "Distinct label sets folded into \"other\" because a metric reached max_series.",
    labels: &["metric"],
    cap: Cap::None,
    writer: Writer::Registry,
};

pub const SCRAPE_DURATION: Family = Family {
    name: "refusal_agent_scrape_duration_seconds",
    kind: Kind::Histogram,
    help: "Time a /metrics scrape took, from reading the kernel's maps to the last line written (failed ones too).",
    labels: &[],
    cap: Cap::None,
    writer: Writer::Registry,
};

/// The `prometheus` crate's process collector's families, with its help texts (a test compares
/// them): what every exporter is expected to have.
macro_rules! process {
    ($($id:ident: $name:literal, $kind:ident, $help:literal;)*) => {
        $(pub const $id: Family = Family {
            name: $name,
            kind: Kind::$kind,
            help: $help,
            labels: &[],
            cap: Cap::None,
            writer: Writer::Registry,
        };)*
    };
}

process! {
    PROCESS_CPU: "process_cpu_seconds_total", Counter, "Total user and system CPU time spent in seconds.";
    PROCESS_MAX_FDS: "process_max_fds", Gauge, "Maximum number of open file descriptors.";
    PROCESS_OPEN_FDS: "process_open_fds", Gauge, "Number of open file descriptors.";
    PROCESS_RESIDENT_MEMORY: "process_resident_memory_bytes", Gauge, "Resident memory size in bytes.";
    PROCESS_START_TIME: "process_start_time_seconds", Gauge, "Start time of the process since unix epoch in seconds.";
    PROCESS_THREADS: "process_threads", Gauge, "Number of OS threads in the process.";
    PROCESS_VIRTUAL_MEMORY: "process_virtual_memory_bytes", Gauge, "Virtual memory size in bytes.";
}

/// In exposition order: the direct writer's, then the registry's (which sorts by name).
pub const ALL: &[&Family] = &[
    &CONNECT_FAILURES,
    &RESETS_RECEIVED,
    &RESETS_SENT,
    &INBOUND_REFUSED,
    &TARGET_STATE,
    &EPISODES,
    &INBOUND_DIAGNOSIS,
    &COLD_START_DURATION,
    &LISTENER_LOST,
    &PROCESS_CPU,
    &PROCESS_MAX_FDS,
    &PROCESS_OPEN_FDS,
    &PROCESS_RESIDENT_MEMORY,
    &PROCESS_START_TIME,
    &PROCESS_THREADS,
    &PROCESS_VIRTUAL_MEMORY,
    &BPF_RECURSION_MISSES,
    &BPF_RUN_SECONDS,
    &BPF_RUNS,
    &BUILD_INFO,
    &COLLECTIONS_FAILED,
    &EVENTS_DROPPED,
    &HTTP_REJECTED,
    &PROBE_ATTACHED,
    &SCRAPE_DURATION,
    &SERIES_OVERFLOW,
];

/// Checks an exposition against the table and returns the families it has: each family's
/// header once, with the table's kind and help, and every sample's labels the family's (in the table's
/// order from the direct writer; the registry sorts them by name). For tests of both writers.
pub fn check(text: &str) -> Result<std::collections::BTreeSet<&'static str>, String> {
    let family = |name: &str| {
        ALL.iter()
            .find(|f| f.name == name)
            .ok_or(format!("{name}: not in the table"))
    };
    let mut written = std::collections::BTreeSet::new();
    for line in text.lines() {
        if let Some(help) = line.strip_prefix("# HELP ") {
            let (name, help) = help.split_once(' ').ok_or(format!("bad line: {line}"))?;
            let f = family(name)?;
            if help != f.help.replace('\\', "\\\\").replace('\n', "\\n") {
                return Err(format!("{name}: help {help:?}, the table says {:?}", f.help));
            }
            continue;
        }
        if let Some(typed) = line.strip_prefix("# TYPE ") {
            let (name, kind) = typed.split_once(' ').ok_or(format!("bad line: {line}"))?;
            let f = family(name)?;
            if kind != f.kind.name() {
                return Err(format!("{name}: type {kind}, the table says {}", f.kind.name()));
            }
            if !written.insert(f.name) {
                return Err(format!("{name}: written twice"));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, _) = line.rsplit_once(' ').ok_or(format!("bad line: {line}"))?;
        let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
        let f = ["_bucket", "_sum", "_count", ""]
            .iter()
            .find_map(|suffix| family(name.strip_suffix(suffix)?).ok())
            .ok_or(format!("{name}: not in the table"))?;
        if !written.contains(f.name) {
            return Err(format!("{line}: outside its family"));
        }
        let mut names: Vec<&str> = labels
            .trim_end_matches('}')
            .split("\",")
            .filter(|p| !p.is_empty())
            .map(|p| p.split('=').next().unwrap_or_default())
            .collect();
        if name.ends_with("_bucket") {
            let le = names.iter().position(|n| *n == "le").ok_or(format!("{line}: no le"))?;
            names.remove(le);
        }
        let mut expected = f.labels.to_vec();
        if f.writer == Writer::Registry {
            expected.sort_unstable();
        }
        if names != expected {
            return Err(format!("{line}: labels {names:?}, the table says {expected:?}"));
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's metric table, row by row: (name, type word, labels).
    fn readme_rows() -> Vec<(String, String, Vec<String>)> {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README.md");
        let table = readme
            .split("### Metrics")
            .nth(1)
            .expect("README has a ### Metrics section");
        let code = |cell: &str| -> Vec<String> { cell.split('`').skip(1).step_by(2).map(str::to_string).collect() };
        table
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
            .map(|row| {
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                let name = code(cells[1]).remove(0);
                let kind = cells[2].split_whitespace().next().unwrap_or("").to_string();
                (name, kind, code(cells[3]))
            })
            .collect()
    }

    #[test]
    fn the_readme_metric_table_is_this_table() {
        let rows = readme_rows();
        let names: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        let ours: Vec<&str> = ALL.iter().map(|f| f.name).collect();
        let mut sorted = (names.clone(), ours.clone());
        sorted.0.sort();
        sorted.1.sort();
        assert_eq!(sorted.0, sorted.1, "README's metric table and families::ALL differ");
        for (name, kind, labels) in rows {
            let f = ALL.iter().find(|f| f.name == name).expect("listed");
            assert_eq!(kind, f.kind.name(), "{name}: type");
            assert_eq!(labels, f.labels, "{name}: labels");
        }
    }
}
