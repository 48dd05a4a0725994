//! Reads the kernel's aggregates at collection time (scrape or tick) into a [`Snapshot`] with
//! labels resolved. The kernel counts; this only sums per-CPU slots.
use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::AsFd as _,
    time::{Duration, Instant},
};

use agent_common::{
    Counter, Drop, InboundKey, ListenEvent, Owner, ResetKey, ResetSentKey, TargetKey, config, names, overflow, proto,
    tcp_state,
};
use agent_core::collect::{
    labels::{self, Interned, Label, OTHER},
    listening::ListenerEvent,
    snapshot::{Inbound, Outcome, Overflow, ResetReceived, ResetSent, Snapshot},
    workload::Workload,
};
use aya::{
    Ebpf, Pod,
    maps::{
        Array, HashMap as BpfHashMap, IterableMap, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf,
    },
};
use foldhash::HashMap;

use crate::collect::{batch, clock::monotonic_ns, programs, watch::WatchMap, workloads::Workloads};

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
    #[error("mapping {name} into memory: {source}")]
    Mmap { name: &'static str, source: std::io::Error },
}

/// What a collection reads. The 250 ms tick needs only what verdicts and diagnoses use, and
/// names new workloads (reading the runtimes' files); a scrape reads everything and no file:
/// rows of a cgroup the tick has not named yet wait for the next scrape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Connect outcomes and inbound refusals.
    Verdicts,
    All,
}

pub struct Collector {
    targets: PerCpuHashMap<MapData, TargetKey, Counter>,
    targets_folded: PerCpuHashMap<MapData, TargetKey, Counter>,
    resets_received: PerCpuHashMap<MapData, ResetKey, u64>,
    resets_folded: PerCpuHashMap<MapData, ResetKey, u64>,
    resets_sent: PerCpuHashMap<MapData, ResetSentKey, u64>,
    inbound: PerCpuHashMap<MapData, InboundKey, u64>,
    overflow: PerCpuArray<MapData, u64>,
    drops: PerCpuArray<MapData, u64>,
    owners: BpfHashMap<MapData, u64, Owner>,
    watch: WatchMap,
    config: Array<MapData, u32>,
    listen_events: RingBuf<MapData>,
    /// Ports no episode needs any more, since when: removed after [`UNWATCH_AFTER`].
    unwatched: BTreeMap<u16, Instant>,
    /// The programs (attached while this lives), for their kernel run time.
    ebpf: Ebpf,
    workloads: Workloads,
    rst_reasons: BTreeMap<u32, String>,
    last_gc: Instant,
    owners_expired: u64,
    cache: Cache,
}

/// What earlier collections learnt. Label values are resolved once per raw value: every
/// collection (4 a second, more with scrapes) meets the same comms, errnos and reasons on
/// thousands of keys; bounded by the distinct keys the kernel maps can hold. (Workload names
/// are cached by [`Workloads`].)
#[derive(Default)]
struct Cache {
    interned: Interned,
    reasons: HashMap<u32, Label>,
    /// Entries of each map last time: the snapshot is sized once, not grown and copied.
    sizes: [usize; 4],
}

