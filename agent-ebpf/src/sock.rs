//! Reading kernel struct fields at offsets resolved by user space from the running kernel.
use agent_common::Offsets;
use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_kernel, generated::bpf_skc_to_tcp_sock},
    programs::TracePointContext,
};

use crate::{log, runtime};

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

#[unsafe(no_mangle)]
pub(crate) static OFFSETS: Offsets = Offsets {
    skc_family: 0,
    skc_dport: 0,
    skc_daddr: 0,
    skc_v6_daddr: 0,
    sk_protocol: 0,
    sk_err: 0,
    skc_state: 0,
    sk_rtx_queue: 0,
    icsk_pending: 0,
    sk_err_soft: 0,
    sk_error_queue_qlen: 0,
    sk_error_queue_prev: 0,
    skb_cb: 0,
    exterr_skb_ee: 0,
    tcp_clock_cache: 0,
    tcp_rcv_nxt: 0,
    sk_cgrp_data: 0,
    sock_cgroup_data_cgroup: 0,
    sock_cgroup_data_tagged: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    task_comm: 0,
    task_tgid: 0,
    task_btf: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    skb_head: 0,
    skb_network_header: 0,
    skb_transport_header: 0,
    task_files: 0,
    files_fdt: 0,
    fdtable_fd: 0,
    fdtable_max_fds: 0,
    file_private_data: 0,
    socket_sk: 0,
    skc_net: 0,
    net_ns_inum: 0,
    skb_dev: 0,
    net_device_nd_net: 0,
    skc_rcv_saddr: 0,
    skc_v6_rcv_saddr: 0,
    skc_num: 0,
    inet_sport: 0,
    task_flags: 0,
    task_exit_code: 0,
    task_pid: 0,
    task_signal: 0,
    signal_group_exit_code: 0,
    rst_no_socket: 0,
    drop_no_socket: 0,
    tp: agent_common::TracepointOffsets {
        state_skaddr: 0,
        state_oldstate: 0,
        state_newstate: 0,
        send_reset_skbaddr: 0,
        send_reset_skaddr: 0,
        send_reset_reason: 0,
        error_report_error: 0,
        error_report_dport: 0,
        error_report_family: 0,
        error_report_protocol: 0,
        error_report_daddr: 0,
        error_report_daddr_v6: 0,
        kfree_skb_skbaddr: 0,
        kfree_skb_reason: 0,
        kfree_skb_location: 0,
        connect_fd: 0,
        connect_uservaddr: 0,
        exit_connect_ret: 0,
        mark_victim_pid: 0,
    },
};

/// One field of `OFFSETS` (`off!(sk_err)`, `off!(tp.state_skaddr)`): a single load. The loader
/// rewrites `OFFSETS` before load; the volatile read keeps the compiler from folding the zeros
/// above into the program (the verifier then knows the real value: the map is frozen).
macro_rules! off {
    ($($field:ident).+) => {{
        // SAFETY: reading a field of a static (callers may already be in an unsafe block).
        #[allow(unused_unsafe)]
        let v = unsafe { core::ptr::read_volatile(core::ptr::addr_of!($crate::sock::OFFSETS.$($field).+)) };
        v
    }};
}
pub(crate) use off;

/// `bpf_probe_read_kernel` of a `T` at `base + offset`: for addresses that are not BTF pointers
/// (packet bytes, classic tracepoint and kprobe arguments).
#[inline(always)]
pub fn read<T>(base: *const u8, offset: u32) -> Result<T, u32> {
    // SAFETY: bpf_probe_read_kernel validates the address; a fault returns an error.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }.map_err(|_| {
        log::read_failed(offset);
        0
    })
}

/// A field of a classic tracepoint's record at `offset` (from its format file), expected at
/// `AT`. The verifier takes only constant offsets into the context and sees `offset` as one
/// (`OFFSETS` is frozen): where it is `AT`, a plain load stays; elsewhere the probe read that
/// aya's `read_at` always does. A single arm: with several, the compiler merges them into one
/// load at a computed offset, which the verifier refuses.
#[inline(always)]
pub fn tp_field<T: Copy, const AT: usize>(ctx: &TracePointContext, offset: u32) -> Result<T, u32> {
    const { assert!(core::mem::size_of::<T>() <= 8 && AT.is_multiple_of(core::mem::size_of::<T>())) };
    let base = ctx.as_ptr() as *const u8;
    if offset as usize == AT {
        // SAFETY: the field is inside the record, aligned for its size.
        return Ok(unsafe { core::ptr::read_volatile(base.add(AT).cast::<T>()) });
    }
    read(base, offset)
}

