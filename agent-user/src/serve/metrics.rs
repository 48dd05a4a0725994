//! `/metrics`: a collection from the kernel maps, written into a buffer reused from one scrape to
//! the next by two writers: `agent_core::serve::scrape` writes the families with a series per
//! target or port, then the agent's registry (`AgentMetrics`, with the `prometheus` crate's
//! process collector) appends the agent's own and the process metrics.
use std::sync::{
    Mutex,
    atomic::{AtomicUsize, Ordering},
};

use agent_core::serve::{
    self,
    agent::{AgentInfo, AgentMetrics},
    exposition::Text,
};
use prometheus::process_collector::ProcessCollector;

use crate::{collect::collector::CollectError, serve::state::State};

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

/// The agent's own families, with the process collector's.
pub fn agent_metrics(info: &AgentInfo) -> Result<AgentMetrics, prometheus::Error> {
    let metrics = AgentMetrics::new(info)?;
    metrics.register(Box::new(ProcessCollector::for_self()))?;
    Ok(metrics)
}

/// Collects from the kernel maps and writes the whole exposition.
pub fn scrape(state: &State) -> Result<Exposition, CollectError> {
    // Observed when the scrape ends, failed or not: this scrape is in the next one's histogram.
    let _timer = state.metrics.scrape_timer();
    let snap = state.snapshot()?;
    let mut buffer = std::mem::take(&mut *SPARE.lock().unwrap_or_else(|p| p.into_inner()));
    let last = LAST_SIZE.load(Ordering::Relaxed);
    buffer.reserve(last + last / 16);
    let mut out = Text::new(buffer);
    let counters = serve::scrape(&snap, &state.analysis(), &mut state.series(), &mut out);
    let mut text = out.finish();
    if let Err(e) = state.metrics.encode(counters, &mut text) {
        // Only a collector breaking the format's rules fails here: a bug, not a reason to
        // answer nothing.
        tracing::error!(error = %e, "the agent's own metrics were left out of a scrape");
    }
    LAST_SIZE.store(text.len(), Ordering::Relaxed);
    Ok(Exposition(text))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use agent_core::{
        config::AttachMode,
        kernel::hooks::HookReport,
        serve::{
            agent::Counters,
            families::{self, Writer},
        },
    };

    use super::*;

    #[test]
    fn the_registry_writes_its_families_of_the_table() {
        let info = AgentInfo {
            version: "0.1.0",
            revision: "unknown",
            kernel: "6.18.0".into(),
            hooks: vec![HookReport {
                hook: "state",
                mode: Some(AttachMode::TpBtf),
                refused: vec![],
            }],
        };
        let metrics = agent_metrics(&info).unwrap();
        drop(metrics.scrape_timer());
        let counters = Counters {
            dropped: vec![("owner_map_full", 2)],
            bpf: vec![("sock_state_btf".into(), 1_500_000_000, 7)],
            recursion_misses: vec![("sock_state_btf".into(), 1)],
            overflow: vec![(families::CONNECT_FAILURES.name, 3)],
        };
        let mut text = String::new();
        metrics.encode(counters, &mut text).unwrap();
        let written = families::check(&text).unwrap();
        let registry: BTreeSet<&str> = (families::ALL.iter())
            .filter(|f| f.writer == Writer::Registry)
            .map(|f| f.name)
            .collect();
        assert_eq!(written, registry, "{text}");
        for line in [
            "refusal_agent_bpf_run_seconds_total{program=\"sock_state_btf\"} 1.5\n",
            "refusal_agent_bpf_runs_total{program=\"sock_state_btf\"} 7\n",
            "refusal_agent_bpf_recursion_misses_total{program=\"sock_state_btf\"} 1\n",
            "refusal_agent_events_dropped_total{where=\"owner_map_full\"} 2\n",
            "refusal_agent_series_overflow_total{metric=\"refusal_connect_failures_total\"} 3\n",
            "refusal_agent_collections_failed_total{during=\"scrape\"} 0\n",
            "refusal_agent_probe_attached{hook=\"state\",mode=\"tp_btf\"} 1\n",
            "refusal_agent_scrape_duration_seconds_count 1\n",
            "refusal_agent_scrape_duration_seconds_bucket{le=\"0.05\"} 1\n",
        ] {
            assert_eq!(text.matches(line).count(), 1, "{line}\n{text}");
        }
    }
}
