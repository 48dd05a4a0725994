//! The maps user space reads or writes and the globals its loader sets: declarations only, so
//! every name it finds them by is here. Kernel-only working space stays private to the one
//! module that uses it (`SCRATCH` in runtime, `OWNER_SLOTS` in owner, `CONNECTING` in
//! syscall, `LAST_RESET` in listen), with the type it holds.
use agent_common::{Counter, Drop, InboundKey, Owner, ResetKey, ResetSentKey, TargetKey, overflow};
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};

/// Connects in flight and client connections alive: socket address → who started it, for the
/// sockets whose slot in `owner::SLOTS` another socket holds. Deleted when the socket closes.
#[map(name = "OWNERS")]
pub static OWNERS: HashMap<u64, Owner> = HashMap::with_max_entries(65536, 0);

/// Destination ports with an open refusal episode, a byte per port (non-zero: watched):
/// successful connects to them are counted (errno 0 in `TARGETS`) so verdicts see the target
/// come up. A failure sets its port at once (a success right after a refusal is not missed);
/// user space clears ports whose episodes end. An array, so the check on every successful
/// connect and every failure is a few inlined instructions, not a hash lookup; memory-mapped
/// by user space, which scans it on every tick without a syscall.
#[map(name = "WATCH")]
pub static WATCH: Array<u8> = Array::with_max_entries(1 << 16, BPF_F_MMAPABLE);

/// Connect outcomes per target and errno (errno 0: a success to a port being watched).
/// Never evicted: when full, failures go to `OVERFLOW`.
#[map(name = "TARGETS")]
pub static TARGETS: PerCpuHashMap<TargetKey, Counter> = PerCpuHashMap::with_max_entries(16384, 0);

/// Failures (and their SYN_SENT resets) that found `TARGETS` full, destination zeroed: a port
/// scan past the map's size stays attributed to its scanner. Full too: `OVERFLOW`.
#[map(name = "TARGETS_FOLDED")]
pub static TARGETS_FOLDED: PerCpuHashMap<TargetKey, Counter> = PerCpuHashMap::with_max_entries(4096, 0);

#[map(name = "RESETS_RECEIVED")]
pub static RESETS_RECEIVED: PerCpuHashMap<ResetKey, u64> = PerCpuHashMap::with_max_entries(8192, 0);

/// Resets received that found `RESETS_RECEIVED` full, destination zeroed, as `TARGETS_FOLDED`.
#[map(name = "RESETS_FOLDED")]
pub static RESETS_FOLDED: PerCpuHashMap<ResetKey, u64> = PerCpuHashMap::with_max_entries(4096, 0);

#[map(name = "RESETS_SENT")]
pub static RESETS_SENT: PerCpuHashMap<ResetSentKey, u64> = PerCpuHashMap::with_max_entries(4096, 0);

#[map(name = "INBOUND")]
pub static INBOUND: PerCpuHashMap<InboundKey, u64> = PerCpuHashMap::with_max_entries(16384, 0);

/// Events that found their aggregate map full, by the slots of [`overflow`].
#[map(name = "OVERFLOW")]
pub static OVERFLOW: PerCpuArray<u64> = PerCpuArray::with_max_entries(overflow::SLOTS, 0);

/// What the kernel side had to give up, by [`Drop`].
#[map(name = "DROPS")]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Drop::COUNT, 0);

/// Runtime switches written by user space once it knows which attach modes won, indexed by
/// [`agent_common::config`].
#[map(name = "CONFIG")]
pub static CONFIG: Array<u32> = Array::with_max_entries(agent_common::config::COUNT, 0);

/// Individual events for `refusal-agent trace`, without wakeups (it polls).
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Listeners started and stopped, and OOM victims (`agent_common::ListenEvent`): rare events,
/// which the daemon's tick drains without being woken. 2,700 fit, more than a crash loop makes
/// between two ticks; a full ring is counted (`Drop::ListenRingFull`).
#[map(name = "LISTEN_EVENTS")]
pub static LISTEN_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

// The globals below are rewritten by the loader before load: read them with `read_volatile`,
// or the compiler folds in the zeros written here.

/// True only in the `trace` command's instance; the daemon's verifier prunes the emit paths.
#[unsafe(no_mangle)]
pub static EMIT_EVENTS: u8 = 0;

/// Benchmarks only: every program returns at once, to measure the cost of being attached at
/// all (the "floor"). Read-only, so the verifier prunes the check from the real programs.
#[unsafe(no_mangle)]
pub static EMPTY_PROGRAMS: u8 = 0;

/// This copy's generation. A copy counts only while `CONFIG[GENERATION]` holds its own, so a
/// restarted daemon attaches its programs next to its predecessor's pinned ones and takes over
/// with one map write: no refusal is missed or counted twice. Recording an owner is idempotent;
/// forgetting one is not (an idle copy running first would hide it from the counting one), so
/// it is gated too.
#[unsafe(no_mangle)]
pub static GENERATION: u32 = 0;

/// Where `tcp_v4_rcv` and `tcp_v6_rcv` lie (`[start, end)` pairs from `/proc/kallsyms`): before
/// 5.17 `kfree_skb` tells a SYN dropped for want of a socket only by being called from them.
#[unsafe(no_mangle)]
pub static TCP_RCV: [u64; 2 * agent_common::TCP_RCV_RANGES] = [0; 2 * agent_common::TCP_RCV_RANGES];
