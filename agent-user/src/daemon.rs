//! `refusal-agent run`: load and attach, then serve metrics collected from the kernel maps.
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::signal::unix::{SignalKind, signal};

use crate::{
    analysis::{Analysis, AnalysisError},
    collector::{CollectError, Collector, Scope, Snapshot, monotonic_ns},
    config::Config,
    http, loader,
    metrics::AgentInfo,
    series::SeriesCap,
    workload::CgroupResolver,
};

/// Why the daemon could not start or keep running: every one exits 1 (usage errors, exit 2,
/// never get this far).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Load(#[from] loader::LoadError),
    #[error(transparent)]
    Collect(#[from] CollectError),
    #[error(transparent)]
    Analysis(#[from] AnalysisError),
    #[error("listening on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("installing signal handlers: {0}")]
    Signal(std::io::Error),
}

/// How often verdicts advance and the watch set follows them.
const TICK: Duration = Duration::from_millis(250);

/// State shared by the HTTP handlers and the tick.
pub struct Shared {
    collector: Mutex<Collector>,
    pub analysis: Mutex<Analysis>,
    pub series: Mutex<SeriesCap>,
    pub info: AgentInfo,
    ready: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicked holder leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn snapshot(&self) -> Result<Snapshot, CollectError> {
        lock(&self.collector).collect(Scope::All)
    }

    pub fn analysis(&self) -> std::sync::MutexGuard<'_, Analysis> {
        lock(&self.analysis)
    }

    pub fn series(&self) -> std::sync::MutexGuard<'_, SeriesCap> {
        lock(&self.series)
    }

    /// Collects, advances the verdicts, and points the kernel at the ports to watch.
    fn tick(&self) -> Result<(), CollectError> {
        let mut collector = lock(&self.collector);
        let snap = collector.collect(Scope::Verdicts)?;
        let ports = lock(&self.analysis).update(&snap, Duration::from_nanos(monotonic_ns()));
        collector.set_watched(&ports)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `flavor` is [`loader::Flavor::Daemon`] except for the benchmarks' floor.
pub async fn run(cfg: Config, flavor: loader::Flavor) -> Result<(), DaemonError> {
    let kernel = loader::prepare()?;
    for w in &kernel.resolved.warnings {
        tracing::warn!("{w}");
    }
    let loaded = loader::load_and_attach(&kernel, cfg.attach, flavor)?;
    for h in &loaded.hooks {
        let refused: Vec<String> = h.refused.iter().map(|(m, why)| format!("{m}: {why}")).collect();
        tracing::info!(hook = h.hook, mode = %h.mode.map_or("none", |m| m.name()), refused = ?refused, "hook attached");
    }
    let resolver = CgroupResolver::new()
        .inspect_err(|e| tracing::warn!(error = %e, "workloads will be named by cgroup id"))
        .ok();
    // The parsed BTF (tens of MiB) is needed only to load and attach.
    let rst_reasons = kernel.resolved.rst_reasons;
    drop((kernel.btf, kernel.ours));
    let collector = Collector::new(loaded.ebpf, resolver, rst_reasons)?;
    let shared = Arc::new(Shared {
        collector: Mutex::new(collector),
        analysis: Mutex::new(Analysis::new(cfg.thresholds())?),
        series: Mutex::new(SeriesCap::new(cfg.max_series)),
        info: AgentInfo {
            version: env!("CARGO_PKG_VERSION"),
            kernel: kernel_release(),
            hooks: loaded.hooks,
        },
        ready: AtomicBool::new(false),
    });
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: cfg.listen,
            source,
        })?;
    tracing::info!(listen = %cfg.listen, "serving /metrics, /healthz, /readyz, /api/targets");
    tokio::spawn(http::serve(listener, shared.clone(), cfg.web_config_file.clone()));

    shared.tick()?;
    shared.ready.store(true, Ordering::Release);

    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = shared.tick() {
                    tracing::warn!(error = %e, "collection failed");
                }
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM: detaching and exiting");
                break;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: detaching and exiting");
                break;
            }
        }
    }
    // Dropping the collector's `Ebpf` detaches every program.
    drop(shared);
    Ok(())
}
