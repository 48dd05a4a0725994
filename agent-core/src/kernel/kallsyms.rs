//! Where kernel functions lie, from `/proc/kallsyms`: for a tracepoint that says only where it
//! was called from (`kfree_skb`'s `location` before 5.17).

/// The address ranges `[start, end)` of the functions named in `names`, and of their parts the
/// compiler split off (`tcp_v4_rcv.cold`). A function ends where the next higher symbol starts;
/// the kernel's own symbols come in address order. Addresses read as 0 (`kptr_restrict`) give
/// no range.
pub fn ranges(kallsyms: &str, names: &[&str]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut open: Vec<u64> = Vec::new();
    for line in kallsyms.lines() {
        let mut cols = line.split_whitespace();
        let (Some(addr), Some(_kind), Some(name)) = (cols.next(), cols.next(), cols.next()) else {
            continue;
        };
        let Ok(addr) = u64::from_str_radix(addr, 16) else {
            continue;
        };
        open.retain(|&start| {
            if addr > start {
                out.push((start, addr));
                false
            } else {
                true
            }
        });
        let wanted = names
            .iter()
            .any(|n| name == *n || name.strip_prefix(n).is_some_and(|rest| rest.starts_with('.')));
        // Module symbols follow with their `[module]` column: not ours.
        if wanted && addr != 0 && cols.next().is_none() {
            open.push(addr);
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_and_their_cold_parts_end_at_the_next_symbol() {
        let text = "\
ffffffff81a00000 T tcp_v4_early_demux
ffffffff81a00100 T tcp_v4_rcv
ffffffff81a00100 t __pfx_alias
ffffffff81a00900 T tcp_v4_destroy_sock
ffffffff81b00000 t tcp_v6_rcv
ffffffff81b00800 t tcp_v6_early_demux
ffffffff81f00000 t tcp_v4_rcv.cold
ffffffff81f00040 t other.cold
ffffffffc0000000 t tcp_v4_rcv	[some_module]
";
        assert_eq!(
            ranges(text, &["tcp_v4_rcv", "tcp_v6_rcv"]),
            vec![
                (0xffffffff81a00100, 0xffffffff81a00900),
                (0xffffffff81b00000, 0xffffffff81b00800),
                (0xffffffff81f00000, 0xffffffff81f00040),
            ]
        );
    }

    #[test]
    fn hidden_addresses_and_prefixes_of_other_names_give_nothing() {
        let hidden = "0000000000000000 T tcp_v4_rcv\n0000000000000000 T tcp_v4_destroy_sock\n";
        assert_eq!(ranges(hidden, &["tcp_v4_rcv"]), vec![]);
        let similar = "ffffffff81a00100 T tcp_v4_rcv_helper\nffffffff81a00200 T x\n";
        assert_eq!(ranges(similar, &["tcp_v4_rcv"]), vec![]);
    }
}
