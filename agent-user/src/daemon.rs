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
    analysis::Analysis,
    collector::{CollectError, Collector, Scope, Snapshot, monotonic_ns},
    config::Config,
    http, loader,
    metrics::AgentInfo,
    pins::{self, PinError, Pins},
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
    #[error("listening on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("installing signal handlers: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error("the HTTP server ended: {0}")]
    Http(String),
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

/// A daemon that has attached its programs and bound its listener, not yet serving: the
/// privileged part is over (see [`crate::caps::drop_privileges`]).
pub struct Started {
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
    pins: Option<Pins>,
    cfg: Config,
}

impl Started {
    pub fn pins(&self) -> Option<&Pins> {
        self.pins.as_ref()
    }
}

/// Loads and attaches (taking over from a predecessor's pinned programs), and binds the
/// listener. `flavor` is [`loader::Flavor::Daemon`] except for the benchmarks' floor, which
/// pins nothing.
pub fn start(cfg: Config, flavor: loader::Flavor) -> Result<Started, DaemonError> {
    let kernel = loader::prepare()?;
    for w in &kernel.resolved.warnings {
        tracing::warn!("{w}");
    }
    let pins = match flavor {
        loader::Flavor::Daemon => match Pins::open(&cfg.pin_dir) {
            Ok(p) => Some(p),
            // Two daemons on one pin directory would take each other's programs away.
            Err(e @ PinError::Busy(_)) => return Err(e.into()),
            // Without a usable bpffs (a container without /sys/fs/bpf, a read-only mount) the
            // daemon still counts; only a restart loses what happens meanwhile.
            Err(e) => {
                tracing::warn!(error = %e, "restart continuity is off");
                None
            }
        },
        _ => None,
    };
    let plan = match &pins {
        Some(p) => Some(p.plan(&pins::object_layouts(loader::OBJECT))?),
        None => None,
    };
    if let Some(plan) = plan.as_ref().filter(|p| !p.discarded.is_empty()) {
        tracing::warn!(maps = ?plan.discarded, "pinned maps from a build with another layout: their counts restart");
    }
    let mut loaded = match loader::load_and_attach(
        &kernel,
        cfg.attach,
        loader::opt_in(cfg.connect_sync),
        flavor,
        plan.as_ref(),
    ) {
        Ok(l) => l,
        Err(e) => {
            // Leave a predecessor's programs counting; remove only what this start created.
            if let Some(p) = pins.filter(Pins::fresh) {
                let _ = p.remove();
            }
            return Err(e.into());
        }
    };
    for h in &loaded.hooks {
        let refused: Vec<String> = h.refused.iter().map(|(m, why)| format!("{m}: {why}")).collect();
        tracing::info!(hook = h.hook, mode = %h.mode.map_or("none", |m| m.name()), refused = ?refused, "hook attached");
    }
    if let (Some(p), Some(plan)) = (&pins, &plan) {
        // Pinned before the switch: if pinning fails, the predecessor's programs still count.
        if let Err(e) = p.pin_links(plan.generation, std::mem::take(&mut loaded.links)) {
            if p.fresh() {
                let _ = std::fs::remove_dir_all(p.dir());
            }
            return Err(e.into());
        }
        loader::activate(&mut loaded.ebpf, plan.generation)?;
        let old = p.retire_links(plan.generation)?;
        tracing::info!(
            dir = %p.dir().display(),
            generation = plan.generation,
            maps_reused = plan.reused,
            old_links = old,
            "pinned; counting continues across restarts"
        );
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
        analysis: Mutex::new(Analysis::new(cfg.thresholds())),
        series: Mutex::new(SeriesCap::new(cfg.max_series)),
        info: AgentInfo {
            version: env!("CARGO_PKG_VERSION"),
            kernel: kernel_release(),
            hooks: loaded.hooks,
        },
        ready: AtomicBool::new(false),
    });
    // Bound before privileges go, so a port below 1024 works with `--user`.
    let listener = std::net::TcpListener::bind(cfg.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| DaemonError::Listen {
            addr: cfg.listen,
            source,
        })?;
    Ok(Started {
        shared,
        listener,
        pins,
        cfg,
    })
}

/// Serves until SIGTERM or SIGINT, then detaches (or, with `keep_pins`, leaves the programs
/// counting for the next daemon).
pub async fn serve(started: Started) -> Result<(), DaemonError> {
    let Started {
        shared,
        listener,
        pins,
        cfg,
    } = started;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|source| DaemonError::Listen {
        addr: cfg.listen,
        source,
    })?;
    tracing::info!(listen = %cfg.listen, "serving /metrics, /healthz, /readyz, /api/targets");
    let mut http = tokio::spawn(http::serve(listener, shared.clone(), cfg.web_config_file.clone()));

    shared.tick()?;
    shared.ready.store(true, Ordering::Release);

    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stopped = loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = shared.tick() {
                    tracing::warn!(error = %e, "collection failed");
                }
            }
            _ = term.recv() => break Ok("SIGTERM"),
            _ = int.recv() => break Ok("SIGINT"),
            // The server never returns; if it panicked, exit rather than run blind.
            end = &mut http => break Err(DaemonError::Http(match end {
                Err(e) => e.to_string(),
                Ok(()) => "stopped".into(),
            })),
        }
    };
    match (&stopped, pins) {
        (Ok(signal), Some(p)) if cfg.keep_pins => {
            tracing::info!(dir = %p.dir().display(), "{signal}: exiting, programs keep counting (--keep-pins)");
        }
        (Ok(signal), Some(p)) => {
            tracing::info!("{signal}: detaching and exiting");
            if let Err(e) = p.remove() {
                tracing::warn!(error = %e, "removing the pins");
            }
        }
        (Ok(signal), None) => tracing::info!("{signal}: detaching and exiting"),
        // A crash keeps the pins, like SIGKILL: the next daemon takes over.
        (Err(_), _) => {}
    }
    // Dropping the collector's `Ebpf` closes our descriptors: unpinned programs detach.
    drop(shared);
    stopped.map(|_| ())
}
