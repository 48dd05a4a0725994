//! What a collection yields, and the pure parts of collecting: label values from kernel
//! values, workload names from cgroup paths, sock_diag replies, trace events, listener events.
pub mod events;
pub mod labels;
pub mod listening;
pub mod runtimes;
pub mod snapshot;
pub mod sockdiag;
pub mod workload;