impl Cache {
    fn reason(&mut self, rst_reasons: &BTreeMap<u32, String>, reason: u32) -> Label {
        let name = self
            .reasons
            .entry(reason)
            .or_insert_with(|| match rst_reasons.get(&reason) {
                Some(r) => r.as_str().into(),
                None => format!("reason_{reason}").into(),
            });
        name.clone()
    }
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, CollectError> {
    let map = ebpf.take_map(name).ok_or(CollectError::MissingMap { name })?;
    T::try_from(map).map_err(|source| CollectError::Map { name, source })
}

/// Calls `f` with every entry of a per-CPU map, its per-CPU values folded by `sum`; reads in
/// batches.
fn entries<K: Pod, V: Pod, R>(
    map: &impl IterableMap<K, PerCpuValues<V>>,
    name: &'static str,
    sum: impl Fn(&[V]) -> R,
    mut f: impl FnMut(K, R),
) -> Result<(), CollectError> {
    batch::for_each(map.map(), true, |k, v: &[V]| f(k, sum(v))).map_err(|source| CollectError::Map { name, source })
}

fn total(v: &[u64]) -> u64 {
    v.iter().sum()
}

impl Collector {
    /// Takes the aggregate maps out of `ebpf` (the programs stay attached through `ebpf`).
    pub fn new(mut ebpf: Ebpf, workloads: Workloads, rst_reasons: BTreeMap<u32, String>) -> Result<Self, CollectError> {
        Ok(Self {
            targets: take(&mut ebpf, names::TARGETS)?,
            targets_folded: take(&mut ebpf, names::TARGETS_FOLDED)?,
            resets_received: take(&mut ebpf, names::RESETS_RECEIVED)?,
            resets_folded: take(&mut ebpf, names::RESETS_FOLDED)?,
            resets_sent: take(&mut ebpf, names::RESETS_SENT)?,
            inbound: take(&mut ebpf, names::INBOUND)?,
            overflow: take(&mut ebpf, names::OVERFLOW)?,
            drops: take(&mut ebpf, names::DROPS)?,
            owners: take(&mut ebpf, names::OWNERS)?,
            watch: match ebpf.take_map(names::WATCH) {
                Some(aya::maps::Map::Array(data)) => WatchMap::new(data).map_err(|source| CollectError::Mmap {
                    name: names::WATCH,
                    source,
                })?,
                _ => return Err(CollectError::MissingMap { name: names::WATCH }),
            },
            config: take(&mut ebpf, names::CONFIG)?,
            listen_events: take(&mut ebpf, names::LISTEN_EVENTS)?,
            unwatched: BTreeMap::new(),
            ebpf,
            workloads,
            rst_reasons,
            last_gc: Instant::now(),
            owners_expired: 0,
            cache: Cache::default(),
        })
    }

