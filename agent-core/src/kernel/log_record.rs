//! Records the eBPF programs log through aya-log (`aya-log-ebpf` 0.2's wire format), decoded
//! without trusting a byte: aya-log 0.3's own reader unwraps a malformed record (a panic) and
//! reads its tags as Rust enums (undefined behaviour on an unknown one), so the daemon reads
//! the ring itself and hands each record here.
//!
//! A record: its length (`u16`, itself included), then six header fields (target, level,
//! module, file, line, number of arguments) and the arguments, each `kind: u8`, `len: u16`,
//! then `len` bytes; integers little-endian (the programs are `bpfel`). The message is its arguments in order (the format
//! string's literal parts are `Str` arguments); a display hint applies to the argument after it.
use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
};

/// aya-log's levels (`aya_log_common::Level`), 1 to 5 on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Error = 1,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Record {
    pub level: Level,
    /// The eBPF module that logged it (`refusal_agent_ebpf::sock`).
    pub module: String,
    pub file: String,
    pub line: u32,
    pub message: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed kernel log record: {0}")]
pub struct Malformed(&'static str);

/// Header field kinds (`RecordFieldKind`).
const TARGET: u8 = 0;
const LEVEL: u8 = 1;
const MODULE: u8 = 2;
const FILE: u8 = 3;
const LINE: u8 = 4;
const NUM_ARGS: u8 = 5;

/// Argument kinds (`ArgumentKind`) this reader knows; any other is malformed.
mod kind {
    pub const DISPLAY_HINT: u8 = 0;
    pub const I8: u8 = 1;
    pub const ISIZE: u8 = 5;
    pub const U8: u8 = 6;
    pub const USIZE: u8 = 10;
    pub const F32: u8 = 11;
    pub const F64: u8 = 12;
    pub const IPV4: u8 = 13;
    pub const IPV6: u8 = 14;
    pub const ARR_U8_LEN4: u8 = 15;
    pub const ARR_U8_LEN6: u8 = 16;
    pub const ARR_U8_LEN16: u8 = 17;
    pub const ARR_U16_LEN8: u8 = 18;
    pub const BYTES: u8 = 19;
    pub const STR: u8 = 20;
    pub const POINTER: u8 = 21;
}

/// Display hints (`DisplayHint`).
mod hint {
    pub const LOWER_HEX: u8 = 2;
    pub const UPPER_HEX: u8 = 3;
    pub const IP: u8 = 4;
    pub const UPPER_MAC: u8 = 6;
}

/// One `kind, len, value` triple from the front of `buf`.
fn field<'a>(buf: &mut &'a [u8]) -> Result<(u8, &'a [u8]), Malformed> {
    let &[kind, l0, l1, ref rest @ ..] = *buf else {
        return Err(Malformed("truncated field"));
    };
    let len = usize::from(u16::from_le_bytes([l0, l1]));
    let value = rest.get(..len).ok_or(Malformed("field longer than the record"))?;
    *buf = &rest[len..];
    Ok((kind, value))
}

fn text(value: &[u8]) -> Result<String, Malformed> {
    std::str::from_utf8(value)
        .map(str::to_owned)
        .map_err(|_| Malformed("text is not UTF-8"))
}

fn u32_of(value: &[u8]) -> Result<u32, Malformed> {
    Ok(u32::from_le_bytes(
        value.try_into().map_err(|_| Malformed("not a u32"))?,
    ))
}

