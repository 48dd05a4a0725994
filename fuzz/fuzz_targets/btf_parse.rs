//! The kernel BTF parser (an untrusted blob: every read bounds-checked, every walk bounded) and
//! the lookups the loader makes with it.
#![no_main]

use agent_core::kernel::btf;
use libfuzzer_sys::fuzz_target;

/// (struct, member) pairs the loader resolves (offsets.rs), and a few shapes it does not.
const MEMBERS: &[(&str, &str)] = &[
    ("sock_common", "skc_family"),
    ("sock_common", "skc_dport"),
    ("sock_common", "skc_daddr"),
    ("sock_common", "skc_v6_daddr"),
    ("sock_common", "skc_state"),
    ("sock", "sk_protocol"),
    ("sock", "sk_err"),
    ("sock", "__sk_common.skc_daddr"),
    ("sock", "sk_cgrp_data"),
    ("sock_cgroup_data", "cgroup"),
    ("cgroup", "kn"),
    ("kernfs_node", "id"),
    ("sk_buff", "head"),
    ("sk_buff", "network_header"),
    ("task_struct", "files"),
    ("fdtable", "fd"),
    ("socket", "sk"),
    ("outer", "a.b.c"),
    ("", ""),
];

fuzz_target!(|data: &[u8]| {
    let Ok(btf) = btf::Btf::parse(data) else {
        return;
    };
    for (ty, member) in MEMBERS {
        let _ = btf.member_offset(ty, member);
        let _ = btf.member_size(ty, member);
    }
    let _ = btf.enum_value("sk_rst_reason", "SK_RST_REASON_NO_SOCKET");
    let _ = btf.enum_value("skb_drop_reason", "SKB_DROP_REASON_NO_SOCKET");
    let _ = btf.enum_variants("sk_rst_reason");
    for tp in [
        "inet_sock_set_state",
        "tcp_send_reset",
        "tcp_receive_reset",
        "inet_sk_error_report",
        "kfree_skb",
    ] {
        let _ = btf.tracepoint_arg_count(tp);
    }
    let _ = btf.has_func("tcp_v4_connect");
    let _ = btf.has_func("tcp_v6_connect");
});
