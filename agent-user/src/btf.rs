//! A small parser for the kernel's BTF (`/sys/kernel/btf/vmlinux`): just enough to resolve
//! struct member offsets, enum values and tracepoint signatures of the running kernel, since
//! Rust eBPF programs get no CO-RE relocations. Never panics on malformed input.
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Io {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("no type named `{0}` in BTF")]
    NoType(String),
    #[error("`{ty}` has no member `{member}`")]
    NoMember { ty: String, member: String },
    #[error("`{ty}.{member}` is a bitfield, not byte addressable")]
    Bitfield { ty: String, member: String },
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    ty: u32,
    bit_offset: u32,
    bitfield_size: u32,
}

#[derive(Debug, Clone)]
struct Type {
    name: u32,
    kind: u32,
    /// Size for INT/STRUCT/UNION/ENUM, referenced type for the others.
    size_or_type: u32,
    members: Vec<Member>,
    enums: Vec<(u32, i64)>,
    array: Option<(u32, u32)>,
}

pub struct Btf {
    /// Index 0 is `void`.
    types: Vec<Type>,
    strings: Vec<u8>,
    by_name: HashMap<String, Vec<u32>>,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn u32(&mut self) -> Result<u32, BtfError> {
        let end = self
            .pos
            .checked_add(4)
            .ok_or(BtfError::Malformed("offset overflow"))?;
        let b = self
            .data
            .get(self.pos..end)
            .ok_or(BtfError::Malformed("truncated type section"))?;
        self.pos = end;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

impl Btf {
    pub const SYS_PATH: &'static str = "/sys/kernel/btf/vmlinux";

    pub fn from_sys() -> Result<Self, BtfError> {
        let data = std::fs::read(Self::SYS_PATH).map_err(|source| BtfError::Io {
            path: Self::SYS_PATH,
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let header = data
            .get(..24)
            .ok_or(BtfError::Malformed("truncated header"))?;
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        match u16::from_le_bytes([header[0], header[1]]) {
            0xeb9f => {}
            0x9feb => return Err(BtfError::Malformed("big-endian BTF unsupported")),
            _ => return Err(BtfError::Malformed("bad magic")),
        }
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (word(4), word(8), word(12), word(16), word(20));
        let section = |off: u32, len: u32| {
            let start = (hdr_len as usize).checked_add(off as usize)?;
            data.get(start..start.checked_add(len as usize)?)
        };
        let type_data =
            section(type_off, type_len).ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = section(str_off, str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();

        let void = Type {
            name: 0,
            kind: 0,
            size_or_type: 0,
            members: vec![],
            enums: vec![],
            array: None,
        };
        let mut types = vec![void];
        let mut r = Reader {
            data: type_data,
            pos: 0,
        };
        while r.pos < type_data.len() {
            let (name, info, size_or_type) = (r.u32()?, r.u32()?, r.u32()?);
            let (vlen, kind, kind_flag) = (info & 0xffff, (info >> 24) & 0x1f, info >> 31 == 1);
            let mut t = Type {
                name,
                kind,
                size_or_type,
                members: vec![],
                enums: vec![],
                array: None,
            };
            match kind {
                KIND_INT | 14 | 17 => {
                    r.u32()?;
                }
                KIND_PTR | 7 | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | 16 | KIND_TYPE_TAG => {}
                KIND_ARRAY => {
                    let (elem, _index, n) = (r.u32()?, r.u32()?, r.u32()?);
                    t.array = Some((elem, n));
                }
                KIND_STRUCT | KIND_UNION => {
                    for _ in 0..vlen {
                        let (name, ty, off) = (r.u32()?, r.u32()?, r.u32()?);
                        let (bit_offset, bitfield_size) = if kind_flag {
                            (off & 0xff_ffff, off >> 24)
                        } else {
                            (off, 0)
                        };
                        t.members.push(Member {
                            name,
                            ty,
                            bit_offset,
                            bitfield_size,
                        });
                    }
                }
                KIND_ENUM => {
                    for _ in 0..vlen {
                        let (name, val) = (r.u32()?, r.u32()?);
                        let v = if kind_flag {
                            i64::from(val as i32)
                        } else {
                            i64::from(val)
                        };
                        t.enums.push((name, v));
                    }
                }
                KIND_ENUM64 => {
                    for _ in 0..vlen {
                        let (name, lo, hi) = (r.u32()?, r.u32()?, r.u32()?);
                        t.enums
                            .push((name, ((u64::from(hi) << 32) | u64::from(lo)) as i64));
                    }
                }
                KIND_FUNC_PROTO => {
                    for _ in 0..vlen {
                        let (name, ty) = (r.u32()?, r.u32()?);
                        t.members.push(Member {
                            name,
                            ty,
                            bit_offset: 0,
                            bitfield_size: 0,
                        });
                    }
                }
                15 => {
                    for _ in 0..vlen {
                        r.u32()?;
                        r.u32()?;
                        r.u32()?;
                    }
                }
                _ => return Err(BtfError::Malformed("unknown type kind")),
            }
            types.push(t);
        }
        let mut btf = Btf {
            types,
            strings,
            by_name: HashMap::new(),
        };
        for id in 1..btf.types.len() {
            let name = btf.str(btf.types[id].name).to_string();
            if !name.is_empty() {
                btf.by_name.entry(name).or_default().push(id as u32);
            }
        }
        Ok(btf)
    }

    fn str(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn get(&self, id: u32) -> Option<&Type> {
        self.types.get(id as usize)
    }

    /// The type named `name` of one of `kinds` (a typedef and a struct may share a name).
    fn named(&self, name: &str, kinds: &[u32]) -> Result<&Type, BtfError> {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|&id| self.get(id))
            .find(|t| kinds.contains(&t.kind))
            .ok_or_else(|| BtfError::NoType(name.to_string()))
    }

    /// Follows typedefs and qualifiers, with a bound so a malformed cycle cannot hang us.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.get(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Finds `name` in `t`, descending into anonymous struct/union members; returns the bit
    /// offset from the start of `t` and the member.
    fn find_member(&self, t: &Type, name: &str, depth: u32) -> Option<(u32, Member)> {
        if depth > 16 {
            return None;
        }
        for m in &t.members {
            let member_name = self.str(m.name);
            if member_name == name {
                return Some((m.bit_offset, m.clone()));
            }
            if member_name.is_empty() {
                let inner = self.resolve(m.ty)?;
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && let Some((off, found)) = self.find_member(inner, name, depth + 1)
                {
                    return Some((m.bit_offset.checked_add(off)?, found));
                }
            }
        }
        None
    }

    fn member(&self, ty: &str, path: &str) -> Result<(u32, Member), BtfError> {
        let no_member = || BtfError::NoMember {
            ty: ty.to_string(),
            member: path.to_string(),
        };
        let mut t = self.named(ty, &[KIND_STRUCT, KIND_UNION])?;
        let mut total = 0u32;
        let mut last = None;
        for part in path.split('.') {
            let (off, m) = self.find_member(t, part, 0).ok_or_else(no_member)?;
            if m.bitfield_size != 0 || off % 8 != 0 {
                return Err(BtfError::Bitfield {
                    ty: ty.to_string(),
                    member: path.to_string(),
                });
            }
            total = total.checked_add(off / 8).ok_or_else(no_member)?;
            if let Some(next) = self.resolve(m.ty) {
                t = next;
            }
            last = Some(m);
        }
        Ok((total, last.ok_or_else(no_member)?))
    }

    /// Byte offset of `member` (a dotted path follows named members) inside struct/union `ty`.
    pub fn member_offset(&self, ty: &str, member: &str) -> Result<u32, BtfError> {
        self.member(ty, member).map(|(off, _)| off)
    }

    /// Size in bytes of the member's type.
    pub fn member_size(&self, ty: &str, member: &str) -> Result<u32, BtfError> {
        let (_, m) = self.member(ty, member)?;
        self.size_of(m.ty, 0)
            .ok_or(BtfError::Malformed("member of unsized type"))
    }

    fn size_of(&self, id: u32, depth: u32) -> Option<u32> {
        let t = self.resolve(id)?;
        match t.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 => Some(t.size_or_type),
            KIND_PTR => Some(8),
            KIND_ARRAY if depth < 8 => {
                let (elem, n) = t.array?;
                self.size_of(elem, depth + 1)?.checked_mul(n)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF blobs for tests: types are added in id order (first is id 1).
    #[derive(Default)]
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
    }

    impl Builder {
        fn new() -> Self {
            Self {
                types: vec![],
                strings: vec![0],
            }
        }
        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }
        fn w(&mut self, v: u32) {
            self.types.extend_from_slice(&v.to_le_bytes());
        }
        fn ty(&mut self, name: &str, kind: u32, vlen: u32, flag: bool, size: u32) {
            let n = self.s(name);
            self.w(n);
            self.w((u32::from(flag) << 31) | (kind << 24) | vlen);
            self.w(size);
        }
        fn int(&mut self, name: &str, size: u32) {
            self.ty(name, KIND_INT, 0, false, size);
            self.w(size * 8);
        }
        fn composite(
            &mut self,
            name: &str,
            kind: u32,
            size: u32,
            flag: bool,
            members: &[(&str, u32, u32)],
        ) {
            self.ty(name, kind, members.len() as u32, flag, size);
            for (n, ty, off) in members {
                let n = self.s(n);
                self.w(n);
                self.w(*ty);
                self.w(*off);
            }
        }
        fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&0xeb9fu16.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for v in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        b.int("unsigned int", 4); // 1
        b.ty("u32", KIND_TYPEDEF, 0, false, 1); // 2
        // 3: anonymous struct { u32 lo; u32 hi; }
        b.composite("", KIND_STRUCT, 8, false, &[("lo", 2, 0), ("hi", 2, 32)]);
        // 4: anonymous union { u64-ish pair (3); u32 whole; }
        b.composite("", KIND_UNION, 8, false, &[("", 3, 0), ("whole", 2, 0)]);
        // 5: struct outer { u32 a; union(4) @64; bitfield flags:3 @ 128 }
        b.composite(
            "outer",
            KIND_STRUCT,
            24,
            true,
            &[("a", 2, 0), ("", 4, 64), ("flags", 1, (3 << 24) | 128)],
        );
        // 6: enum reason { A = 0, B = -1 } (signed)
        b.ty("reason", KIND_ENUM, 2, true, 4);
        let (a, bb) = (b.s("A"), b.s("B"));
        b.w(a);
        b.w(0);
        b.w(bb);
        b.w(u32::MAX);
        // 7: enum64 big { HUGE = 1 << 40 }
        b.ty("big", KIND_ENUM64, 1, false, 8);
        let h = b.s("HUGE");
        b.w(h);
        b.w(0);
        b.w(1 << 8);
        // 8: func_proto (void *ctx, struct outer *sk, int reason)
        b.ty("", KIND_FUNC_PROTO, 3, false, 0);
        for ty in [0, 9, 1] {
            b.w(0);
            b.w(ty);
        }
        b.ty("", KIND_PTR, 0, false, 5); // 9: struct outer *
        b.ty("", KIND_PTR, 0, false, 8); // 10: pointer to the func_proto
        b.ty("btf_trace_my_event", KIND_TYPEDEF, 0, false, 10); // 11
        b.ty("my_func", KIND_FUNC, 0, false, 8); // 12
        b.build()
    }

    #[test]
    fn member_offsets_through_anonymous_members() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "lo").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "hi").unwrap(), 12);
        assert_eq!(btf.member_offset("outer", "whole").unwrap(), 8);
        assert_eq!(btf.member_size("outer", "hi").unwrap(), 4);
        assert!(matches!(
            btf.member_offset("outer", "flags"),
            Err(BtfError::Bitfield { .. })
        ));
        assert_eq!(
            btf.member_offset("outer", "nope").unwrap_err().to_string(),
            "`outer` has no member `nope`"
        );
        assert_eq!(
            btf.member_offset("inner", "a").unwrap_err().to_string(),
            "no type named `inner` in BTF"
        );
    }

    #[test]
    fn truncated_or_garbage_input_is_an_error_never_a_panic() {
        let blob = sample();
        for len in 0..blob.len() {
            let _ = Btf::parse(&blob[..len]);
        }
        let mut flipped = blob.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xa5;
            if let Ok(btf) = Btf::parse(&flipped) {
                let _ = btf.member_offset("outer", "hi");
            }
            flipped[i] ^= 0xa5;
        }
        assert!(Btf::parse(&[0u8; 24]).is_err());
    }

    #[test]
    fn running_kernel() {
        let Ok(btf) = Btf::from_sys() else {
            eprintln!("no /sys/kernel/btf/vmlinux: skipping the running-kernel check");
            return;
        };
        for m in [
            "skc_dport",
            "skc_daddr",
            "skc_v6_daddr",
            "skc_family",
            "skc_state",
        ] {
            btf.member_offset("sock_common", m).unwrap();
        }
        assert_eq!(btf.member_size("sock_common", "skc_dport").unwrap(), 2);
        assert_eq!(btf.member_size("sock_common", "skc_v6_daddr").unwrap(), 16);
        btf.member_offset("sock", "sk_err").unwrap();
        btf.member_offset("sock", "sk_protocol").unwrap();
        // The format file, when tracefs is mounted, agrees with BTF on the socket layout the
        // tracepoint itself reads (`sock_common` starts `struct sock`).
        assert!(btf.member_offset("sock", "__sk_common").unwrap() == 0);
    }
}
