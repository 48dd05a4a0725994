//! Field offsets and enum values the kernel programs need, resolved from the running kernel at
//! load time: BTF for kernel structs, tracefs format files for classic tracepoint records.
use std::collections::BTreeMap;

use agent_common::{Offsets, RST_REASON_NOT_SPECIFIED, TCP_RCV_RANGES, TracepointOffsets};
use agent_core::kernel::{
    btf::{Btf, BtfError},
    kallsyms,
    tracefs::field_offset,
};

use crate::kernel::tracefs;

#[derive(Debug, thiserror::Error)]
#[error("resolving {what} from the kernel's BTF: {source}")]
pub struct OffsetError {
    what: &'static str,
    source: BtfError,
}

/// What the loader needs to know about this kernel beyond the offsets themselves.
#[derive(Clone, Debug, Default)]
pub struct Resolved {
    pub offsets: Offsets,
    /// Tracepoint programs that cannot be used, with why (tracefs missing, a field missing, a
    /// location not known), by program name.
    pub tracepoints_unavailable: BTreeMap<&'static str, String>,
    /// `TCP_RCV`: where `tcp_v4_rcv` and `tcp_v6_rcv` lie, for the pre-5.17 `kfree_skb` programs.
    pub tcp_rcv: [u64; 2 * TCP_RCV_RANGES],
    /// `sk_rst_reason` value → label (`no_socket`, `tcp_abort_on_close`, …).
    pub rst_reasons: BTreeMap<u32, String>,
    /// Degraded features, for the log: optional fields this kernel lacks.
    pub warnings: Vec<String>,
}

type TpSlot = fn(&mut TracepointOffsets) -> &mut u32;
/// (program, category, event, fields the program reads).
type TpFields = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, TpSlot)],
);

const TRACEPOINTS: &[TpFields] = &[
    (
        "sock_state_tp",
        "sock",
        "inet_sock_set_state",
        &[
            ("skaddr", |t| &mut t.state_skaddr),
            ("oldstate", |t| &mut t.state_oldstate),
            ("newstate", |t| &mut t.state_newstate),
        ],
    ),
    (
        "send_reset_tp",
        "tcp",
        "tcp_send_reset",
        &[
            ("skbaddr", |t| &mut t.send_reset_skbaddr),
            ("skaddr", |t| &mut t.send_reset_skaddr),
            ("reason", |t| &mut t.send_reset_reason),
        ],
    ),
    // Before 6.10 the record has no reason.
    (
        "send_reset_tp_pre610",
        "tcp",
        "tcp_send_reset",
        &[
            ("skbaddr", |t| &mut t.send_reset_skbaddr),
            ("skaddr", |t| &mut t.send_reset_skaddr),
        ],
    ),
    (
        "error_report_tp",
        "sock",
        "inet_sk_error_report",
        &[
            ("error", |t| &mut t.error_report_error),
            ("dport", |t| &mut t.error_report_dport),
            ("family", |t| &mut t.error_report_family),
            ("protocol", |t| &mut t.error_report_protocol),
            ("daddr", |t| &mut t.error_report_daddr),
            ("daddr_v6", |t| &mut t.error_report_daddr_v6),
        ],
    ),
    (
        "kfree_skb_tp",
        "skb",
        "kfree_skb",
        &[
            ("skbaddr", |t| &mut t.kfree_skb_skbaddr),
            ("reason", |t| &mut t.kfree_skb_reason),
        ],
    ),
    // Before 5.17: where it was called from, and no reason.
    (
        "kfree_skb_tp_pre517",
        "skb",
        "kfree_skb",
        &[
            ("skbaddr", |t| &mut t.kfree_skb_skbaddr),
            ("location", |t| &mut t.kfree_skb_location),
        ],
    ),
    (
        "connect_enter",
        "syscalls",
        "sys_enter_connect",
        &[
            ("fd", |t| &mut t.connect_fd),
            ("uservaddr", |t| &mut t.connect_uservaddr),
        ],
    ),
    (
        "connect_exit",
        "syscalls",
        "sys_exit_connect",
        &[("ret", |t| &mut t.exit_connect_ret)],
    ),
    (
        "mark_victim_tp",
        "oom",
        "mark_victim",
        &[("pid", |t| &mut t.mark_victim_pid)],
    ),
];

type Slot = fn(&mut Offsets) -> &mut u32;

