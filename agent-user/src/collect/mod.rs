//! The collect stage: the kernel's aggregate maps read at collection time (a scrape or the
//! daemon's tick) into an `agent_core` snapshot with labels resolved, and what else the
//! analysis asks of the host (its listeners).
pub mod batch;
pub mod cgroups;
pub mod clock;
pub mod collector;
pub mod listeners;
pub mod programs;
pub mod watch;
pub mod workloads;