pub fn decode(record: &[u8]) -> Result<Record, Malformed> {
    let [l0, l1, ..] = *record else {
        return Err(Malformed("no length"));
    };
    let len = usize::from(u16::from_le_bytes([l0, l1]));
    let mut buf = record.get(2..len).ok_or(Malformed("length past the record"))?;
    let (mut target, mut level, mut module, mut file, mut line, mut args) = (None, None, None, None, None, None);
    while target.is_none() || level.is_none() || module.is_none() || file.is_none() || line.is_none() || args.is_none()
    {
        let (k, value) = field(&mut buf)?;
        let once = match k {
            TARGET => target.replace(text(value)?).is_none(),
            LEVEL => {
                let l = match value {
                    [1] => Level::Error,
                    [2] => Level::Warn,
                    [3] => Level::Info,
                    [4] => Level::Debug,
                    [5] => Level::Trace,
                    _ => return Err(Malformed("unknown level")),
                };
                level.replace(l).is_none()
            }
            MODULE => module.replace(text(value)?).is_none(),
            FILE => file.replace(text(value)?).is_none(),
            LINE => line.replace(u32_of(value)?).is_none(),
            NUM_ARGS => args.replace(u32_of(value)?).is_none(),
            _ => return Err(Malformed("unknown header field")),
        };
        if !once {
            return Err(Malformed("header field twice"));
        }
    }
    let mut message = String::new();
    let mut pending_hint = None;
    // Every argument takes at least three bytes: a huge count ends at the record's end.
    for _ in 0..args.unwrap_or(0) {
        let (k, value) = field(&mut buf)?;
        if k == kind::DISPLAY_HINT {
            pending_hint = Some(*value.first().ok_or(Malformed("empty display hint"))?);
            continue;
        }
        argument(&mut message, k, value, pending_hint.take())?;
    }
    Ok(Record {
        level: level.unwrap_or(Level::Error),
        module: module.unwrap_or_default(),
        file: file.unwrap_or_default(),
        line: line.unwrap_or(0),
        message,
    })
}

