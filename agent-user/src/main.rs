//! refusal-agent: why was that connection refused, and will it fix itself?
mod analysis;
mod api;
mod batch;
mod btf;
mod caps;
mod cli;
mod collector;
mod config;
mod daemon;
mod exposition;
mod http;
mod labels;
mod listeners;
mod loader;
mod metrics;
mod offsets;
mod pins;
mod series;
mod status;
mod trace;
mod tracefs;
mod verdict;
mod watch;
mod webconfig;
mod workload;

use std::{io::IsTerminal, process::ExitCode};

use clap::Parser;

use crate::{
    cli::{Cli, Command},
    config::LogFormat,
};

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REFUSAL_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    // glibc's per-thread arenas would each keep their own peak: two arenas bound that. A fixed
    // mmap threshold keeps the default one from rising to the largest buffer ever freed: the
    // parsed BTF (tens of MiB, freed after attaching) then goes back to the system instead of
    // staying as heap, while a collection's buffers (under 2 MiB up to the kernel maps' limits,
    // allocated 4 times a second) are reused from the heap instead of mapped and faulted in anew.
    // SAFETY: mallopt is safe to call before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 2 * 1024 * 1024);
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let cfg = match args.config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("refusal-agent: bad configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            // A bad web config is a usage error: refuse it before loading any program.
            if let Some(path) = &cfg.web_config_file
                && let Err(e) = webconfig::load(path)
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
            init_logging(cfg.log_format);
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
            let started = match daemon::start(cfg, flavor) {
                Ok(s) => s,
                Err(e) => return fail(&e),
            };
            if let (Some(id), Some(pins)) = (&user, started.pins())
                && let Err(e) = pins.chown(id.uid, id.gid)
            {
                return fail(&e);
            }
            // Before the runtime starts its threads: capabilities are per thread.
            match caps::drop_privileges(user.as_ref()) {
                // SAFETY: getuid cannot fail.
                Ok(kept) => {
                    tracing::info!(uid = unsafe { libc::getuid() }, kept = ?caps::names(kept), "privileges dropped")
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
            match runtime.block_on(daemon::serve(started)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Command::Check { attach, connect_sync } => {
            status::check(attach.unwrap_or_default(), loader::opt_in(connect_sync))
        }
        Command::Trace {
            json,
            attach,
            connect_sync,
        } => trace::run(attach.unwrap_or_default(), loader::opt_in(connect_sync), json),
        Command::Status { listen } => status::status(listen),
    }
}
