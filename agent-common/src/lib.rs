//! Types shared across the kernel/user boundary. Every type is `#[repr(C)]` with explicit
//! padding so the layout is identical on both sides and hashing never sees uninitialised bytes.
#![cfg_attr(not(test), no_std)]

/// Length of `task_struct.comm`.
pub const COMM_LEN: usize = 16;

/// `proto` values in [`TargetKey`].
pub mod proto {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub mod tcp_state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const SYN_RECV: i32 = 3;
    pub const FIN_WAIT1: i32 = 4;
    pub const FIN_WAIT2: i32 = 5;
    pub const TIME_WAIT: i32 = 6;
    pub const CLOSE: i32 = 7;
    pub const CLOSE_WAIT: i32 = 8;
    pub const LAST_ACK: i32 = 9;
    pub const LISTEN: i32 = 10;
    pub const CLOSING: i32 = 11;
    pub const NEW_SYN_RECV: i32 = 12;
}

/// Who started an outgoing connect, recorded in process context when the socket enters
/// SYN_SENT and looked up by socket when the failure arrives (often in softirq).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub cgroup_id: u64,
    /// `bpf_ktime_get_ns` when the connect started; lets user space expire entries whose
    /// connect never reached a state change we see.
    pub start_ns: u64,
    pub tgid: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

/// The errnos the programs produce themselves (the others come from the kernel's fields).
pub mod errno {
    pub const ECONNREFUSED: u16 = 111;
}

/// The errnos `tcp_reset()` writes to `sk_err` for a RST received outside SYN_SENT: how the
/// state program tells a RST from the other ways a connection closes.
pub mod reset_errno {
    /// In CLOSE_WAIT.
    pub const EPIPE: i32 = 32;
    /// In any other state.
    pub const ECONNRESET: i32 = 104;
}

/// Per-target aggregation key for failed connects. Addresses are 16 bytes: IPv4 is stored
/// IPv4-mapped (`::ffff:a.b.c.d`) so one key type serves both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TargetKey {
    pub cgroup_id: u64,
    pub daddr: [u8; 16],
    pub comm: [u8; COMM_LEN],
    /// Host byte order.
    pub dport: u16,
    /// Positive errno (`ECONNREFUSED` = 111).
    pub errno: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Where the kernel side had to give something up; index into the `DROPS` per-CPU array.
/// Every variant is exported as `refusal_agent_events_dropped_total{where}`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    /// The owner map was full: the failure is still counted, without process attribution.
    OwnerMapFull = 0,
    /// The per-target map was full: the failure is counted in `OVERFLOW` (per errno).
    TargetMapFull = 1,
    /// An aggregate map of resets or inbound refusals was full: counted in `OVERFLOW`.
    ResetMapFull = 2,
    /// The ring buffer feeding `trace` was full: the event is lost (its count is not).
    TraceRingFull = 3,
    /// The listener ring was full: a listener's start, stop or an OOM kill is lost from the
    /// history (user space then stops claiming `never_listened`).
    ListenRingFull = 4,
}

impl Drop {
    pub const ALL: [Drop; 5] = [
        Drop::OwnerMapFull,
        Drop::TargetMapFull,
        Drop::ResetMapFull,
        Drop::TraceRingFull,
        Drop::ListenRingFull,
    ];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    pub const fn name(self) -> &'static str {
        match self {
            Drop::OwnerMapFull => "owner_map_full",
            Drop::TargetMapFull => "target_map_full",
            Drop::ResetMapFull => "reset_map_full",
            Drop::TraceRingFull => "trace_ring_full",
            Drop::ListenRingFull => "listen_ring_full",
        }
    }
}

/// Slots of the `OVERFLOW` per-CPU array: events that found their aggregate map full are
/// counted here, by the one label that still matters, so totals stay exact.
pub mod overflow {
    /// Connect failures: `proto_index * 256 + errno` (errno clamped to 255; UDP index 1).
    pub const FAILURES: u32 = 0;
    pub const ERRNO_SLOTS: u32 = 256;
    /// Resets received, by TCP state (clamped to 15).
    pub const RESETS_RECEIVED: u32 = 512;
    /// Resets sent, by reason (clamped to 63).
    pub const RESETS_SENT: u32 = 528;
    pub const INBOUND: u32 = 592;
    pub const SLOTS: u32 = 593;
}

