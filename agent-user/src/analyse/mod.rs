//! The analyse stage, live: one tick collects what verdicts need (the aggregates and the
//! listener events), feeds it to `agent_core::analyse::analysis::Analysis`, lists the own
//! network namespace's listeners when the analysis asks, and points the kernel at the ports
//! whose successes it must see.
use std::time::Duration;

use agent_core::analyse::analysis::Analysis;

use crate::collect::{
    clock::monotonic_ns,
    collector::{CollectError, Collector, Scope},
    listeners,
};

/// How often verdicts advance and the watch set follows them.
pub const TICK: Duration = Duration::from_millis(250);

/// One tick: collect, analyse, and update the kernel's watch set.
pub fn tick(collector: &mut Collector, analysis: &mut Analysis) -> Result<(), CollectError> {
    let mut snap = collector.collect(Scope::Verdicts)?;
    collector.drain_listeners(&mut snap)?;
    let now = Duration::from_nanos(monotonic_ns());
    let ports = analysis.update(&snap, now);
    if analysis.listing_due(now) {
        let listed = listeners::own_addresses()
            .inspect_err(|e| tracing::warn!(error = %e, "listing listening sockets: inbound refusals go undiagnosed"))
            .ok();
        analysis.listed(listed, now);
    }
    collector.set_watched(&ports)
}
