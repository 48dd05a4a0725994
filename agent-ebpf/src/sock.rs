//! Reading kernel struct fields at offsets resolved by user space from the running kernel.
use agent_common::Offsets;
use aya_ebpf::helpers::bpf_probe_read_kernel;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets {
    skc_family: 0,
    skc_dport: 0,
    skc_daddr: 0,
    skc_v6_daddr: 0,
    sk_protocol: 0,
    sk_err: 0,
    skc_state: 0,
    sk_cgrp_data: 0,
    sock_cgroup_data_cgroup: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    skb_head: 0,
    skb_network_header: 0,
    skb_transport_header: 0,
    task_files: 0,
    files_fdt: 0,
    fdtable_fd: 0,
    fdtable_max_fds: 0,
    file_private_data: 0,
    socket_sk: 0,
    rst_no_socket: 0,
    drop_no_socket: 0,
    tp: agent_common::TracepointOffsets {
        state_skaddr: 0,
        state_oldstate: 0,
        state_newstate: 0,
        send_reset_skbaddr: 0,
        send_reset_skaddr: 0,
        send_reset_reason: 0,
        receive_reset_skaddr: 0,
        error_report_error: 0,
        error_report_dport: 0,
        error_report_family: 0,
        error_report_protocol: 0,
        error_report_daddr: 0,
        error_report_daddr_v6: 0,
        kfree_skb_skbaddr: 0,
        kfree_skb_reason: 0,
        connect_fd: 0,
        connect_uservaddr: 0,
        exit_connect_ret: 0,
    },
};

/// The loader rewrites `OFFSETS` before load; a volatile read keeps the compiler from
/// folding the zeros above into the program.
#[inline(always)]
pub fn offsets() -> Offsets {
    // SAFETY: reading a static.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

#[inline(always)]
pub fn read<T>(base: *const u8, offset: u32) -> Result<T, u32> {
    // SAFETY: bpf_probe_read_kernel validates the address; a fault returns an error.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }.map_err(|_| 0)
}

/// IPv4 as IPv4-mapped IPv6, so one 16-byte key serves both families.
#[inline(always)]
pub fn mapped(v4: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3]]
}

/// Destination of a socket, port in host order.
#[inline(always)]
pub fn peer(sk: *const u8, off: &Offsets) -> Result<([u8; 16], u16), u32> {
    let family: u16 = read(sk, off.skc_family)?;
    let dport = u16::from_be(read(sk, off.skc_dport)?);
    let daddr = match family {
        AF_INET => mapped(read(sk, off.skc_daddr)?),
        AF_INET6 => read(sk, off.skc_v6_daddr)?,
        _ => return Err(0),
    };
    Ok((daddr, dport))
}

#[inline(always)]
pub fn protocol(sk: *const u8, off: &Offsets) -> u16 {
    read::<u16>(sk, off.sk_protocol).unwrap_or(0)
}

#[inline(always)]
pub fn is_tcp(sk: *const u8, off: &Offsets) -> bool {
    protocol(sk, off) == u16::from(agent_common::proto::TCP)
}

#[inline(always)]
pub fn state(sk: *const u8, off: &Offsets) -> u8 {
    read::<u8>(sk, off.skc_state).unwrap_or(0)
}

/// Time-wait and request sockets share `sock_common` but nothing after it.
#[inline(always)]
pub fn is_full(sk: *const u8, off: &Offsets) -> bool {
    let s = i32::from(state(sk, off));
    s != agent_common::tcp_state::TIME_WAIT && s != agent_common::tcp_state::NEW_SYN_RECV
}

/// The cgroup v2 id of the socket's creator (`sk_cgrp_data`), or 0.
#[inline(always)]
pub fn cgroup_id(sk: *const u8, off: &Offsets) -> u64 {
    let cgroup: Result<*const u8, u32> = read(sk, off.sk_cgrp_data + off.sock_cgroup_data_cgroup);
    let kn = cgroup.and_then(|c| read::<*const u8>(c, off.cgroup_kn));
    kn.and_then(|kn| read::<u64>(kn, off.kernfs_node_id)).unwrap_or(0)
}

/// The packet's own destination (this host, for an incoming packet) and TCP flags.
pub struct Packet {
    pub ip_proto: u8,
    pub daddr: [u8; 16],
    pub saddr: [u8; 16],
    pub dport: u16,
    pub sport: u16,
    pub flags: u8,
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

#[inline(always)]
pub fn tcp_packet(skb: *const u8, off: &Offsets) -> Result<Packet, u32> {
    let head: *const u8 = read(skb, off.skb_head)?;
    let nh = head.wrapping_add(usize::from(read::<u16>(skb, off.skb_network_header)?));
    let th = head.wrapping_add(usize::from(read::<u16>(skb, off.skb_transport_header)?));
    let version = read::<u8>(nh, 0)? >> 4;
    let (ip_proto, saddr, daddr) = match version {
        4 => (read(nh, 9)?, mapped(read(nh, 12)?), mapped(read(nh, 16)?)),
        6 => (read(nh, 6)?, read(nh, 8)?, read(nh, 24)?),
        _ => return Err(0),
    };
    Ok(Packet {
        ip_proto,
        daddr,
        saddr,
        sport: u16::from_be(read(th, 0)?),
        dport: u16::from_be(read(th, 2)?),
        flags: read(th, 13)?,
    })
}