/// Aggregate value of the per-target map: count plus when the last one happened
/// (`bpf_ktime_get_ns`), so verdicts see event times, not collection times.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub count: u64,
    pub last_ns: u64,
    /// Of `count`, the failures a RST in SYN_SENT caused: `refusal_resets_received_total`
    /// with `state="syn_sent"`, counted here rather than in a second map update.
    pub resets: u64,
}

/// Resets received on a socket, per remote end and the TCP state the RST hit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResetKey {
    pub cgroup_id: u64,
    pub daddr: [u8; 16],
    pub comm: [u8; COMM_LEN],
    pub dport: u16,
    pub state: u8,
    pub _pad: [u8; 5],
}

/// Resets this host's sockets sent, by reason (`sk_rst_reason`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResetSentKey {
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
    pub reason: u32,
    pub _pad: u32,
}

/// Inbound connection attempts this host refused (RST for NO_SOCKET), by the network namespace
/// that refused (its inode number, as `/proc/<pid>/ns/net` shows it) and local address/port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InboundKey {
    pub laddr: [u8; 16],
    pub netns: u32,
    pub lport: u16,
    pub _pad: u16,
}

/// A TCP socket started or stopped listening, or the OOM killer chose a victim: the listener
/// history's raw material, from the `LISTEN_EVENTS` ring (rare events, drained on a timer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenEvent {
    pub ts_ns: u64,
    /// The task's cgroup: the listener's owner at a start, the closing task at a stop.
    pub cgroup_id: u64,
    /// At a stop: when the closing process last received a RST on a connection, 0 if never
    /// (see [`ResetSeen`]).
    pub reset_ns: u64,
    /// The bound address (IPv4-mapped for IPv4); zero for an OOM kill.
    pub addr: [u8; 16],
    /// At a stop: the peer of that RST.
    pub reset_addr: [u8; 16],
    pub comm: [u8; COMM_LEN],
    /// Network namespace inode number.
    pub netns: u32,
    /// The task (thread group id) that listened, closed, or was chosen by the OOM killer.
    pub tgid: u32,
    pub pid: u32,
    /// At a stop while the task exits: its wait status (signal in the low 7 bits, else the
    /// exit code in bits 8–15).
    pub exit_status: u32,
    /// Host byte order.
    pub port: u16,
    pub reset_port: u16,
    /// [`listen_event`].
    pub kind: u8,
    /// At a stop: the closing task was exiting (`PF_EXITING`).
    pub exiting: u8,
    pub family: u8,
    pub _pad: u8,
}

pub mod listen_event {
    pub const STARTED: u8 = 1;
    pub const STOPPED: u8 = 2;
    pub const OOM_VICTIM: u8 = 3;
}

/// The last RST a process received on one of its connections, by `tgid` (or, for a connection
/// it accepted, whose task is unknown, `cgroup_id | 1 << 63`): a listener that dies just after
/// one was likely killed by an unhandled ECONNRESET.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResetSeen {
    pub ts_ns: u64,
    pub addr: [u8; 16],
    pub port: u16,
    pub _pad: [u8; 6],
}

/// Key of a [`ResetSeen`] known only by cgroup.
pub const RESET_BY_CGROUP: u64 = 1 << 63;

/// One event for `refusal-agent trace` (the daemon never emits them: `EMIT_EVENTS` is false).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub tgid: u32,
    pub kind: u8,
    pub proto: u8,
    /// errno for failures, TCP state for resets received, reason for resets sent.
    pub code: u16,
    pub comm: [u8; COMM_LEN],
    pub daddr: [u8; 16],
    pub saddr: [u8; 16],
    pub dport: u16,
    pub sport: u16,
    pub _pad: u32,
}

/// The `sk_rst_reason` counted for resets on kernels before 6.10, whose `tcp_send_reset` gives no
/// reason: `SK_RST_REASON_NOT_SPECIFIED` where that enum exists (user space labels it the same
/// where it does not).
pub const RST_REASON_NOT_SPECIFIED: u32 = 0;

pub mod event_kind {
    pub const CONNECT_FAILED: u8 = 1;
    pub const RESET_RECEIVED: u8 = 2;
    pub const RESET_SENT: u8 = 3;
    pub const INBOUND_REFUSED: u8 = 4;
}

