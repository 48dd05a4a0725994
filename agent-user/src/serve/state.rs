//! What the tick and the HTTP endpoints share: the collector (and through it the attached
//! programs), the analysis, the series caps and what the agent knows about itself.
use std::sync::{
    Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicU64, Ordering},
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
    /// Whether the last collection, tick or scrape, succeeded.
    collecting: AtomicBool,
    /// Failed collections, by [`During`].
    failed: [AtomicU64; 2],
}

/// What a collection was for, in the order of `UserDrops::collections_failed`.
#[derive(Clone, Copy, Debug)]
enum During {
    Tick,
    Scrape,
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
            collecting: AtomicBool::new(true),
            failed: Default::default(),
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
            self.failed[during as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Failed collections for the tick and for scrapes.
    pub fn failed(&self) -> [u64; 2] {
        self.failed.each_ref().map(|n| n.load(Ordering::Relaxed))
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
