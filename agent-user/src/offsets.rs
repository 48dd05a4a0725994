//! Field offsets the kernel programs need, resolved from the running kernel at load time.
use agent_common::Offsets;

use crate::{btf::Btf, tracefs};

#[derive(Debug, thiserror::Error)]
#[error("resolving {what} from the kernel's BTF: {source}")]
pub struct OffsetError {
    what: &'static str,
    source: crate::btf::BtfError,
}

/// `struct sock` offsets from BTF (required), and the `sock:inet_sock_set_state` record layout
/// from tracefs (optional: without it only the classic tracepoint mode is unavailable).
pub fn resolve(btf: &Btf) -> Result<Offsets, OffsetError> {
    let member = |ty: &'static str, field: &'static str| {
        btf.member_offset(ty, field).map_err(|source| OffsetError {
            what: field,
            source,
        })
    };
    // The programs read these with fixed widths: catch a kernel that changed one.
    for (ty, field, size) in [
        ("sock_common", "skc_dport", 2),
        ("sock_common", "skc_family", 2),
        ("sock", "sk_protocol", 2),
        ("sock", "sk_err", 4),
    ] {
        let got = btf.member_size(ty, field).map_err(|source| OffsetError {
            what: field,
            source,
        })?;
        if got != size {
            return Err(OffsetError {
                what: field,
                source: crate::btf::BtfError::Malformed("unexpected field width"),
            });
        }
    }
    let mut off = Offsets {
        skc_family: member("sock_common", "skc_family")?,
        skc_dport: member("sock_common", "skc_dport")?,
        skc_daddr: member("sock_common", "skc_daddr")?,
        skc_v6_daddr: member("sock_common", "skc_v6_daddr")?,
        sk_protocol: member("sock", "sk_protocol")?,
        sk_err: member("sock", "sk_err")?,
        ..Offsets::default()
    };
    if let Ok(format) = tracefs::read_format("sock", "inet_sock_set_state") {
        let f = |name| tracefs::field_offset(&format, name).unwrap_or(0);
        off.tp_state_skaddr = f("skaddr");
        off.tp_state_oldstate = f("oldstate");
        off.tp_state_newstate = f("newstate");
    }
    Ok(off)
}