/// Field offsets resolved from the running kernel (BTF for `struct sock`, the tracefs format
/// file for classic tracepoint records) and handed to the programs as the read-only global
/// [`names::OFFSETS`]: Rust eBPF programs get no CO-RE relocations.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    pub skc_family: u32,
    pub skc_dport: u32,
    pub skc_daddr: u32,
    pub skc_v6_daddr: u32,
    pub sk_protocol: u32,
    pub sk_err: u32,
    pub skc_state: u32,
    /// `sock.tcp_rtx_queue` (its root node) and `inet_connection_sock.icsk_pending` (read
    /// through the `tcp_sock`, which starts with it): at SYN_SENT → CLOSE, a RST has purged
    /// the SYN from the queue while its retransmit timer is still armed; an ICMP error leaves
    /// the SYN queued, a timeout has disarmed the timer.
    pub sk_rtx_queue: u32,
    pub icsk_pending: u32,
    /// Where a connect's ICMP error is when `sk_err` no longer says it: `sock.sk_err_soft` (an
    /// error that came while connect(2) held the socket) and the ICMP error queued on the socket
    /// (`sk_error_queue.qlen`, `.prev` → `sk_buff.cb` as `sock_exterr_skb.ee`), which a
    /// client's `SO_ERROR` does not clear; 0 where missing.
    pub sk_err_soft: u32,
    pub sk_error_queue_qlen: u32,
    pub sk_error_queue_prev: u32,
    pub skb_cb: u32,
    pub exterr_skb_ee: u32,
    /// `tcp_sock.tcp_clock_cache`: `ktime_get_ns()` when TCP last looked at the clock for this
    /// socket (on the segment that ended the connect), so a TCP outcome's time costs no clock
    /// read; 0 where the field is missing.
    pub tcp_clock_cache: u32,
    /// `tcp_sock.rcv_nxt`: `tcp_connect_init()` zeroes it and an accepted SYN-ACK sets it (the
    /// peer's sequence number plus one), so a socket closed with it 0 closed from SYN_SENT;
    /// 0 where missing.
    pub tcp_rcv_nxt: u32,
    /// `sock.sk_cgrp_data.cgroup → cgroup.kn → kernfs_node.id`: the socket's cgroup v2 id.
    pub sk_cgrp_data: u32,
    pub sock_cgroup_data_cgroup: u32,
    /// Non-zero where `sock_cgroup_data` is the word `val` instead (before 5.15): a cgroup
    /// pointer unless one of its two low bits is set (net_cls/net_prio data, or no reference),
    /// when the socket counts as the root cgroup's; `sock_cgroup_data_cgroup` is `val`'s offset.
    pub sock_cgroup_data_tagged: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// `task_struct.comm`, `.tgid` and `.cgroups → css_set.dfl_cgrp` (then `cgroup.kn →
    /// kernfs_node.id`): the connecting task read through its BTF pointer, with no helper
    /// calls; 0 where missing (the helpers then).
    pub task_comm: u32,
    pub task_tgid: u32,
    /// Non-zero where the kernel has `bpf_get_current_task_btf` (5.11+): the current task as a
    /// BTF pointer, read with plain loads; else its address from `bpf_get_current_task`, read
    /// with probe reads, and connect owners from the helpers.
    pub task_btf: u32,
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    /// `task_struct.files → files_struct.fdt → fdtable.fd[fd] → file.private_data (socket) →
    /// socket.sk`: the socket of a failed connect(2), to tell TCP from UDP.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_fd: u32,
    pub fdtable_max_fds: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    /// `sock_common.skc_net.net → net.ns.inum`: a socket's network namespace; `sk_buff.dev →
    /// net_device.nd_net.net`: a packet's.
    pub skc_net: u32,
    pub net_ns_inum: u32,
    pub skb_dev: u32,
    pub net_device_nd_net: u32,
    /// A listener's bound address and port (`skc_num`, host order), and `inet_sock.inet_sport`:
    /// the port it listened on, still there when closing has already released `skc_num`.
    pub skc_rcv_saddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_num: u32,
    pub inet_sport: u32,
    /// `task_struct.flags` (`PF_EXITING`), `.exit_code`, `.pid`, `.signal →
    /// signal_struct.group_exit_code`: how a listener's closing task is ending.
    pub task_flags: u32,
    pub task_exit_code: u32,
    pub task_pid: u32,
    pub task_signal: u32,
    pub signal_group_exit_code: u32,
    /// `sk_rst_reason` NO_SOCKET and `skb_drop_reason` NO_SOCKET on this kernel.
    pub rst_no_socket: u32,
    pub drop_no_socket: u32,
    /// Classic tracepoint record layouts (tracefs format files); 0 when unavailable.
    pub tp: TracepointOffsets,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracepointOffsets {
    pub state_skaddr: u32,
    pub state_oldstate: u32,
    pub state_newstate: u32,
    pub send_reset_skbaddr: u32,
    pub send_reset_skaddr: u32,
    pub send_reset_reason: u32,
    pub error_report_error: u32,
    pub error_report_dport: u32,
    pub error_report_family: u32,
    pub error_report_protocol: u32,
    pub error_report_daddr: u32,
    pub error_report_daddr_v6: u32,
    pub kfree_skb_skbaddr: u32,
    pub kfree_skb_reason: u32,
    /// Before 5.17 the record has `location` (where `kfree_skb` was called) and no reason.
    pub kfree_skb_location: u32,
    pub connect_fd: u32,
    pub connect_uservaddr: u32,
    pub exit_connect_ret: u32,
    pub mark_victim_pid: u32,
}

