//! Reads the kernel's aggregates at collection time (scrape or tick) into a [`Snapshot`] with
//! labels resolved. The kernel counts; this only sums per-CPU slots.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use agent_common::{
    Counter, Drop, InboundKey, Owner, ResetKey, ResetSentKey, TargetKey, config, names, overflow, proto,
};
use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues},
};

use crate::{labels, workload::CgroupResolver};

/// Owner entries go when their socket closes. One older than this is a long-lived connection
/// (its resets then fall back to the socket's cgroup) or the leftover of a connect that failed
/// before SYN_SENT under the fentry/kprobe connect hook; both go, so the map cannot fill up.
const OWNER_MAX_AGE: Duration = Duration::from_secs(6 * 3600);
const OWNER_GC_EVERY: Duration = Duration::from_secs(60);
/// The kernel watches a port from its first refusal; one the analysis has not seen yet must
/// not be unwatched in between, so removal waits a few ticks.
const UNWATCH_AFTER: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("map {name} missing from the kernel object")]
    MissingMap { name: &'static str },
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: MapError },
}

/// Connect outcomes to one target with one errno, labels resolved. `errno` is `None` for
/// successes (only collected for watched ports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub cgroup_id: u64,
    pub workload: String,
    pub comm: String,
    pub proto: &'static str,
    pub dst_addr: String,
    pub dst_port: u16,
    pub errno: Option<String>,
    pub count: u64,
    /// `CLOCK_MONOTONIC` of the last one.
    pub last_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetReceived {
    pub workload: String,
    pub comm: String,
    pub dst_addr: String,
    pub dst_port: u16,
    pub state: &'static str,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetSent {
    pub workload: String,
    pub comm: String,
    pub reason: String,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    pub local_addr: String,
    pub local_port: u16,
    pub count: u64,
}

/// Counts the kernel could not key by their full label set (map full), by what it kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overflow {
    /// `(proto, errno) → count`.
    pub failures: BTreeMap<(&'static str, String), u64>,
    pub resets_received: BTreeMap<&'static str, u64>,
    pub resets_sent: BTreeMap<String, u64>,
    pub inbound: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Failures and (for watched ports) successes.
    pub outcomes: Vec<Outcome>,
    pub resets_received: Vec<ResetReceived>,
    pub resets_sent: Vec<ResetSent>,
    pub inbound: Vec<Inbound>,
    pub overflow: Overflow,
    /// `(where, count)` for every drop point, zeros included.
    pub drops: Vec<(&'static str, u64)>,
    /// `(program, kernel run time ns, runs)` while `kernel.bpf_stats_enabled=1`, else empty.
    pub bpf_stats: Vec<(String, u64, u64)>,
}

impl Snapshot {
    pub fn failures(&self) -> impl Iterator<Item = (&Outcome, &str)> {
        self.outcomes.iter().filter_map(|o| Some((o, o.errno.as_deref()?)))
    }
}

/// What a collection reads. The 250 ms tick needs only what verdicts and diagnoses use; a
/// scrape reads everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Connect outcomes and inbound refusals.
    Verdicts,
    All,
}

pub struct Collector {
    targets: PerCpuHashMap<MapData, TargetKey, Counter>,
    resets_received: PerCpuHashMap<MapData, ResetKey, u64>,
    resets_sent: PerCpuHashMap<MapData, ResetSentKey, u64>,
    inbound: PerCpuHashMap<MapData, InboundKey, u64>,
    overflow: PerCpuArray<MapData, u64>,
    drops: PerCpuArray<MapData, u64>,
    owners: HashMap<MapData, u64, Owner>,
    watch: HashMap<MapData, u16, u8>,
    config: Array<MapData, u32>,
    /// Ports no episode needs any more, since when: removed after [`UNWATCH_AFTER`].
    unwatched: BTreeMap<u16, Instant>,
    /// The programs (attached while this lives), for their kernel run time.
    ebpf: Ebpf,
    resolver: Option<CgroupResolver>,
    rst_reasons: BTreeMap<u32, String>,
    last_gc: Instant,
    owners_expired: u64,
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, CollectError> {
    let map = ebpf.take_map(name).ok_or(CollectError::MissingMap { name })?;
    T::try_from(map).map_err(|source| CollectError::Map { name, source })
}

/// Every entry of a per-CPU hash with its per-CPU values folded by `sum`.
fn entries<K: Pod, V: Pod, R>(
    map: &PerCpuHashMap<MapData, K, V>,
    name: &'static str,
    sum: impl Fn(&PerCpuValues<V>) -> R,
) -> Result<Vec<(K, R)>, CollectError> {
    map.iter()
        .map(|e| {
            e.map(|(k, v)| (k, sum(&v)))
                .map_err(|source| CollectError::Map { name, source })
        })
        .collect()
}

fn total(v: &PerCpuValues<u64>) -> u64 {
    v.iter().sum()
}

impl Collector {
    /// Takes the aggregate maps out of `ebpf` (the programs stay attached through `ebpf`).
    pub fn new(
        mut ebpf: Ebpf,
        resolver: Option<CgroupResolver>,
        rst_reasons: BTreeMap<u32, String>,
    ) -> Result<Self, CollectError> {
        Ok(Self {
            targets: take(&mut ebpf, names::TARGETS)?,
            resets_received: take(&mut ebpf, names::RESETS_RECEIVED)?,
            resets_sent: take(&mut ebpf, names::RESETS_SENT)?,
            inbound: take(&mut ebpf, names::INBOUND)?,
            overflow: take(&mut ebpf, names::OVERFLOW)?,
            drops: take(&mut ebpf, names::DROPS)?,
            owners: take(&mut ebpf, names::OWNERS)?,
            watch: take(&mut ebpf, names::WATCH)?,
            config: take(&mut ebpf, names::CONFIG)?,
            unwatched: BTreeMap::new(),
            ebpf,
            resolver,
            rst_reasons,
            last_gc: Instant::now(),
            owners_expired: 0,
        })
    }

