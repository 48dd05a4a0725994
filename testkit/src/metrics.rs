//! The metric families the tests, the bench and the VM matrix read, by name.
pub const FAILURES: &str = "refusal_connect_failures_total";
pub const RESETS_RECEIVED: &str = "refusal_resets_received_total";
pub const RESETS_SENT: &str = "refusal_resets_sent_total";
pub const INBOUND_REFUSED: &str = "refusal_inbound_refused_total";
pub const INBOUND_DIAGNOSIS: &str = "refusal_inbound_diagnosis";
pub const TARGET_STATE: &str = "refusal_target_state";
pub const EPISODES: &str = "refusal_episodes_total";
pub const COLD_START_COUNT: &str = "refusal_cold_start_duration_seconds_count";
pub const COLD_START_SUM: &str = "refusal_cold_start_duration_seconds_sum";
pub const BUILD_INFO: &str = "refusal_agent_build_info";
pub const PROBE_ATTACHED: &str = "refusal_agent_probe_attached";
pub const EVENTS_DROPPED: &str = "refusal_agent_events_dropped_total";
pub const SERIES_OVERFLOW: &str = "refusal_agent_series_overflow_total";
pub const BPF_RUN_SECONDS: &str = "refusal_agent_bpf_run_seconds_total";
pub const BPF_RUNS: &str = "refusal_agent_bpf_runs_total";
