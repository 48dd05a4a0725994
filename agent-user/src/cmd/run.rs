//! `refusal-agent run`: load and attach (kernel), drop privileges, then tick (collect →
//! analyse) and serve until a signal.
use std::{net::SocketAddr, process::ExitCode, sync::Arc, time::Duration};

use agent_core::{
    analyse::analysis::Analysis,
    config::{Config, KernelLog, LogFormat, web},
    kernel::hooks,
    serve::{agent::AgentInfo, series::SeriesCap},
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    analyse,
    cli::RunArgs,
    collect::{
        cgroups::CgroupResolver,
        clock::monotonic_ns,
        collector::{CollectError, Collector},
        listeners,
        workloads::Workloads,
    },
    kernel::{
        self, caps,
        kernel_log::{self, Reader},
        loader,
        pins::{self, PinError, Pins},
    },
    serve::{self, http, metrics, state::State},
};

/// `run` from its arguments to its exit code: 2 for bad configuration, 1 for anything that
/// stops the daemon, 0 after SIGTERM or SIGINT.
pub fn main(args: &RunArgs) -> ExitCode {
    let cfg = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("refusal-agent: bad configuration: {e}");
            return ExitCode::from(2);
        }
    };
    // The runtimes' files are read under it from the first tick: a missing one is a typo or a
    // forgotten mount.
    if !cfg.host_root.is_dir() {
        eprintln!(
            "refusal-agent: bad configuration: `host_root`: {} is not a directory (the host's / as this process sees it, e.g. / or /host)",
            cfg.host_root.display()
        );
        return ExitCode::from(2);
    }
    // A bad web config is a usage error: refuse it before loading any program.
    if let Some(path) = &cfg.web_config_file
        && let Err(e) = web::load(path)
    {
        eprintln!("refusal-agent: bad configuration: {e}");
        return ExitCode::from(2);
    }
    let user = match cfg.user.as_deref().map(caps::resolve_user).transpose() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("refusal-agent: bad configuration: `user`: {e}");
            return ExitCode::from(2);
        }
    };
    let kernel_log = kernel_log::effective(cfg.kernel_log, std::env::var("REFUSAL_LOG").ok().as_deref());
    init_logging(cfg.log_format, kernel_log);
    let flavor = if args.bench_empty_programs {
        loader::Flavor::Empty
    } else {
        loader::Flavor::Daemon
    };
    let fail = |e: &dyn std::fmt::Display| {
        tracing::error!("{e}");
        eprintln!("refusal-agent: {e}");
        ExitCode::from(1)
    };
    let started = match start(cfg, flavor, kernel_log, args.test_unknown_family) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    if let (Some(id), Some(pins)) = (&user, started.pins.as_ref())
        && let Err(e) = pins.chown(id.uid, id.gid)
    {
        return fail(&e);
    }
    // Before the runtime starts its threads: capabilities are per thread.
    match caps::drop_privileges(user.as_ref()) {
        // SAFETY: getuid cannot fail.
        Ok(kept) => {
            tracing::info!(uid = unsafe { libc::getuid() }, kept = ?caps::names(&kept), "privileges dropped")
        }
        Err(e) => return fail(&e),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&format!("starting the async runtime: {e}")),
    };
    match runtime.block_on(serve(started)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// `kernel_log`: the programs' own records pass at that level whatever `REFUSAL_LOG` says of
/// other targets (`--kernel-log debug` alone shows debug records).
pub fn init_logging(format: LogFormat, kernel_log: KernelLog) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("REFUSAL_LOG").unwrap_or_else(|_| "info".into());
    if kernel_log != KernelLog::Off
        && let Ok(d) = format!("{}={}", kernel_log::TARGET, kernel_log.name()).parse()
    {
        filter = filter.add_directive(d);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

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
    #[error("the programs' log: {0}")]
    KernelLog(#[from] kernel_log::ReaderError),
    #[error("the HTTP server ended: {0}")]
    Http(String),
    #[error("the agent's metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A daemon that has attached its programs and bound its listener, not yet serving: the
/// privileged part is over (see [`caps::drop_privileges`]).
struct Started {
    state: Arc<State>,
    listener: std::net::TcpListener,
    pins: Option<Pins>,
    /// The programs' log, when on.
    kernel_log: Option<Reader>,
    cfg: Config,
}

/// Loads and attaches (taking over from a predecessor's pinned programs), and binds the
/// listener. `flavor` is [`loader::Flavor::Daemon`] except for the benchmarks' floor, which
/// pins nothing; `log` the programs' own log level; `unknown_family` the kernel log's test
/// condition (`--test-unknown-family`).
fn start(cfg: Config, flavor: loader::Flavor, log: KernelLog, unknown_family: bool) -> Result<Started, DaemonError> {
    let mut kernel = loader::prepare()?;
    if unknown_family {
        let o = &mut kernel.resolved.offsets;
        o.skc_family = o.sk_protocol;
    }
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
        hooks::opt_in(cfg.connect_sync),
        flavor,
        log,
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
        match h.mode {
            Some(mode) => tracing::info!(hook = h.hook, mode = %mode.name(), refused = ?refused, "hook attached"),
            None => {
                let signal = hooks::HOOKS.iter().find(|s| s.name == h.hook).map_or("", |s| s.signal);
                tracing::warn!(hook = h.hook, refused = ?refused, "no attach mode works on this kernel: {signal} are not counted");
            }
        }
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
    let kernel_log = match log {
        KernelLog::Off => None,
        _ => Some(Reader::take(&mut loaded.ebpf)?),
    };
    let cgroups = CgroupResolver::new()
        .inspect_err(|e| tracing::warn!(error = %e, "workloads will be named by cgroup id"))
        .ok();
    let mut workloads = Workloads::new(cgroups, &cfg.host_root);
    // The parsed BTF (tens of MiB) is needed only to load and attach.
    let rst_reasons = kernel.resolved.rst_reasons;
    drop((kernel.btf, kernel.ours));
    let info = AgentInfo {
        version: env!("CARGO_PKG_VERSION"),
        revision: env!("REFUSAL_AGENT_REVISION"),
        kernel: kernel::release(),
        hooks: loaded.hooks,
    };
    // After attaching, so no listener falls between the seed and the events (those that do
    // are in both, and counted once), and before privileges go (other namespaces need them).
    let seed = listeners::seed(&mut |path| workloads.by_path(path));
    let unlisted: Vec<String> = (seed.namespaces.iter())
        .filter_map(|(ns, r)| r.as_ref().err().map(|e| format!("{ns}: {e}")))
        .collect();
    tracing::info!(
        namespaces = seed.namespaces.len(),
        listeners = seed.namespaces.values().flatten().flatten().count(),
        all_namespaces_found = seed.complete,
        unlisted = ?unlisted,
        "listener history seeded"
    );
    let collector = Collector::new(loaded.ebpf, workloads, rst_reasons)?;
    let started = Duration::from_nanos(monotonic_ns());
    let state = State::new(
        collector,
        Analysis::new(cfg.thresholds(), seed, started),
        SeriesCap::new(cfg.max_series),
        metrics::agent_metrics(&info)?,
    );
    // Bound before privileges go, so a port below 1024 works with `--user`.
    let listener = std::net::TcpListener::bind(cfg.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| DaemonError::Listen {
            addr: cfg.listen,
            source,
        })?;
    Ok(Started {
        state: Arc::new(state),
        listener,
        pins,
        kernel_log,
        cfg,
    })
}

/// Serves until SIGTERM or SIGINT, then detaches (or, with `keep_pins`, leaves the programs
/// counting for the next daemon).
async fn serve(started: Started) -> Result<(), DaemonError> {
    let Started {
        state,
        listener,
        pins,
        kernel_log,
        cfg,
    } = started;
    if let Some(reader) = kernel_log {
        tokio::spawn(async {
            if let Err(e) = reader.run().await {
                tracing::warn!(target: kernel_log::TARGET, error = %e, "the programs' log can no longer be read");
            }
        });
    }
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|source| DaemonError::Listen {
        addr: cfg.listen,
        source,
    })?;
    tracing::info!(listen = %cfg.listen, "serving /metrics, /healthz, /readyz, /api/targets");
    let endpoints = serve::endpoints(&state);
    let rejected = state.metrics.http_rejected();
    let mut http = tokio::spawn(http::serve(listener, endpoints, rejected, cfg.web_config_file.clone()));

    state.tick()?;
    state.set_ready();

    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut tick = tokio::time::interval(analyse::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stopped = loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = state.tick() {
                    tracing::warn!(error = %loader::error_chain(&e), "collection failed: not ready until one succeeds");
                }
            }
            _ = term.recv() => break Ok("SIGTERM"),
            _ = int.recv() => break Ok("SIGINT"),
            // The server returns only when its socket failed; ended or panicked, exit rather
            // than run blind: the supervisor restarts the daemon, which loses no counts.
            end = &mut http => break Err(DaemonError::Http(match end {
                Ok(e) => format!("the listening socket failed: {e}"),
                Err(e) => e.to_string(),
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
    drop(state);
    stopped.map(|_| ())
}