/// `struct sock` fields every hook needs: without them nothing works.
const REQUIRED: &[(&str, &str, u32, Slot)] = &[
    ("sock_common", "skc_family", 2, |o| &mut o.skc_family),
    ("sock_common", "skc_dport", 2, |o| &mut o.skc_dport),
    ("sock_common", "skc_daddr", 4, |o| &mut o.skc_daddr),
    ("sock_common", "skc_v6_daddr", 16, |o| &mut o.skc_v6_daddr),
    ("sock_common", "skc_state", 1, |o| &mut o.skc_state),
    ("sock", "sk_protocol", 2, |o| &mut o.sk_protocol),
    ("sock", "sk_err", 4, |o| &mut o.sk_err),
    // RSTs received in SYN_SENT, told from the state change they cause.
    ("sock", "tcp_rtx_queue", 8, |o| &mut o.sk_rtx_queue),
    ("tcp_sock", "inet_conn.icsk_pending", 1, |o| &mut o.icsk_pending),
    // Listeners and how the task that closes one is ending.
    ("sock_common", "skc_num", 2, |o| &mut o.skc_num),
    ("inet_sock", "inet_sport", 2, |o| &mut o.inet_sport),
    ("sock_common", "skc_rcv_saddr", 4, |o| &mut o.skc_rcv_saddr),
    ("sock_common", "skc_v6_rcv_saddr", 16, |o| &mut o.skc_v6_rcv_saddr),
    ("task_struct", "flags", 4, |o| &mut o.task_flags),
    ("task_struct", "exit_code", 4, |o| &mut o.task_exit_code),
    ("task_struct", "pid", 4, |o| &mut o.task_pid),
    ("task_struct", "signal", 8, |o| &mut o.task_signal),
    ("signal_struct", "group_exit_code", 4, |o| &mut o.signal_group_exit_code),
];

const ICMP_CLOSED: &str = "ICMP errors of connects their clients closed first";

/// Fields behind single features; a kernel without one loses only that feature.
const OPTIONAL: &[(&str, &str, &str, Slot)] = &[
    ("sock", "sk_err_soft", ICMP_CLOSED, |o| &mut o.sk_err_soft),
    ("sock", "sk_error_queue.qlen", ICMP_CLOSED, |o| {
        &mut o.sk_error_queue_qlen
    }),
    ("sock", "sk_error_queue.prev", ICMP_CLOSED, |o| {
        &mut o.sk_error_queue_prev
    }),
    ("sk_buff", "cb", ICMP_CLOSED, |o| &mut o.skb_cb),
    ("sock_exterr_skb", "ee", ICMP_CLOSED, |o| &mut o.exterr_skb_ee),
    (
        "tcp_sock",
        "tcp_clock_cache",
        "TCP event times without a clock read",
        |o| &mut o.tcp_clock_cache,
    ),
    (
        "tcp_sock",
        "rcv_nxt",
        "connect failures closed while the state program ran on the same CPU",
        |o| &mut o.tcp_rcv_nxt,
    ),
    ("task_struct", "comm", "connect owners without helper calls", |o| {
        &mut o.task_comm
    }),
    ("task_struct", "tgid", "connect owners without helper calls", |o| {
        &mut o.task_tgid
    }),
    ("task_struct", "cgroups", "connect owners without helper calls", |o| {
        &mut o.task_cgroups
    }),
    ("css_set", "dfl_cgrp", "connect owners without helper calls", |o| {
        &mut o.css_set_dfl_cgrp
    }),
    ("sock", "sk_cgrp_data", "socket cgroup attribution", |o| {
        &mut o.sk_cgrp_data
    }),
    ("cgroup", "kn", "socket cgroup attribution", |o| &mut o.cgroup_kn),
    ("kernfs_node", "id", "socket cgroup attribution", |o| {
        &mut o.kernfs_node_id
    }),
    ("sock_common", "skc_net.net", "network namespaces", |o| &mut o.skc_net),
    ("net", "ns.inum", "network namespaces", |o| &mut o.net_ns_inum),
    ("sk_buff", "dev", "network namespaces of inbound refusals", |o| {
        &mut o.skb_dev
    }),
    (
        "net_device",
        "nd_net.net",
        "network namespaces of inbound refusals",
        |o| &mut o.net_device_nd_net,
    ),
    ("sk_buff", "head", "inbound refusal addresses", |o| &mut o.skb_head),
    ("sk_buff", "network_header", "inbound refusal addresses", |o| {
        &mut o.skb_network_header
    }),
    ("sk_buff", "transport_header", "inbound refusal addresses", |o| {
        &mut o.skb_transport_header
    }),
    ("task_struct", "files", "synchronous connect failures", |o| {
        &mut o.task_files
    }),
    ("files_struct", "fdt", "synchronous connect failures", |o| {
        &mut o.files_fdt
    }),
    ("fdtable", "fd", "synchronous connect failures", |o| &mut o.fdtable_fd),
    ("fdtable", "max_fds", "synchronous connect failures", |o| {
        &mut o.fdtable_max_fds
    }),
    ("file", "private_data", "synchronous connect failures", |o| {
        &mut o.file_private_data
    }),
    ("socket", "sk", "synchronous connect failures", |o| &mut o.socket_sk),
];