    fn workload(&mut self, cgroup_id: u64) -> String {
        match self.resolver.as_mut() {
            Some(r) => r.workload(cgroup_id),
            None => format!("cgroup:{cgroup_id}"),
        }
    }

    pub fn reason(&self, reason: u32) -> String {
        self.rst_reasons
            .get(&reason)
            .cloned()
            .unwrap_or_else(|| format!("reason_{reason}"))
    }

    pub fn collect(&mut self, scope: Scope) -> Result<Snapshot, CollectError> {
        if self.last_gc.elapsed() >= OWNER_GC_EVERY {
            self.expire_owners();
        }
        let mut snap = Snapshot::default();
        let targets = entries(&self.targets, names::TARGETS, |v| {
            (
                v.iter().map(|c| c.count).sum::<u64>(),
                v.iter().map(|c| c.last_ns).max().unwrap_or(0),
            )
        })?;
        for (key, (count, last_ns)) in targets {
            snap.outcomes.push(Outcome {
                cgroup_id: key.cgroup_id,
                workload: self.workload(key.cgroup_id),
                comm: labels::comm(&key.comm),
                proto: labels::proto(key.proto),
                dst_addr: labels::addr(key.daddr),
                dst_port: key.dport,
                errno: (key.errno != 0).then(|| labels::errno(key.errno)),
                count,
                last_ns,
            });
        }
        for (key, count) in entries(&self.inbound, names::INBOUND, total)? {
            snap.inbound.push(Inbound {
                local_addr: labels::addr(key.laddr),
                local_port: key.lport,
                count,
            });
        }
        if scope == Scope::Verdicts {
            return Ok(snap);
        }
        for (key, count) in entries(&self.resets_received, names::RESETS_RECEIVED, total)? {
            snap.resets_received.push(ResetReceived {
                workload: self.workload(key.cgroup_id),
                comm: labels::comm(&key.comm),
                dst_addr: labels::addr(key.daddr),
                dst_port: key.dport,
                state: labels::tcp_state(key.state),
                count,
            });
        }
        for (key, count) in entries(&self.resets_sent, names::RESETS_SENT, total)? {
            snap.resets_sent.push(ResetSent {
                workload: self.workload(key.cgroup_id),
                comm: labels::comm(&key.comm),
                reason: self.reason(key.reason),
                count,
            });
        }
        snap.overflow = self.overflow()?;
        let map_err = |source| CollectError::Map {
            name: names::DROPS,
            source,
        };
        for what in Drop::ALL {
            snap.drops
                .push((what.name(), total(&self.drops.get(&(what as u32), 0).map_err(map_err)?)));
        }
        snap.drops.push(("owner_expired", self.owners_expired));
        snap.bpf_stats = self.bpf_stats();
        Ok(snap)
    }

    /// Makes the kernel's watch set follow `ports` (the ports of open episodes).
    pub fn set_watched(&mut self, ports: &std::collections::BTreeSet<u16>) -> Result<(), CollectError> {
        let map_err = |source| CollectError::Map {
            name: names::WATCH,
            source,
        };
        let now = Instant::now();
        let current: Vec<u16> = self.watch.keys().filter_map(Result::ok).collect();
        for port in &current {
            if ports.contains(port) {
                self.unwatched.remove(port);
            } else if now.duration_since(*self.unwatched.entry(*port).or_insert(now)) >= UNWATCH_AFTER {
                self.watch.remove(port).map_err(map_err)?;
                self.unwatched.remove(port);
            }
        }
        for port in ports.iter().filter(|p| !current.contains(p)) {
            self.watch.insert(port, 1, 0).map_err(map_err)?;
        }
        let on = u32::from(!ports.is_empty() || !self.unwatched.is_empty());
        self.config
            .set(config::WATCHING, on, 0)
            .map_err(|source| CollectError::Map {
                name: names::CONFIG,
                source,
            })
    }

    /// The kernel only accounts run time while `kernel.bpf_stats_enabled=1` (it costs ~50 ns a
    /// run), so the metrics exist only then.
    fn bpf_stats(&self) -> Vec<(String, u64, u64)> {
        if std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() != "1") {
            return Vec::new();
        }
        self.ebpf
            .programs()
            .filter_map(|(name, prog)| {
                let info = prog.info().ok()?;
                Some((name.to_string(), info.run_time().as_nanos() as u64, info.run_count()))
            })
            .collect()
    }

    fn overflow(&self) -> Result<Overflow, CollectError> {
        let mut o = Overflow::default();
        for (slot, values) in self.overflow.iter().enumerate() {
            let count = total(&values.map_err(|source| CollectError::Map {
                name: names::OVERFLOW,
                source,
            })?);
            if count == 0 {
                continue;
            }
            let slot = slot as u32;
            if slot < overflow::RESETS_RECEIVED {
                let p = if slot >= overflow::ERRNO_SLOTS {
                    proto::UDP
                } else {
                    proto::TCP
                };
                let errno = labels::errno((slot % overflow::ERRNO_SLOTS) as u16);
                *o.failures.entry((labels::proto(p), errno)).or_default() += count;
            } else if slot < overflow::RESETS_SENT {
                *o.resets_received
                    .entry(labels::tcp_state((slot - overflow::RESETS_RECEIVED) as u8))
                    .or_default() += count;
            } else if slot < overflow::INBOUND {
                *o.resets_sent
                    .entry(self.reason(slot - overflow::RESETS_SENT))
                    .or_default() += count;
            } else {
                o.inbound += count;
            }
        }
        Ok(o)
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
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