/// Appends one argument as aya-log would print it.
fn argument(out: &mut String, k: u8, v: &[u8], hint: Option<u8>) -> Result<(), Malformed> {
    let hex = |out: &mut String, n: u128| match hint {
        Some(hint::LOWER_HEX) => write!(out, "{n:x}"),
        Some(hint::UPPER_HEX) => write!(out, "{n:X}"),
        _ => write!(out, "{n}"),
    };
    let int = |v: &[u8]| -> Result<[u8; 16], Malformed> {
        if v.is_empty() || v.len() > 8 || !v.len().is_power_of_two() {
            return Err(Malformed("integer of odd size"));
        }
        let mut b = [0u8; 16];
        b[..v.len()].copy_from_slice(v);
        Ok(b)
    };
    let written = match k {
        kind::I8..=kind::ISIZE => {
            let b = int(v)?;
            // Sign-extend from the value's width.
            let shift = 128 - 8 * v.len() as u32;
            let n = (i128::from_le_bytes(b) << shift) >> shift;
            if n < 0 && hint.is_none_or(|h| h != hint::LOWER_HEX && h != hint::UPPER_HEX) {
                write!(out, "{n}")
            } else {
                hex(out, n as u128 & (u128::MAX >> shift))
            }
        }
        kind::U8..=kind::USIZE => hex(out, u128::from_le_bytes(int(v)?)),
        kind::F32 => write!(
            out,
            "{}",
            f32::from_le_bytes(v.try_into().map_err(|_| Malformed("not an f32"))?)
        ),
        kind::F64 => write!(
            out,
            "{}",
            f64::from_le_bytes(v.try_into().map_err(|_| Malformed("not an f64"))?)
        ),
        kind::IPV4 | kind::ARR_U8_LEN4 if hint.is_none_or(|h| h == hint::IP) || k == kind::IPV4 => {
            let b: [u8; 4] = v.try_into().map_err(|_| Malformed("not an IPv4 address"))?;
            write!(out, "{}", Ipv4Addr::from(b))
        }
        kind::IPV6 | kind::ARR_U8_LEN16 | kind::ARR_U16_LEN8 if hint == Some(hint::IP) || k == kind::IPV6 => {
            let b: [u8; 16] = v.try_into().map_err(|_| Malformed("not an IPv6 address"))?;
            // `[u16; 8]` holds the groups little-endian, the others network order.
            let b = if k == kind::ARR_U16_LEN8 {
                let mut n = [0u8; 16];
                for (i, g) in b.chunks_exact(2).enumerate() {
                    n[2 * i..2 * i + 2].copy_from_slice(&u16::from_le_bytes([g[0], g[1]]).to_be_bytes());
                }
                n
            } else {
                b
            };
            write!(out, "{}", Ipv6Addr::from(b))
        }
        kind::ARR_U8_LEN6 if hint.is_some() => {
            let sep: Vec<String> = v
                .iter()
                .map(|b| match hint {
                    Some(hint::UPPER_MAC) => format!("{b:02X}"),
                    _ => format!("{b:02x}"),
                })
                .collect();
            write!(out, "{}", sep.join(":"))
        }
        kind::STR => {
            out.push_str(std::str::from_utf8(v).map_err(|_| Malformed("text is not UTF-8"))?);
            Ok(())
        }
        kind::POINTER => write!(out, "0x{:x}", u128::from_le_bytes(int(v)?)),
        kind::IPV4..=kind::BYTES => v.iter().try_for_each(|b| match hint {
            Some(hint::UPPER_HEX) => write!(out, "{b:02X}"),
            _ => write!(out, "{b:02x}"),
        }),
        _ => return Err(Malformed("unknown argument kind")),
    };
    written.map_err(|_| Malformed("formatting"))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn put(buf: &mut Vec<u8>, kind: u8, value: &[u8]) {
        buf.push(kind);
        buf.extend_from_slice(&(value.len() as u16).to_le_bytes());
        buf.extend_from_slice(value);
    }

    /// A record as aya-log-ebpf 0.2 writes it: `"probe read failed at offset {}"` with 1240.
    fn sample() -> Vec<u8> {
        let mut b = vec![0, 0];
        put(&mut b, TARGET, b"refusal_agent_ebpf::log");
        put(&mut b, LEVEL, &[4]);
        put(&mut b, MODULE, b"refusal_agent_ebpf::log");
        put(&mut b, FILE, b"agent-ebpf/src/log.rs");
        put(&mut b, LINE, &17u32.to_le_bytes());
        put(&mut b, NUM_ARGS, &3u32.to_le_bytes());
        put(&mut b, kind::STR, b"probe read failed at offset ");
        put(&mut b, kind::DISPLAY_HINT, &[1]);
        put(&mut b, kind::U8 + 2, &1240u32.to_le_bytes());
        let len = b.len() as u16;
        b[..2].copy_from_slice(&len.to_le_bytes());
        // The ring's record is padded up to a power of two.
        b.resize(b.len().next_power_of_two(), 0);
        b
    }

    #[test]
    fn decodes_what_the_programs_write() {
        assert_eq!(
            decode(&sample()),
            Ok(Record {
                level: Level::Debug,
                module: "refusal_agent_ebpf::log".into(),
                file: "agent-ebpf/src/log.rs".into(),
                line: 17,
                message: "probe read failed at offset 1240".into(),
            })
        );
    }

    #[test]
    fn formats_by_hint() {
        let one = |k: u8, v: &[u8], h: Option<u8>| {
            let mut s = String::new();
            argument(&mut s, k, v, h).map(|()| s)
        };
        assert_eq!(one(kind::I8 + 1, &(-3i16).to_le_bytes(), None), Ok("-3".into()));
        assert_eq!(
            one(kind::I8 + 1, &(-1i16).to_le_bytes(), Some(hint::LOWER_HEX)),
            Ok("ffff".into())
        );
        assert_eq!(
            one(kind::U8 + 3, &255u64.to_le_bytes(), Some(hint::UPPER_HEX)),
            Ok("FF".into())
        );
        assert_eq!(
            one(kind::ARR_U8_LEN4, &[10, 0, 0, 7], Some(hint::IP)),
            Ok("10.0.0.7".into())
        );
        let v6: [u8; 16] = "fd00::7".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(one(kind::ARR_U8_LEN16, &v6, Some(hint::IP)), Ok("fd00::7".into()));
        assert_eq!(one(kind::BYTES, &[0xab, 1], None), Ok("ab01".into()));
        assert_eq!(one(99, &[], None), Err(Malformed("unknown argument kind")));
    }

    #[test]
    fn refuses_what_the_programs_never_write() {
        let good = sample();
        let level_at = 2 + 3 + "refusal_agent_ebpf::log".len() + 3;
        let mut bad = good.clone();
        bad[level_at] = 9;
        assert_eq!(decode(&bad), Err(Malformed("unknown level")));
        assert_eq!(decode(&good[..40]), Err(Malformed("length past the record")));
        assert_eq!(decode(&[]), Err(Malformed("no length")));
        let mut twice = good.clone();
        twice[2] = LEVEL;
        assert!(decode(&twice).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn never_panics_on_a_damaged_record(at in 0usize..256, byte in any::<u8>()) {
            let mut b = sample();
            b[at] = byte;
            let _ = decode(&b);
        }
    }
}