/// How a program reads kernel structs. tp_btf and fentry programs hold BTF pointers: a plain
/// load, which the verifier checks against the kernel's BTF (it sees `OFFSETS` as constants,
/// the map is frozen) and makes fault-safe, costs no helper call. Classic tracepoints and
/// kprobes hold bare addresses: `bpf_probe_read_kernel`, several times dearer.
pub trait Mem {
    fn get<T: Copy>(base: *const u8, offset: u32) -> Result<T, u32>;

    /// `sk` where `tcp_sock` fields can be read from it (a BTF pointer to `struct sock`
    /// reaches only `struct sock`'s), or null when it is not a full TCP socket.
    fn tcp_sock(sk: *const u8) -> *const u8;
}

/// Plain loads through a BTF pointer.
pub enum Btf {}

/// `bpf_probe_read_kernel`.
pub enum Probe {}

impl Mem for Btf {
    #[inline(always)]
    fn get<T: Copy>(base: *const u8, offset: u32) -> Result<T, u32> {
        // SAFETY: the verifier checks the access against the pointer's BTF type and turns it
        // into a load that cannot fault. Volatile: one load per field, never merged with a
        // neighbour's (each access must stay inside one member).
        Ok(unsafe { core::ptr::read_volatile(base.wrapping_add(offset as usize).cast::<T>()) })
    }

    #[inline(always)]
    fn tcp_sock(sk: *const u8) -> *const u8 {
        // SAFETY: a BTF socket pointer, as the helper requires.
        unsafe { bpf_skc_to_tcp_sock(sk as *mut _) as *const u8 }
    }
}

impl Mem for Probe {
    #[inline(always)]
    fn get<T: Copy>(base: *const u8, offset: u32) -> Result<T, u32> {
        read(base, offset)
    }

    #[inline(always)]
    fn tcp_sock(sk: *const u8) -> *const u8 {
        sk
    }
}

/// A 16-byte address as two words (byte arrays are copied a byte at a time), IPv4 mapped into
/// IPv6 (`::ffff:a.b.c.d`) so one key type serves both families.
pub type Addr = [u64; 2];

/// `v4` as loaded from memory (network order); little-endian words.
#[inline(always)]
pub fn mapped(v4: u32) -> Addr {
    [0, 0xffff_0000 | (u64::from(v4) << 32)]
}

/// The bytes of a key's address field.
#[inline(always)]
pub fn bytes(a: Addr) -> [u8; 16] {
    // SAFETY: same size, every bit pattern valid.
    unsafe { core::mem::transmute(a) }
}

/// Destination of a socket, port in host order.
#[inline(always)]
pub fn peer<M: Mem>(sk: *const u8) -> Result<(Addr, u16), u32> {
    let family: u16 = M::get(sk, off!(skc_family))?;
    let dport = u16::from_be(M::get(sk, off!(skc_dport))?);
    let daddr = match family {
        AF_INET => mapped(M::get(sk, off!(skc_daddr))?),
        AF_INET6 => M::get(sk, off!(skc_v6_daddr))?,
        _ => {
            log::unknown_family(family, dport);
            return Err(0);
        }
    };
    Ok((daddr, dport))
}

/// The address and port a socket is bound to (a listener's), port in host order, with its family.
#[inline(always)]
pub fn local<M: Mem>(sk: *const u8) -> Result<(u16, Addr, u16), u32> {
    let family: u16 = M::get(sk, off!(skc_family))?;
    let port: u16 = M::get(sk, off!(skc_num))?;
    let addr = match family {
        AF_INET => mapped(M::get(sk, off!(skc_rcv_saddr))?),
        AF_INET6 => M::get(sk, off!(skc_v6_rcv_saddr))?,
        _ => {
            log::unknown_family(family, port);
            return Err(0);
        }
    };
    Ok((family, addr, port))
}

