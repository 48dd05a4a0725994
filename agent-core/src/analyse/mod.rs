//! Snapshots in, verdicts and diagnoses out: the episode engine per target, the listener
//! history, the diagnosis of refusals, and the [`analysis::Analysis`] that feeds them.
pub mod advice;
pub mod analysis;
pub mod diagnosis;
pub mod histogram;
pub mod listeners;
pub mod verdict;