    pub fn collect(&mut self, scope: Scope) -> Result<Snapshot, CollectError> {
        if self.last_gc.elapsed() >= OWNER_GC_EVERY {
            self.expire_owners();
        }
        let mut snap = Snapshot::default();
        let Self {
            cache,
            workloads,
            rst_reasons,
            ..
        } = self;
        workloads.next_collection();
        let read_files = scope == Scope::Verdicts;
        if read_files {
            workloads.resolve_pending();
        }
        snap.outcomes.reserve(cache.sizes[0]);
        let fold = |v: &[Counter]| {
            let sum = |f: fn(&Counter) -> u64| v.iter().map(f).sum::<u64>();
            let last_ns = v.iter().map(|c| c.last_ns).max().unwrap_or(0);
            (sum(|c| c.count), last_ns, sum(|c| c.resets))
        };
        // RSTs in SYN_SENT are counted with the failures they caused (see `Counter::resets`).
        let mut syn_sent_resets = Vec::new();
        entries(
            &self.targets,
            names::TARGETS,
            fold,
            |key: TargetKey, (count, last_ns, resets)| {
                let Some(workload) = workloads.name(key.cgroup_id, read_files) else {
                    return;
                };
                let outcome = Outcome {
                    cgroup_id: key.cgroup_id,
                    workload,
                    comm: cache.interned.comm(&key.comm),
                    proto: labels::proto(key.proto),
                    dst_addr: labels::canonical_ip(key.daddr),
                    dst_port: key.dport,
                    errno: (key.errno != 0).then(|| cache.interned.errno(key.errno)),
                    count,
                    last_ns,
                };
                if resets != 0 && scope == Scope::All {
                    syn_sent_resets.push(ResetReceived {
                        workload: outcome.workload.clone(),
                        comm: outcome.comm.clone(),
                        dst_addr: outcome.dst_addr,
                        dst_port: outcome.dst_port,
                        state: labels::tcp_state(tcp_state::SYN_SENT as u8),
                        count: resets,
                    });
                }
                snap.outcomes.push(outcome)
            },
        )?;
        snap.inbound.reserve(cache.sizes[1]);
        entries(&self.inbound, names::INBOUND, total, |key: InboundKey, count| {
            snap.inbound.push(Inbound {
                netns: key.netns,
                local_addr: labels::canonical_ip(key.laddr),
                local_port: key.lport,
                count,
            })
        })?;
        cache.sizes[..2].copy_from_slice(&[snap.outcomes.len(), snap.inbound.len()]);
        if scope == Scope::Verdicts {
            return Ok(snap);
        }
        // Sized by last time's count, the SYN_SENT resets included.
        snap.resets_received.reserve(cache.sizes[2]);
        snap.resets_received.append(&mut syn_sent_resets);
        entries(
            &self.resets_received,
            names::RESETS_RECEIVED,
            total,
            |key: ResetKey, count| {
                let Some(workload) = workloads.name(key.cgroup_id, read_files) else {
                    return;
                };
                snap.resets_received.push(ResetReceived {
                    workload,
                    comm: cache.interned.comm(&key.comm),
                    dst_addr: labels::canonical_ip(key.daddr),
                    dst_port: key.dport,
                    state: labels::tcp_state(key.state),
                    count,
                })
            },
        )?;
        snap.resets_sent.reserve(cache.sizes[3]);
        entries(
            &self.resets_sent,
            names::RESETS_SENT,
            total,
            |key: ResetSentKey, count| {
                let Some(workload) = workloads.name(key.cgroup_id, read_files) else {
                    return;
                };
                snap.resets_sent.push(ResetSent {
                    workload,
                    comm: cache.interned.comm(&key.comm),
                    reason: cache.reason(rst_reasons, key.reason),
                    count,
                })
            },
        )?;
        cache.sizes[2..].copy_from_slice(&[snap.resets_received.len(), snap.resets_sent.len()]);
        snap.overflow = self.overflow()?;
        let mut drops = BTreeMap::new();
        entries(&self.drops, names::DROPS, total, |slot: u32, n| {
            drops.insert(slot, n);
        })?;
        for what in Drop::ALL {
            snap.drops
                .push((what.name(), drops.get(&(what as u32)).copied().unwrap_or(0)));
        }
        snap.drops.push(("owner_expired", self.owners_expired));
        self.programs(&mut snap);
        Ok(snap)
    }

    /// Makes the kernel's watch set follow `ports` (the ports of open episodes).
    pub fn set_watched(&mut self, ports: &BTreeSet<u16>) -> Result<(), CollectError> {
        let now = Instant::now();
        let current: BTreeSet<u16> = self.watch.ports().collect();
        for port in &current {
            if ports.contains(port) {
                self.unwatched.remove(port);
            } else if now.duration_since(*self.unwatched.entry(*port).or_insert(now)) >= UNWATCH_AFTER {
                self.watch.set(*port, false);
                self.unwatched.remove(port);
            }
        }
        for port in ports.difference(&current) {
            self.watch.set(*port, true);
        }
        let on = u32::from(!ports.is_empty() || !self.unwatched.is_empty());
        self.config
            .set(config::WATCHING, on, 0)
            .map_err(|source| CollectError::Map {
                name: names::CONFIG,
                source,
            })
    }

    /// Drains the listener events into `snap` (the tick's, which analysis consumes), with the
    /// kernel's count of those it could not deliver.
    pub fn drain_listeners(&mut self, snap: &mut Snapshot) -> Result<(), CollectError> {
        let Self {
            listen_events,
            cache,
            workloads,
            ..
        } = self;
        while let Some(item) = listen_events.next() {
            if item.len() < size_of::<ListenEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole `ListenEvent` (checked length); read unaligned.
            let raw: ListenEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let workload = workloads.resolve(raw.cgroup_id);
            let comm = cache.interned.comm(&raw.comm);
            snap.listeners.extend(ListenerEvent::decode(&raw, workload, comm));
        }
        let slot = Drop::ListenRingFull as u32;
        snap.listeners_dropped =
            self.drops
                .get(&slot, 0)
                .map(|v| v.iter().sum())
                .map_err(|source| CollectError::Map {
                    name: names::DROPS,
                    source,
                })?;
        Ok(())
    }

