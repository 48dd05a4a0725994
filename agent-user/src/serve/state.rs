//! What the tick and the HTTP endpoints share: the collector (and through it the attached
//! programs), the analysis, the series caps and the agent's own metrics.
use std::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicBool, Ordering},
};

use agent_core::{
    analyse::analysis::Analysis,
    collect::snapshot::Snapshot,
    serve::{
        agent::{AgentMetrics, During},
        series::SeriesCap,
    },
};

use crate::{
    analyse,
    collect::collector::{CollectError, Collector, Scope},
};

pub struct State {
    collector: Mutex<Collector>,
    analysis: Mutex<Analysis>,
    series: Mutex<SeriesCap>,
    /// The agent's own families (failed collections are counted there).
    pub metrics: AgentMetrics,
    ready: AtomicBool,
    /// Whether the last collection, tick or scrape, succeeded.
    collecting: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicked holder leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    pub fn new(collector: Collector, analysis: Analysis, series: SeriesCap, metrics: AgentMetrics) -> Self {
        Self {
            collector: Mutex::new(collector),
            analysis: Mutex::new(analysis),
            series: Mutex::new(series),
            metrics,
            ready: AtomicBool::new(false),
            collecting: AtomicBool::new(true),
        }
    }

    /// Everything the kernel counted, for a scrape.
    pub fn snapshot(&self) -> Result<Snapshot, CollectError> {
        let snap = lock(&self.collector).collect(Scope::All);
        self.account(During::Scrape, snap.is_ok());
        snap
    }

    fn account(&self, during: During, ok: bool) {
        self.collecting.store(ok, Ordering::Release);
        if !ok {
            self.metrics.collection_failed(during);
        }
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
        let r = analyse::tick(&mut collector, &mut lock(&self.analysis));
        self.account(During::Tick, r.is_ok());
        r
    }

    /// Probes attached and the first collection done.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// `/readyz`: ready, and the last collection succeeded (a daemon whose map reads fail
    /// counts on, but answers nothing true).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.collecting.load(Ordering::Acquire)
    }
}