/// The port a listener listened on, 0 if it never got to (a failed listen(2)). Closing a listener
/// releases its port (`skc_num` reads 0) before the state change is traced, unless the port was
/// bound explicitly; `inet_sport`, in `inet_sock` beyond `struct sock`, keeps it.
#[inline(always)]
pub fn listening_port<M: Mem>(sk: *const u8) -> u16 {
    let tp = M::tcp_sock(sk);
    if tp.is_null() {
        return 0;
    }
    u16::from_be(M::get(tp, off!(inet_sport)).unwrap_or(0))
}

/// The inode number of the network namespace of `net` (a `struct net`), 0 if unknown.
#[inline(always)]
fn net_inum<M: Mem>(net: Result<*const u8, u32>) -> u32 {
    match net {
        Ok(net) if !net.is_null() && off!(net_ns_inum) != 0 => M::get(net, off!(net_ns_inum)).unwrap_or(0),
        _ => 0,
    }
}

/// A socket's network namespace (its inode number), 0 if unknown.
#[inline(always)]
pub fn netns<M: Mem>(sk: *const u8) -> u32 {
    net_inum::<M>(M::get(sk, off!(skc_net)))
}

/// The network namespace of the device a packet arrived on, 0 if unknown.
#[inline(always)]
pub fn skb_netns<M: Mem>(skb: *const u8) -> u32 {
    if off!(skb_dev) == 0 {
        return 0;
    }
    match M::get::<*const u8>(skb, off!(skb_dev)) {
        Ok(dev) if !dev.is_null() => net_inum::<M>(M::get(dev, off!(net_device_nd_net))),
        _ => 0,
    }
}

/// When a TCP socket's last segment was handled (`CLOCK_MONOTONIC`, as `bpf_ktime_get_ns`):
/// for a connect's outcome, the RST, SYN-ACK, ICMP error or timeout that decided it. A clock
/// read where the field is missing.
#[inline(always)]
pub fn tcp_time<M: Mem>(sk: *const u8) -> u64 {
    let off = off!(tcp_clock_cache);
    let tp = M::tcp_sock(sk);
    if off == 0 || tp.is_null() {
        return runtime::now();
    }
    match M::get::<u64>(tp, off) {
        Ok(ns) if ns != 0 => ns,
        _ => runtime::now(),
    }
}

/// Whether a TCP socket never accepted a SYN-ACK (see `Offsets::tcp_rcv_nxt`): closed, it
/// closed from SYN_SENT. False where the field is missing.
#[inline(always)]
pub fn never_synchronized<M: Mem>(sk: *const u8) -> bool {
    let off = off!(tcp_rcv_nxt);
    let tp = M::tcp_sock(sk);
    off != 0 && !tp.is_null() && M::get::<u32>(tp, off).is_ok_and(|n| n == 0)
}

#[inline(always)]
pub fn protocol<M: Mem>(sk: *const u8) -> u16 {
    M::get::<u16>(sk, off!(sk_protocol)).unwrap_or(0)
}

#[inline(always)]
pub fn is_tcp<M: Mem>(sk: *const u8) -> bool {
    protocol::<M>(sk) == u16::from(agent_common::proto::TCP)
}

#[inline(always)]
pub fn state<M: Mem>(sk: *const u8) -> u8 {
    M::get::<u8>(sk, off!(skc_state)).unwrap_or(0)
}

/// At SYN_SENT → CLOSE: whether a RST closed the socket. `tcp_reset()` purges the retransmit
/// queue (the SYN) before `tcp_done()` changes the state, and disarms the SYN's timer only
/// after. A timeout closes with the timer fired; connect's own failure path, the application's
/// close and `tcp_disconnect()` with the SYN queued or never sent; an ICMP error with the SYN
/// queued before 6.10, and from 6.10 (`tcp_done_with_error()`, which purges) with the error
/// queued on the socket (TCP queues every ICMP error in SYN_SENT since 5.6).
#[inline(always)]
pub fn reset_in_syn_sent<M: Mem>(sk: *const u8) -> bool {
    if !M::get::<*const u8>(sk, off!(sk_rtx_queue)).is_ok_and(|n| n.is_null()) {
        return false;
    }
    let tp = M::tcp_sock(sk);
    let armed = !tp.is_null() && M::get::<u8>(tp, off!(icsk_pending)).is_ok_and(|p| p != 0);
    let qlen = off!(sk_error_queue_qlen);
    armed && (qlen == 0 || M::get::<u32>(sk, qlen).is_ok_and(|n| n == 0))
}

