//! The eBPF programs' own log (aya-log-ebpf 0.2, `agent-ebpf/src/log.rs`): the level fixed at
//! load, and the reader that hands each record to `tracing` under [`TARGET`]. aya-log 0.3's
//! reader panics on a malformed record; this one decodes with `agent_core::kernel::log_record`
//! and counts what it cannot read. The ring is this copy's own: never pinned (`pins.rs`), so a
//! predecessor's programs, idle until they are detached, never share it.
use std::os::fd::AsRawFd;

use agent_core::{
    config::KernelLog,
    kernel::log_record::{self, Level, Record},
};
use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};

/// Where the records appear in the daemon's log (`REFUSAL_LOG=info,refusal_agent::ebpf=debug`).
pub const TARGET: &str = "refusal_agent::ebpf";
/// aya-log-ebpf 0.2's ring buffer of records (128 KiB).
pub const RING: &str = "AYA_LOGS";
/// aya-log-ebpf 0.2's level global: 0 off, 1 error … 5 trace; a call logs when its level is at
/// most this. Frozen at load, so the verifier drops the calls above it.
pub const LEVEL: &str = "AYA_LOG_LEVEL";

/// The level the programs load with: the configured one, or what the `tracing` filter asks for
/// [`TARGET`] by name, whichever is more verbose.
pub fn effective(configured: KernelLog, filter: Option<&str>) -> KernelLog {
    configured.max(filter.map_or(KernelLog::Off, |f| KernelLog::from_filter(f, TARGET)))
}

/// `level` as `AYA_LOG_LEVEL` holds it.
pub fn global(level: KernelLog) -> u8 {
    level as u8
}

/// Reads the programs' log ring; records that cannot be decoded are counted, never trusted.
pub struct Reader {
    ring: RingBuf<MapData>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("the kernel object has no {RING} map")]
    Missing,
    #[error("{RING}: {0}")]
    Map(#[from] aya::maps::MapError),
}

impl Reader {
    /// Takes the ring out of `ebpf`, where the programs log (`level` not off).
    pub fn take(ebpf: &mut Ebpf) -> Result<Reader, ReaderError> {
        let map = ebpf.take_map(RING).ok_or(ReaderError::Missing)?;
        Ok(Reader {
            ring: RingBuf::try_from(map)?,
        })
    }

    /// Hands every record waiting to `out`; returns how many were malformed (and skipped).
    pub fn drain(&mut self, mut out: impl FnMut(Record)) -> u64 {
        let mut malformed = 0;
        while let Some(item) = self.ring.next() {
            match log_record::decode(&item) {
                Ok(r) => out(r),
                Err(_) => malformed += 1,
            }
        }
        malformed
    }

    /// The daemon's reader: woken by the ring (each record wakes it; they are rare), each
    /// record a `tracing` event.
    pub async fn run(self) -> std::io::Result<()> {
        // SAFETY: the descriptor is the ring's, owned by `self.ring` and open until the
        // `AsyncFd` drops it with `self`; `as_raw_fd` always returns that one.
        let mut fd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        loop {
            let mut ready = fd.readable_mut().await?;
            let malformed = ready.get_inner_mut().drain(emit);
            if malformed > 0 {
                tracing::warn!(target: TARGET, malformed, "kernel log records that could not be read were skipped");
            }
            ready.clear_ready();
        }
    }
}

impl AsRawFd for Reader {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.ring.as_raw_fd()
    }
}

/// One record as a `tracing` event at its own level, with the program source that logged it.
pub fn emit(r: Record) {
    macro_rules! at {
        ($level:expr) => {
            tracing::event!(target: TARGET, $level, module = %r.module, site = %format_args!("{}:{}", r.file, r.line), "{}", r.message)
        };
    }
    match r.level {
        Level::Error => at!(tracing::Level::ERROR),
        Level::Warn => at!(tracing::Level::WARN),
        Level::Info => at!(tracing::Level::INFO),
        Level::Debug => at!(tracing::Level::DEBUG),
        Level::Trace => at!(tracing::Level::TRACE),
    }
}
