//! Reading kernel struct fields at offsets resolved by user space from the running kernel.
use agent_common::Offsets;
use aya_ebpf::helpers::bpf_probe_read_kernel;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[unsafe(no_mangle)]
pub(crate) static OFFSETS: Offsets = Offsets {
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
pub fn peer(sk: *const u8) -> Result<([u8; 16], u16), u32> {
    let family: u16 = read(sk, off!(skc_family))?;
    let dport = u16::from_be(read(sk, off!(skc_dport))?);
    let daddr = match family {
        AF_INET => mapped(read(sk, off!(skc_daddr))?),
        AF_INET6 => read(sk, off!(skc_v6_daddr))?,
        _ => return Err(0),
    };
    Ok((daddr, dport))
}

#[inline(always)]
pub fn protocol(sk: *const u8) -> u16 {
    read::<u16>(sk, off!(sk_protocol)).unwrap_or(0)
}

#[inline(always)]
pub fn is_tcp(sk: *const u8) -> bool {
    protocol(sk) == u16::from(agent_common::proto::TCP)
}

#[inline(always)]
pub fn state(sk: *const u8) -> u8 {
    read::<u8>(sk, off!(skc_state)).unwrap_or(0)
}

/// Time-wait and request sockets share `sock_common` but nothing after it.
#[inline(always)]
pub fn is_full(sk: *const u8) -> bool {
    let s = i32::from(state(sk));
    s != agent_common::tcp_state::TIME_WAIT && s != agent_common::tcp_state::NEW_SYN_RECV
}

/// The cgroup v2 id of the socket's creator (`sk_cgrp_data`), or 0.
#[inline(always)]
pub fn cgroup_id(sk: *const u8) -> u64 {
    let cgroup: Result<*const u8, u32> = read(sk, off!(sk_cgrp_data) + off!(sock_cgroup_data_cgroup));
    let kn = cgroup.and_then(|c| read::<*const u8>(c, off!(cgroup_kn)));
    kn.and_then(|kn| read::<u64>(kn, off!(kernfs_node_id))).unwrap_or(0)
}

/// An incoming TCP segment's headers, read lazily: the common path needs only the protocol,
/// flags, and local (destination) address and port.
pub struct Packet {
    nh: *const u8,
    th: *const u8,
    version: u8,
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

impl Packet {
    #[inline(always)]
    pub fn new(skb: *const u8) -> Result<Packet, u32> {
        let head: *const u8 = read(skb, off!(skb_head))?;
        let nh = head.wrapping_add(usize::from(read::<u16>(skb, off!(skb_network_header))?));
        let th = head.wrapping_add(usize::from(read::<u16>(skb, off!(skb_transport_header))?));
        Ok(Packet {
            nh,
            th,
            version: read::<u8>(nh, 0)? >> 4,
        })
    }

    #[inline(always)]
    pub fn ip_proto(&self) -> Result<u8, u32> {
        read(self.nh, if self.version == 4 { 9 } else { 6 })
    }

    #[inline(always)]
    pub fn flags(&self) -> Result<u8, u32> {
        read(self.th, 13)
    }

    /// `(address, port)` the segment was sent to: this host.
    #[inline(always)]
    pub fn dst(&self) -> Result<([u8; 16], u16), u32> {
        Ok((self.addr(16, 24)?, u16::from_be(read(self.th, 2)?)))
    }

    #[inline(always)]
    pub fn src(&self) -> Result<([u8; 16], u16), u32> {
        Ok((self.addr(12, 8)?, u16::from_be(read(self.th, 0)?)))
    }

    #[inline(always)]
    fn addr(&self, v4: usize, v6: usize) -> Result<[u8; 16], u32> {
        match self.version {
            4 => Ok(mapped(read(self.nh, v4 as u32)?)),
            6 => read(self.nh, v6 as u32),
            _ => Err(0),
        }
    }
}