/// `SO_EE_ORIGIN_ICMP`, `SO_EE_ORIGIN_ICMP6` (`linux/errqueue.h`).
const EE_ORIGIN_ICMP: u8 = 2;
const EE_ORIGIN_ICMP6: u8 = 3;

/// The errno of an ICMP error for a connecting socket, 0 if none: the last error queued on
/// the socket (TCP queues every ICMP error in SYN_SENT since 5.6, and `SO_ERROR` leaves the
/// queue alone), else the soft error.
#[inline(always)]
pub fn icmp_error<M: Mem>(sk: *const u8) -> u16 {
    let (qlen, prev, cb, ee) = (
        off!(sk_error_queue_qlen),
        off!(sk_error_queue_prev),
        off!(skb_cb),
        off!(exterr_skb_ee),
    );
    if qlen != 0
        && prev != 0
        && cb != 0
        && ee != 0
        && M::get::<u32>(sk, qlen).is_ok_and(|n| n != 0)
        && let Ok(skb) = M::get::<*const u8>(sk, prev)
        // `sock_extended_err` (UAPI): `ee_errno` (u32), then `ee_origin`. The control block is
        // bytes to the verifier: a probe read.
        && let Ok(e) = read::<u64>(skb, cb + ee)
        && matches!((e >> 32) as u8, EE_ORIGIN_ICMP | EE_ORIGIN_ICMP6)
    {
        return e as u16;
    }
    match off!(sk_err_soft) {
        0 => 0,
        soft => M::get::<i32>(sk, soft).map_or(0, |e| e.max(0) as u16),
    }
}

/// Time-wait and request sockets share `sock_common` but nothing after it.
#[inline(always)]
pub fn is_full<M: Mem>(sk: *const u8) -> bool {
    let s = i32::from(state::<M>(sk));
    s != agent_common::tcp_state::TIME_WAIT && s != agent_common::tcp_state::NEW_SYN_RECV
}

/// The id of the default hierarchy's root cgroup (its kernfs node is the first).
const ROOT_CGROUP_ID: u64 = 1;

/// The cgroup v2 id of the socket's creator (`sk_cgrp_data`), or 0.
#[inline(always)]
pub fn cgroup_id<M: Mem>(sk: *const u8) -> u64 {
    let at = off!(sk_cgrp_data) + off!(sock_cgroup_data_cgroup);
    if off!(sock_cgroup_data_tagged) != 0 {
        // Before 5.15 (`sock_cgroup_ptr()`): a word, not a typed pointer, so probe reads after it.
        return match M::get::<u64>(sk, at) {
            Ok(v) if v & 3 == 0 && v != 0 => cgroup_kn_id::<Probe>(v as *const u8),
            Ok(_) => ROOT_CGROUP_ID,
            Err(_) => 0,
        };
    }
    match M::get::<*const u8>(sk, at) {
        Ok(cgroup) => cgroup_kn_id::<M>(cgroup),
        Err(_) => 0,
    }
}

/// `cgroup.kn → kernfs_node.id`, or 0.
#[inline(always)]
pub fn cgroup_kn_id<M: Mem>(cgroup: *const u8) -> u64 {
    let kn = M::get::<*const u8>(cgroup, off!(cgroup_kn));
    kn.and_then(|kn| M::get::<u64>(kn, off!(kernfs_node_id))).unwrap_or(0)
}

/// The current task, with how to read it: through the BTF pointer `bpf_get_current_task_btf`
/// gives (5.11+, plain loads), else at the address `bpf_get_current_task` gives, with probe
/// reads. `OFFSETS.task_btf` is a constant to the verifier, which keeps one of the two.
#[derive(Clone, Copy)]
pub struct Task(*const u8);

