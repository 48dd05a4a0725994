//! refusal-agent: why was that connection refused, and will it fix itself?
use std::process::ExitCode;

use agent_core::kernel::hooks::opt_in;
use clap::Parser;
use refusal_agent::{
    cli::{Cli, Command},
    cmd,
};

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
    match Cli::parse().command {
        Command::Run(args) => cmd::run::main(&args),
        Command::Check { attach, connect_sync } => cmd::check::run(attach.unwrap_or_default(), opt_in(connect_sync)),
        Command::Trace {
            json,
            attach,
            connect_sync,
            host_root,
        } => cmd::trace::run(attach.unwrap_or_default(), opt_in(connect_sync), json, &host_root),
        Command::Status { listen } => cmd::status::run(listen),
    }
}
