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
}

impl Drop {
    pub const ALL: [Drop; 2] = [Drop::OwnerMapFull, Drop::TargetMapFull];
    pub const COUNT: u32 = Self::ALL.len() as u32;

    pub const fn name(self) -> &'static str {
        match self {
            Drop::OwnerMapFull => "owner_map_full",
            Drop::TargetMapFull => "target_map_full",
        }
    }
}

/// Size of the `OVERFLOW` per-CPU array: failures that found the target map full are
/// counted by errno so totals stay exact (errno values above this land in the last slot).
pub const OVERFLOW_SLOTS: u32 = 256;

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
    /// `sock:inet_sock_set_state` record: `skaddr`, `oldstate`, `newstate`.
    pub tp_state_skaddr: u32,
    pub tp_state_oldstate: u32,
    pub tp_state_newstate: u32,
    pub _pad: u32,
}

/// Slots of the `CONFIG` array map.
pub mod config {
    /// Non-zero when a dedicated connect hook (fentry/kprobe on `tcp_v{4,6}_connect`) records
    /// owners, so the state-change program need not.
    pub const OWNER_FROM_CONNECT: u32 = 0;
    pub const COUNT: u32 = 1;
}

/// Names of the maps and globals user space looks up in the object.
pub mod names {
    pub const OWNERS: &str = "OWNERS";
    pub const FAILURES: &str = "FAILURES";
    pub const OVERFLOW: &str = "OVERFLOW";
    pub const DROPS: &str = "DROPS";
    pub const CONFIG: &str = "CONFIG";
    pub const OFFSETS: &str = "OFFSETS";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` data with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::Owner {}
    unsafe impl aya::Pod for super::TargetKey {}
    unsafe impl aya::Pod for super::Offsets {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<Owner>(), 8 + 8 + 4 + 4 + COMM_LEN);
        assert_eq!(size_of::<TargetKey>(), 8 + 16 + COMM_LEN + 2 + 2 + 1 + 3);
    }
}
