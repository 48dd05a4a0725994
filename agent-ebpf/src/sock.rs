//! Reading `struct sock` fields at offsets resolved by user space from the running kernel.
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
    tp_state_skaddr: 0,
    tp_state_oldstate: 0,
    tp_state_newstate: 0,
    _pad: 0,
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

/// Destination of a connecting socket: IPv4 as IPv4-mapped IPv6, port in host order.
#[inline(always)]
pub fn peer(sk: *const u8, off: &Offsets) -> Result<([u8; 16], u16), u32> {
    let family: u16 = read(sk, off.skc_family)?;
    let dport = u16::from_be(read(sk, off.skc_dport)?);
    let daddr = match family {
        AF_INET => {
            let v4: [u8; 4] = read(sk, off.skc_daddr)?;
            [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
            ]
        }
        AF_INET6 => read(sk, off.skc_v6_daddr)?,
        _ => return Err(0),
    };
    Ok((daddr, dport))
}

#[inline(always)]
pub fn is_tcp(sk: *const u8, off: &Offsets) -> bool {
    matches!(read::<u16>(sk, off.sk_protocol), Ok(p) if p == u16::from(agent_common::proto::TCP))
}
