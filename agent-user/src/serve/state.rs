//! What the tick and the HTTP endpoints share: the collector (and through it the attached
//! programs), the analysis, the series caps and what the agent knows about itself.
use std::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicBool, Ordering},
};

use agent_core::{
    analyse::analysis::Analysis,
    collect::snapshot::Snapshot,
    serve::{agent::AgentInfo, series::SeriesCap},
};

use crate::{
    analyse,
    collect::collector::{CollectError, Collector, Scope},
};

pub struct State {
    collector: Mutex<Collector>,
    analysis: Mutex<Analysis>,
    series: Mutex<SeriesCap>,
    pub info: AgentInfo,
    ready: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicked holder leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    pub fn new(collector: Collector, analysis: Analysis, series: SeriesCap, info: AgentInfo) -> Self {
        Self {
            collector: Mutex::new(collector),
            analysis: Mutex::new(analysis),
            series: Mutex::new(series),
            info,
            ready: AtomicBool::new(false),
        }
    }

    /// Everything the kernel counted, for a scrape.
    pub fn snapshot(&self) -> Result<Snapshot, CollectError> {
        lock(&self.collector).collect(Scope::All)
    }

    pub fn analysis(&self) -> MutexGuard<'_, Analysis> {
        lock(&self.analysis)
    }

    pub fn series(&self) -> MutexGuard<'_, SeriesCap> {
        lock(&self.series)
    }

    /// Advances the verdicts (see [`analyse::tick`]).
    pub fn tick(&self) -> Result<(), CollectError> {
        let mut collector = lock(&self.collector);
        analyse::tick(&mut collector, &mut lock(&self.analysis))
    }

    /// Probes attached and the first collection done (`/readyz`).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
