//! refusal-agent's pure logic, in the stages of the daemon's data flow (ARCHITECTURE.md):
//! [`kernel`] (what attaching needs to know: the hook table, BTF and tracefs formats) →
//! [`collect`] (what a collection yields: snapshots, labels, workload names, sock_diag replies,
//! trace events) → [`analyse`] (verdicts and diagnoses) → [`serve`] (exposition, series caps,
//! metric families, API views). [`config`] is read by every stage. A module imports only from
//! its own stage or an earlier one (`cargo xtask test` checks).
//!
//! No aya, no tokio, no I/O beyond reading a file a caller names: everything here is tested
//! with injected clocks and inputs, and the fuzz targets drive it directly.
pub mod analyse;
pub mod collect;
pub mod config;
pub mod kernel;
pub mod serve;