pub fn resolve(btf: &Btf) -> Result<Resolved, OffsetError> {
    let mut r = Resolved::default();
    for (ty, field, size, slot) in REQUIRED {
        let err = |source| OffsetError { what: field, source };
        *slot(&mut r.offsets) = btf.member_offset(ty, field).map_err(err)?;
        // The programs read these with fixed widths: catch a kernel that changed one.
        if btf.member_size(ty, field).map_err(err)? != *size {
            return Err(err(BtfError::Malformed("unexpected field width")));
        }
    }
    for (ty, field, feature, slot) in OPTIONAL {
        match btf.member_offset(ty, field) {
            Ok(off) => *slot(&mut r.offsets) = off,
            Err(e) => r.warnings.push(format!("{feature} unavailable: {e}")),
        }
    }
    // 5.15 made `sock_cgroup_data` a cgroup pointer; before, the word `val` is one unless tagged.
    match (
        btf.member_offset("sock_cgroup_data", "cgroup"),
        btf.member_offset("sock_cgroup_data", "val"),
    ) {
        (Ok(off), _) => r.offsets.sock_cgroup_data_cgroup = off,
        (Err(_), Ok(off)) => {
            r.offsets.sock_cgroup_data_cgroup = off;
            r.offsets.sock_cgroup_data_tagged = 1;
        }
        (Err(e), Err(_)) => r.warnings.push(format!("socket cgroup attribution unavailable: {e}")),
    }
    r.offsets.task_btf = u32::from(has_helper(btf, "get_current_task_btf"));
    r.rst_reasons = reason_labels(btf, "sk_rst_reason", "SK_RST_REASON_");
    // Before 6.10 there are no reasons: every reset is counted as not specified.
    if r.rst_reasons.is_empty() {
        r.rst_reasons.insert(RST_REASON_NOT_SPECIFIED, "not_specified".into());
    }
    // A value no reason has where the enum is missing, so the kernel check never matches.
    let value = |ty, name| {
        btf.enum_value(ty, name)
            .ok()
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(u32::MAX)
    };
    r.offsets.rst_no_socket = value("sk_rst_reason", "SK_RST_REASON_NO_SOCKET");
    r.offsets.drop_no_socket = value("skb_drop_reason", "SKB_DROP_REASON_NO_SOCKET");
    resolve_tracepoints(&mut r);
    resolve_tcp_rcv(&mut r);
    Ok(r)
}

/// Whether the kernel has BPF helper `bpf_<name>`: its own `enum bpf_func_id` lists every one.
pub fn has_helper(btf: &Btf, name: &str) -> bool {
    btf.enum_value("bpf_func_id", &format!("BPF_FUNC_{name}")).is_ok()
}

/// Enum values by lower-case name without the common prefix; empty when the enum is absent.
fn reason_labels(btf: &Btf, ty: &str, prefix: &str) -> BTreeMap<u32, String> {
    btf.enum_variants(ty)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, v)| {
            Some((
                u32::try_from(v).ok()?,
                name.strip_prefix(prefix).unwrap_or(&name).to_lowercase(),
            ))
        })
        .collect()
}

/// The programs that tell an inbound refusal by where `kfree_skb` was called from.
const KFREE_SKB_PRE517: [&str; 2] = ["kfree_skb_btf_pre517", "kfree_skb_tp_pre517"];

/// Before 5.17 `kfree_skb` has no drop reason, only its caller: the address ranges of the
/// callers that drop a SYN no socket took, from `/proc/kallsyms` (read only on such kernels).
fn resolve_tcp_rcv(r: &mut Resolved) {
    let why = if r.offsets.drop_no_socket != u32::MAX {
        "kfree_skb gives a drop reason on this kernel, which the other kfree_skb programs read".to_string()
    } else {
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let ranges = kallsyms::ranges(&text, &["tcp_v4_rcv", "tcp_v6_rcv"]);
        if !ranges.is_empty() {
            for (i, (start, end)) in ranges.into_iter().take(TCP_RCV_RANGES).enumerate() {
                r.tcp_rcv[2 * i] = start;
                r.tcp_rcv[2 * i + 1] = end;
            }
            return;
        }
        "tcp_v4_rcv's address is not in /proc/kallsyms (kernel.kptr_restrict, or no CAP_SYSLOG)".to_string()
    };
    for program in KFREE_SKB_PRE517 {
        r.tracepoints_unavailable.entry(program).or_insert_with(|| why.clone());
    }
}

fn resolve_tracepoints(r: &mut Resolved) {
    for (program, category, event, fields) in TRACEPOINTS {
        let format = match tracefs::read_format(category, event) {
            Ok(f) => f,
            Err(e) => {
                r.tracepoints_unavailable
                    .insert(program, format!("no {category}:{event} in tracefs ({e})"));
                continue;
            }
        };
        for (field, slot) in *fields {
            match field_offset(&format, field) {
                Some(off) => *slot(&mut r.offsets.tp) = off,
                None => {
                    r.tracepoints_unavailable.insert(
                        program,
                        format!("{category}:{event} has no `{field}` field on this kernel"),
                    );
                }
            }
        }
    }
}
