//! Snapshots in, verdicts and diagnoses out: the episode engine per target, the diagnosis of
//! inbound refusals, and the [`analysis::Analysis`] that feeds them count deltas.
pub mod analysis;
pub mod diagnosis;
pub mod histogram;
pub mod verdict;
