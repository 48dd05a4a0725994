//! Reads the kernel's aggregates at collection time (scrape or tick) into a [`Snapshot`] with
//! workload names resolved. The kernel counts; this only sums per-CPU slots.
use std::time::{Duration, Instant};

use agent_common::{Drop, OVERFLOW_SLOTS, Owner, TargetKey, names, proto};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap},
};

use crate::{labels, workload::CgroupResolver};

/// Connects older than this cannot still be in SYN_SENT (the kernel gives up after
/// `tcp_syn_retries`); their owner entries are leftovers of connects that failed before the
/// state change (only possible with the fentry/kprobe connect hook).
const OWNER_MAX_AGE: Duration = Duration::from_secs(600);
const OWNER_GC_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("map {name} missing from the kernel object")]
    MissingMap { name: &'static str },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
}

/// Failed connects to one target with one errno, labels resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub workload: String,
    pub comm: String,
    pub proto: &'static str,
    pub dst_addr: String,
    pub dst_port: u16,
    pub errno: String,
    pub count: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub failures: Vec<Failure>,
    /// Failures that found the kernel's target map full: `(proto, errno, count)`.
    pub overflow: Vec<(&'static str, String, u64)>,
    /// `(where, count)` for every drop point, zeros included.
    pub drops: Vec<(&'static str, u64)>,
}

pub struct Collector {
    failures: PerCpuHashMap<MapData, TargetKey, u64>,
    overflow: PerCpuArray<MapData, u64>,
    drops: PerCpuArray<MapData, u64>,
    owners: HashMap<MapData, u64, Owner>,
    resolver: Option<CgroupResolver>,
    last_gc: Instant,
    owners_expired: u64,
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, CollectError> {
    let map = ebpf
        .take_map(name)
        .ok_or(CollectError::MissingMap { name })?;
    T::try_from(map).map_err(|source| CollectError::Map { name, source })
}

impl Collector {
    /// Takes the aggregate maps out of `ebpf` (the programs stay attached through `ebpf`).
    pub fn new(ebpf: &mut Ebpf, resolver: Option<CgroupResolver>) -> Result<Self, CollectError> {
        Ok(Self {
            failures: take(ebpf, names::FAILURES)?,
            overflow: take(ebpf, names::OVERFLOW)?,
            drops: take(ebpf, names::DROPS)?,
            owners: take(ebpf, names::OWNERS)?,
            resolver,
            last_gc: Instant::now(),
            owners_expired: 0,
        })
    }

    pub fn collect(&mut self) -> Result<Snapshot, CollectError> {
        if self.last_gc.elapsed() >= OWNER_GC_EVERY {
            self.expire_owners();
        }
        let map_err = |name| move |source| CollectError::Map { name, source };
        let mut snap = Snapshot::default();
        for entry in self.failures.iter() {
            let (key, values) = entry.map_err(map_err(names::FAILURES))?;
            let workload = match self.resolver.as_mut() {
                Some(r) => r.workload(key.cgroup_id),
                None => format!("cgroup:{}", key.cgroup_id),
            };
            snap.failures.push(Failure {
                workload,
                comm: labels::comm(&key.comm),
                proto: labels::proto(key.proto),
                dst_addr: labels::addr(key.daddr),
                dst_port: key.dport,
                errno: labels::errno(key.errno),
                count: values.iter().sum(),
            });
        }
        for (slot, values) in self.overflow.iter().enumerate() {
            let count: u64 = values.map_err(map_err(names::OVERFLOW))?.iter().sum();
            if count > 0 {
                let p = if slot as u32 >= OVERFLOW_SLOTS {
                    proto::UDP
                } else {
                    proto::TCP
                };
                snap.overflow.push((
                    labels::proto(p),
                    labels::errno((slot as u32 % OVERFLOW_SLOTS) as u16),
                    count,
                ));
            }
        }
        for what in Drop::ALL {
            let values = self
                .drops
                .get(&(what as u32), 0)
                .map_err(map_err(names::DROPS))?;
            snap.drops.push((what.name(), values.iter().sum()));
        }
        snap.drops.push(("owner_expired", self.owners_expired));
        Ok(snap)
    }

    fn expire_owners(&mut self) {
        self.last_gc = Instant::now();
        let now = monotonic_ns();
        let stale: Vec<u64> = self
            .owners
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, o)| now.saturating_sub(o.start_ns) > OWNER_MAX_AGE.as_nanos() as u64)
            .map(|(k, _)| k)
            .collect();
        for k in stale {
            if self.owners.remove(&k).is_ok() {
                self.owners_expired += 1;
            }
        }
    }
}

/// `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
