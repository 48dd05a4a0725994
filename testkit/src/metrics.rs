//! The metric families the tests, the bench and the VM matrix read, by name: the daemon's own
//! table (`agent_core::serve::families`).
use agent_core::serve::families as f;

pub const FAILURES: &str = f::CONNECT_FAILURES.name;
pub const RESETS_RECEIVED: &str = f::RESETS_RECEIVED.name;
pub const RESETS_SENT: &str = f::RESETS_SENT.name;
pub const INBOUND_REFUSED: &str = f::INBOUND_REFUSED.name;
pub const INBOUND_DIAGNOSIS: &str = f::INBOUND_DIAGNOSIS.name;
pub const TARGET_STATE: &str = f::TARGET_STATE.name;
pub const EPISODES: &str = f::EPISODES.name;
pub const LISTENER_LOST: &str = f::LISTENER_LOST.name;
/// The cold-start histogram's `_count` and `_sum` series.
pub const COLD_START_COUNT: &str = "refusal_cold_start_duration_seconds_count";
pub const COLD_START_SUM: &str = "refusal_cold_start_duration_seconds_sum";
pub const BUILD_INFO: &str = f::BUILD_INFO.name;
pub const PROBE_ATTACHED: &str = f::PROBE_ATTACHED.name;
pub const EVENTS_DROPPED: &str = f::EVENTS_DROPPED.name;
pub const SERIES_OVERFLOW: &str = f::SERIES_OVERFLOW.name;
pub const BPF_RUN_SECONDS: &str = f::BPF_RUN_SECONDS.name;
pub const BPF_RUNS: &str = f::BPF_RUNS.name;
pub const COLLECTIONS_FAILED: &str = f::COLLECTIONS_FAILED.name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_series_are_the_familys() {
        let name = f::COLD_START_DURATION.name;
        assert_eq!(COLD_START_COUNT, format!("{name}_count"));
        assert_eq!(COLD_START_SUM, format!("{name}_sum"));
    }
}
