//! `refusal-agent trace`: a live stream of individual events. Loads its own copy of the
//! programs with event emission on (the daemon's never emit) and drains its ring buffers on a
//! timer, the connect events' and the listeners' (started, stopped and how, OOM victims): the
//! programs never wake anyone per event. Their own log is on at `debug` here, its records on
//! stderr.
use std::{
    io::Write,
    path::Path,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use agent_common::{Event, ListenEvent, names};
use agent_core::{
    collect::{
        events::{Line, line, listener_line, text},
        labels,
        listening::ListenerEvent,
    },
    config::{AttachMode, KernelLog},
};
use aya::maps::RingBuf;

use crate::{
    collect::{cgroups::CgroupResolver, clock::realtime_offset_ns, workloads::Workloads},
    kernel::{kernel_log::Reader, loader},
};

const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// A `T` the kernel wrote at the start of `bytes`.
///
/// # Safety
/// `bytes` holds at least `size_of::<T>()` bytes, and every bit pattern is a valid `T`.
unsafe fn read<T>(bytes: &[u8]) -> T {
    // SAFETY: as the caller promises; unaligned, as ring buffer records may be.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) }
}

pub fn run(attach: AttachMode, opt_in: &[&str], json: bool, host_root: &Path) -> ExitCode {
    let result = (|| -> Result<(), String> {
        let kernel = loader::prepare().map_err(|e| e.to_string())?;
        let mut loaded =
            loader::load_and_attach(&kernel, attach, opt_in, loader::Flavor::Trace, KernelLog::Debug, None)
                .map_err(|e| e.to_string())?;
        let mut kernel_log = Reader::take(&mut loaded.ebpf).map_err(|e| e.to_string())?;
        let mut ring = |name: &str| {
            let map = loaded.ebpf.take_map(name).ok_or(format!("{name} map missing"))?;
            RingBuf::try_from(map).map_err(|e| e.to_string())
        };
        let (mut events, mut listeners) = (ring(names::EVENTS)?, ring(names::LISTEN_EVENTS)?);
        let mut workloads = Workloads::new(CgroupResolver::new().ok(), host_root);
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [libc::SIGINT, libc::SIGTERM] {
            signal_flag(sig, &stop)?;
        }
        let offset = realtime_offset_ns();
        let mut out = std::io::stdout().lock();
        eprintln!("tracing; Ctrl-C to stop");
        let mut workload = |cgroup_id| workloads.resolve(cgroup_id);
        let mut print = |l: Line| {
            let text = if json {
                serde_json::to_string(&l).unwrap_or_default()
            } else {
                text(&l)
            };
            writeln!(out, "{text}").and_then(|_| out.flush())
        };
        while !stop.load(Ordering::Relaxed) {
            while let Some(item) = events.next() {
                // SAFETY: a whole `Event` (checked length), read unaligned.
                let Some(ev) = (item.len() >= size_of::<Event>()).then(|| unsafe { read::<Event>(&item) }) else {
                    continue;
                };
                let l = line(
                    &ev,
                    workload(ev.cgroup_id).to_string(),
                    &kernel.resolved.rst_reasons,
                    offset,
                );
                if print(l).is_err() {
                    return Ok(()); // stdout closed (piped into head): done.
                }
            }
            while let Some(item) = listeners.next() {
                // SAFETY: as above, a `ListenEvent`.
                let Some(raw) = (item.len() >= size_of::<ListenEvent>()).then(|| unsafe { read::<ListenEvent>(&item) })
                else {
                    continue;
                };
                let comm = labels::comm(&raw.comm).into();
                let Some(ev) = ListenerEvent::decode(&raw, workload(raw.cgroup_id), comm) else {
                    continue;
                };
                if print(listener_line(&ev, offset)).is_err() {
                    return Ok(());
                }
            }
            let malformed =
                kernel_log.drain(|r| eprintln!("kernel {:?}: {} ({}:{})", r.level, r.message, r.file, r.line));
            if malformed > 0 {
                eprintln!("kernel log: {malformed} records could not be read");
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