impl Task {
    #[inline(always)]
    pub fn current() -> Task {
        // SAFETY: helpers callable from any tracing program; only the one the kernel has is kept.
        Task(unsafe {
            if off!(task_btf) != 0 {
                bpf_get_current_task_btf() as *const u8
            } else {
                bpf_get_current_task() as *const u8
            }
        })
    }

    #[inline(always)]
    pub fn get<T: Copy>(self, offset: u32) -> Result<T, u32> {
        if off!(task_btf) != 0 {
            Btf::get(self.0, offset)
        } else {
            Probe::get(self.0, offset)
        }
    }

    /// The struct a pointer field points to, read the same way (`task->signal`).
    #[inline(always)]
    pub fn follow(self, offset: u32) -> Result<Task, u32> {
        self.get::<*const u8>(offset).map(Task)
    }
}

/// An incoming segment's headers, read with one probe read when the transport header follows
/// an option-less IP header (two otherwise): the packet bytes behind `skb->head` are not
/// BTF-typed. Fields are taken from the words by shifts (little-endian): indexing bytes at a
/// computed offset is pointer arithmetic the verifier refuses on the stack.
pub struct Packet {
    /// The first 40 bytes from the network header: an IPv6 header, or IPv4's without options
    /// (which is all that is read of it).
    ip: [u64; 5],
    /// The first 16 bytes of the transport header: ports and TCP flags.
    th: [u64; 2],
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

impl Packet {
    #[inline(always)]
    pub fn new<M: Mem>(skb: *const u8) -> Result<Packet, u32> {
        let head: *const u8 = M::get(skb, off!(skb_head))?;
        let nh_off: u16 = M::get(skb, off!(skb_network_header))?;
        let th_off: u16 = M::get(skb, off!(skb_transport_header))?;
        let nh = head.wrapping_add(usize::from(nh_off));
        // Reading past a short packet stays inside its buffer (skb_shared_info follows).
        let w: [u64; 7] = read(nh, 0)?;
        let ip = [w[0], w[1], w[2], w[3], w[4]];
        let th = match th_off.wrapping_sub(nh_off) {
            // IPv4 without options: the TCP header from byte 20.
            20 => [(w[2] >> 32) | (w[3] << 32), (w[3] >> 32) | (w[4] << 32)],
            // IPv6 without extension headers: from byte 40.
            40 => [w[5], w[6]],
            _ => read(head.wrapping_add(usize::from(th_off)), 0)?,
        };
        Ok(Packet { ip, th })
    }

    #[inline(always)]
    fn v4(&self) -> Result<bool, u32> {
        match self.ip[0] as u8 >> 4 {
            4 => Ok(true),
            6 => Ok(false),
            v => {
                log::not_ip(v);
                Err(0)
            }
        }
    }

    /// IPv4 protocol (byte 9) or IPv6 next header (byte 6).
    #[inline(always)]
    pub fn ip_proto(&self) -> Result<u8, u32> {
        Ok(if self.v4()? {
            (self.ip[1] >> 8) as u8
        } else {
            (self.ip[0] >> 48) as u8
        })
    }

    /// TCP flags (byte 13).
    #[inline(always)]
    pub fn flags(&self) -> u8 {
        (self.th[1] >> 40) as u8
    }

    /// `(address, port)` the segment was sent to: this host. IPv4 bytes 16..20, IPv6 24..40.
    #[inline(always)]
    pub fn dst(&self) -> Result<(Addr, u16), u32> {
        let addr = if self.v4()? {
            mapped(self.ip[2] as u32)
        } else {
            [self.ip[3], self.ip[4]]
        };
        Ok((addr, u16::from_be((self.th[0] >> 16) as u16)))
    }

    /// IPv4 bytes 12..16, IPv6 8..24.
    #[inline(always)]
    pub fn src(&self) -> Result<(Addr, u16), u32> {
        let addr = if self.v4()? {
            mapped((self.ip[1] >> 32) as u32)
        } else {
            [self.ip[1], self.ip[2]]
        };
        Ok((addr, u16::from_be(self.th[0] as u16)))
    }
}