/// `[start, end)` address pairs in the global [`names::TCP_RCV`]: `tcp_v4_rcv`, `tcp_v6_rcv`
/// and the parts the compiler split off them; unused pairs are `[0, 0)`.
pub const TCP_RCV_RANGES: usize = 4;

/// Slots of the `CONFIG` array map.
pub mod config {
    /// Non-zero when a dedicated connect hook (fentry/kprobe on `tcp_v{4,6}_connect`) records
    /// owners, so the state-change program need not.
    pub const OWNER_FROM_CONNECT: u32 = 0;
    /// Non-zero while `WATCH` holds ports: only then do successful connects cost a lookup.
    pub const WATCHING: u32 = 1;
    /// The generation of programs that counts: see `GENERATION` in the kernel object.
    pub const GENERATION: u32 = 2;
    /// Non-zero when the inbound hook rides on `send_reset` (6.10+: its tracepoint fires for
    /// RSTs sent without a socket); else a program of its own counts them, and this one must not.
    pub const INBOUND_BY_SEND_RESET: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// Names of the maps and globals user space looks up in the object.
pub mod names {
    pub const OWNERS: &str = "OWNERS";
    pub const TARGETS: &str = "TARGETS";
    pub const TARGETS_FOLDED: &str = "TARGETS_FOLDED";
    pub const RESETS_FOLDED: &str = "RESETS_FOLDED";
    pub const RESETS_RECEIVED: &str = "RESETS_RECEIVED";
    pub const RESETS_SENT: &str = "RESETS_SENT";
    pub const INBOUND: &str = "INBOUND";
    pub const OVERFLOW: &str = "OVERFLOW";
    pub const EVENTS: &str = "EVENTS";
    pub const EMIT_EVENTS: &str = "EMIT_EVENTS";
    pub const EMPTY_PROGRAMS: &str = "EMPTY_PROGRAMS";
    pub const GENERATION: &str = "GENERATION";
    pub const DROPS: &str = "DROPS";
    pub const CONFIG: &str = "CONFIG";
    pub const WATCH: &str = "WATCH";
    pub const OFFSETS: &str = "OFFSETS";
    pub const TCP_RCV: &str = "TCP_RCV";
    pub const LISTEN_EVENTS: &str = "LISTEN_EVENTS";
    pub const LAST_RESET: &str = "LAST_RESET";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::Owner {}
    unsafe impl aya::Pod for super::TargetKey {}
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::ResetKey {}
    unsafe impl aya::Pod for super::ResetSentKey {}
    unsafe impl aya::Pod for super::InboundKey {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::ListenEvent {}
    unsafe impl aya::Pod for super::ResetSeen {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Owner>(), 8 + 8 + 4 + 4 + COMM_LEN);
        assert_eq!(size_of::<TargetKey>(), 8 + 16 + COMM_LEN + 2 + 2 + 1 + 3);
        assert_eq!(size_of::<ResetKey>(), 8 + 16 + COMM_LEN + 2 + 1 + 5);
        assert_eq!(size_of::<ResetSentKey>(), 8 + COMM_LEN + 4 + 4);
        assert_eq!(size_of::<InboundKey>(), 16 + 4 + 2 + 2);
        assert_eq!(size_of::<ListenEvent>(), 8 * 3 + 16 * 3 + 4 * 4 + 2 * 2 + 4);
        assert_eq!(size_of::<ResetSeen>(), 8 + 16 + 2 + 6);
        assert_eq!(
            size_of::<Event>(),
            8 + 8 + 4 + 1 + 1 + 2 + COMM_LEN + 16 + 16 + 2 + 2 + 4
        );
        assert_eq!(size_of::<Offsets>() % 4, 0);
    }
}
