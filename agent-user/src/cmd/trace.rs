//! `refusal-agent trace`: a live stream of individual events. Loads its own copy of the
//! programs with event emission on (the daemon's never emit) and drains the ring buffer on a
//! timer: the programs never wake anyone per event.
use std::{
    io::Write,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use agent_common::{Event, names};
use agent_core::{
    collect::events::{line, text},
    config::AttachMode,
};
use aya::maps::RingBuf;

use crate::{
    collect::{cgroups::CgroupResolver, clock::monotonic_ns},
    kernel::loader,
};

const DRAIN_EVERY: Duration = Duration::from_millis(100);

fn realtime_offset_ns() -> i128 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_nanos() as i128 - i128::from(monotonic_ns())
}

pub fn run(attach: AttachMode, opt_in: &[&str], json: bool) -> ExitCode {
    let result = (|| -> Result<(), String> {
        let kernel = loader::prepare().map_err(|e| e.to_string())?;
        let mut loaded =
            loader::load_and_attach(&kernel, attach, opt_in, loader::Flavor::Trace, None).map_err(|e| e.to_string())?;
        let map = loaded.ebpf.take_map(names::EVENTS).ok_or("EVENTS map missing")?;
        let mut ring = RingBuf::try_from(map).map_err(|e| e.to_string())?;
        let mut resolver = CgroupResolver::new().ok();
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [libc::SIGINT, libc::SIGTERM] {
            signal_flag(sig, &stop)?;
        }
        let offset = realtime_offset_ns();
        let mut out = std::io::stdout().lock();
        eprintln!("tracing; Ctrl-C to stop");
        while !stop.load(Ordering::Relaxed) {
            while let Some(item) = ring.next() {
                if item.len() < size_of::<Event>() {
                    continue;
                }
                // SAFETY: the kernel wrote a whole `Event` (checked length); read unaligned.
                let ev: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                let workload = match resolver.as_mut() {
                    Some(r) => r.workload(ev.cgroup_id),
                    None => format!("cgroup:{}", ev.cgroup_id),
                };
                let l = line(&ev, workload, &kernel.resolved.rst_reasons, offset);
                let text = if json {
                    serde_json::to_string(&l).unwrap_or_default()
                } else {
                    text(&l)
                };
                if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
                    return Ok(()); // stdout closed (piped into head): done.
                }
            }
            std::thread::sleep(DRAIN_EVERY);
        }
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("refusal-agent trace: {e}");
            ExitCode::from(1)
        }
    }
}

static STOP: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

extern "C" fn on_signal(_: libc::c_int) {
    if let Some(s) = STOP.get() {
        s.store(true, Ordering::Relaxed);
    }
}

/// Sets `flag` on `sig`: Ctrl-C ends the loop and the programs detach on drop.
fn signal_flag(sig: libc::c_int, flag: &Arc<AtomicBool>) -> Result<(), String> {
    let _ = STOP.set(flag.clone());
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    let prev = unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    if prev == libc::SIG_ERR {
        Err(format!("installing a handler for signal {sig}"))
    } else {
        Ok(())
    }
}