    /// Per program: run time and runs, which the kernel only accounts while
    /// `kernel.bpf_stats_enabled=1` (it costs ~50 ns a run), so those metrics exist only then;
    /// and the runs it skipped, always.
    fn programs(&self, snap: &mut Snapshot) {
        let stats_on = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1");
        for (name, prog) in self.ebpf.programs() {
            let Some(c) = prog.fd().ok().and_then(|fd| programs::counters(fd.as_fd()).ok()) else {
                continue;
            };
            if stats_on {
                snap.bpf_stats.push((name.to_string(), c.run_time_ns, c.runs));
            }
            snap.recursion_misses.push((name.to_string(), c.recursion_misses));
        }
    }

    /// What the kernel counted past full maps: destinations folded (the process kept), then
    /// the overflow slots (by protocol and errno, state, reason).
    fn overflow(&mut self) -> Result<Overflow, CollectError> {
        let mut o = Overflow::default();
        let Self { cache, workloads, .. } = self;
        // Unnamed cgroups wait for the next scrape, as in `collect`.
        let sum = |v: &[Counter]| v.iter().fold((0, 0), |(n, r), c| (n + c.count, r + c.resets));
        entries(
            &self.targets_folded,
            names::TARGETS_FOLDED,
            sum,
            |key: TargetKey, (count, resets)| {
                let Some(workload) = workloads.cached(key.cgroup_id) else {
                    return;
                };
                let comm = cache.interned.comm(&key.comm);
                if resets != 0 {
                    let state = labels::tcp_state(tcp_state::SYN_SENT as u8);
                    *o.resets_received
                        .entry((workload.clone(), comm.clone(), state))
                        .or_default() += resets;
                }
                let errno = cache.interned.errno(key.errno);
                *o.failures
                    .entry((workload, comm, labels::proto(key.proto), errno))
                    .or_default() += count;
            },
        )?;
        entries(
            &self.resets_folded,
            names::RESETS_FOLDED,
            total,
            |key: ResetKey, count| {
                let Some(workload) = workloads.cached(key.cgroup_id) else {
                    return;
                };
                let state = labels::tcp_state(key.state);
                *o.resets_received
                    .entry((workload, cache.interned.comm(&key.comm), state))
                    .or_default() += count;
            },
        )?;
        let mut slots = Vec::new();
        entries(&self.overflow, names::OVERFLOW, total, |slot: u32, n| {
            if n > 0 {
                slots.push((slot, n));
            }
        })?;
        let (anyone, other) = (Workload::from(OTHER), Label::from(OTHER));
        for (slot, count) in slots {
            if slot < overflow::RESETS_RECEIVED {
                let p = if slot >= overflow::ERRNO_SLOTS {
                    proto::UDP
                } else {
                    proto::TCP
                };
                let errno = self.cache.interned.errno((slot % overflow::ERRNO_SLOTS) as u16);
                *o.failures
                    .entry((anyone.clone(), other.clone(), labels::proto(p), errno))
                    .or_default() += count;
            } else if slot < overflow::RESETS_SENT {
                let state = labels::tcp_state((slot - overflow::RESETS_RECEIVED) as u8);
                *o.resets_received
                    .entry((anyone.clone(), other.clone(), state))
                    .or_default() += count;
            } else if slot < overflow::INBOUND {
                *o.resets_sent
                    .entry(self.cache.reason(&self.rst_reasons, slot - overflow::RESETS_SENT))
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
