//! A small parser for the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF programs get no CO-RE relocations, so user space resolves the running kernel's
//! struct offsets, enum values and tracepoint signatures here and hands them to the programs as
//! globals. The blob is untrusted: every read is bounds-checked and every walk of the type graph
//! is bounded, so a malformed blob yields `Err`, never a panic or a hang.

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Io { path: &'static str, source: std::io::Error },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no {kind} named `{name}`")]
    NoType { kind: &'static str, name: String },
    #[error("`{ty}` has no member `{member}`")]
    NoMember { ty: String, member: String },
    #[error("`{ty}.{member}` is a bitfield, not byte addressable")]
    Bitfield { ty: String, member: String },
    #[error("enum `{ty}` has no enumerator `{name}`")]
    NoEnumerator { ty: String, name: String },
}

// The BTF_KIND_* values the lookups name; `extra_len` knows all of them.
const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const TYPEDEF: u32 = 8;
const FUNC: u32 = 12;
const FUNC_PROTO: u32 = 13;
const ENUM64: u32 = 19;
/// TYPEDEF, VOLATILE, CONST, RESTRICT and TYPE_TAG: skipped to reach the type they name.
const ALIASES: [u32; 5] = [TYPEDEF, 9, 10, 11, 18];
const ENUMS: &[u32] = &[ENUM, ENUM64];

/// Bound on alias chains, array nesting and anonymous-member nesting: real kernels need a
/// handful, and it stops cycles in a garbage blob.
const MAX_DEPTH: u32 = 32;
/// Members visited per lookup, as anonymous members can fan out exponentially in a crafted blob.
const MEMBER_BUDGET: u32 = 100_000;

/// A `btf_type`; its kind-specific trailing data stays in `Btf::raw`, starting at `extra`.
#[derive(Clone, Copy, Default)]
struct Type {
    name: u32,
    info: u32,
    /// A size for INT/STRUCT/UNION/ENUM/ENUM64/FLOAT, a type id for the others.
    size_or_type: u32,
    extra: usize,
}

impl Type {
    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }
}

pub struct Btf {
    /// Indexed by type id; id 0 is `void`.
    types: Vec<Type>,
    /// The type section, read on demand for members, params and enumerators.
    raw: Vec<u8>,
    strings: Vec<u8>,
    /// (name offset, id) of named types sorted by name, then id: lookups are a binary search.
    by_name: Vec<(u32, u32)>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let bytes = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// The NUL-terminated string at `off`; empty (anonymous) if out of bounds.
fn cstr(strings: &[u8], off: u32) -> &[u8] {
    let rest = strings.get(off as usize..).unwrap_or_default();
    rest.split(|&b| b == 0).next().unwrap_or_default()
}

/// Length of the data after a `btf_type` of kind `k`, `None` for kinds this parser predates.
fn extra_len(k: u32, vlen: usize) -> Option<usize> {
    match k {
        INT | 14 | 17 => Some(4), // encoding, VAR linkage, DECL_TAG component index
        ARRAY => Some(12),
        STRUCT | UNION | ENUM64 | 15 => Some(12 * vlen), // members, enumerators, DATASEC vars
        ENUM | FUNC_PROTO => Some(8 * vlen),
        PTR | 7..=12 | 16 | 18 => Some(0), // FWD, aliases, FUNC, FLOAT, TYPE_TAG
        _ => None,
    }
}

impl Btf {
    pub const SYS_PATH: &'static str = "/sys/kernel/btf/vmlinux";

    /// Reads and parses the running kernel's BTF.
    pub fn from_sys() -> Result<Self, BtfError> {
        let path = Self::SYS_PATH;
        Self::parse(&std::fs::read(path).map_err(|source| BtfError::Io { path, source })?)
    }

    /// Parses a raw BTF blob (little-endian, as on x86-64 and arm64).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        use BtfError::Malformed;
        match data.get(..3) {
            Some([0x9f, 0xeb, 1]) => {}
            Some([0x9f, 0xeb, _]) => return Err(Malformed("unsupported BTF version")),
            Some([0xeb, 0x9f, _]) => return Err(Malformed("big-endian BTF unsupported")),
            _ => return Err(Malformed("bad magic")),
        }
        let word = |i: usize| u32_at(data, 4 * i).ok_or(Malformed("truncated header"));
        let (hdr_len, type_off, type_len) = (word(1)?, word(2)?, word(3)?);
        let (str_off, str_len) = (word(4)?, word(5)?);
        if hdr_len < 24 {
            return Err(Malformed("header too short"));
        }
        // Offsets count from the end of the header, which newer kernels may extend.
        let section = |off: u32, len: u32| {
            let start = (hdr_len as usize).checked_add(off as usize)?;
            data.get(start..start.checked_add(len as usize)?)
        };
        let raw = section(type_off, type_len).ok_or(Malformed("type section out of bounds"))?;
        let strings = section(str_off, str_len).ok_or(Malformed("string section out of bounds"))?;
        // As the kernel checks: offset 0 is the empty name and the last string is terminated.
        if strings.first() != Some(&0) || strings.last() != Some(&0) {
            return Err(Malformed("string section is not NUL-delimited"));
        }

        let mut types = vec![Type::default()];
        let mut pos = 0;
        while pos < raw.len() {
            let at = |i: usize| u32_at(raw, pos + 4 * i).ok_or(Malformed("truncated type"));
            let (name, info, size_or_type, extra) = (at(0)?, at(1)?, at(2)?, pos + 12);
            let t = Type {
                name,
                info,
                size_or_type,
                extra,
            };
            pos = extra + extra_len(t.kind(), t.vlen()).ok_or(Malformed("unknown type kind"))?;
            if pos > raw.len() {
                return Err(Malformed("truncated type"));
            }
            types.push(t);
        }

        let name = |&(off, _): &(u32, u32)| cstr(strings, off);
        let named = types.iter().zip(0..).map(|(t, id)| (t.name, id));
        let mut by_name: Vec<_> = named.filter(|e| !name(e).is_empty()).collect();
        by_name.sort_by(|a, b| name(a).cmp(name(b))); // stable: id order within a name
        Ok(Btf {
            types,
            raw: raw.to_vec(),
            strings: strings.to_vec(),
            by_name,
        })
    }

    /// Byte offset of `member` in struct/union `ty`, looking through anonymous struct/union
    /// members; a dotted path `a.b` follows named members. Bitfields are an error.
    pub fn member_offset(&self, ty: &str, member: &str) -> Result<u32, BtfError> {
        self.member(ty, member).map(|(offset, _)| offset)
    }

    /// Size in bytes of the member's type, through typedefs and qualifiers.
    pub fn member_size(&self, ty: &str, member: &str) -> Result<u32, BtfError> {
        let (_, id) = self.member(ty, member)?;
        self.size_of(id).ok_or(BtfError::Malformed("member type has no size"))
    }

    /// Value of enumerator `name` of enum `ty`. An unsigned 64-bit value above `i64::MAX` comes
    /// back as its two's complement bit pattern.
    pub fn enum_value(&self, ty: &str, name: &str) -> Result<i64, BtfError> {
        let found = (self.named(ty, ENUMS).flat_map(|t| self.enumerators(t))).find(|(n, _)| *n == name.as_bytes());
        match found {
            Some((_, value)) => Ok(value),
            None if self.named(ty, ENUMS).next().is_none() => Err(no_type("enum", ty)),
            None => Err(BtfError::NoEnumerator {
                ty: ty.into(),
                name: name.into(),
            }),
        }
    }

    /// All enumerators of enum `ty` in declaration order.
    pub fn enum_variants(&self, ty: &str) -> Result<Vec<(String, i64)>, BtfError> {
        // An empty enum may be a forward declaration of the same name: prefer the definition.
        let t = (self.named(ty, ENUMS).find(|t| t.vlen() > 0))
            .or_else(|| self.named(ty, ENUMS).next())
            .ok_or_else(|| no_type("enum", ty))?;
        let variants = self.enumerators(t);
        Ok(variants
            .map(|(n, v)| (String::from_utf8_lossy(n).into_owned(), v))
            .collect())
    }

    /// Arguments of BTF-enabled tracepoint `name`: the params of the func_proto behind typedef
    /// `btf_trace_<name>` (a pointer to `void (*)(void *ctx, args...)`), minus `ctx`.
    pub fn tracepoint_arg_count(&self, name: &str) -> Result<usize, BtfError> {
        let typedef = format!("btf_trace_{name}");
        let td = (self.named(&typedef, &[TYPEDEF]).next()).ok_or_else(|| no_type("tracepoint typedef", &typedef))?;
        let pointee = |id| {
            self.resolve(id)
                .filter(|t| t.kind() == PTR)
                .and_then(|p| self.resolve(p.size_or_type))
        };
        let proto = pointee(td.size_or_type).filter(|t| t.kind() == FUNC_PROTO);
        let ctx = proto
            .and_then(|p| self.records(p, 8).next())
            .and_then(|param| u32_at(param, 4));
        match (proto, ctx.and_then(pointee)) {
            (Some(proto), Some(void)) if void.kind() == 0 => Ok(proto.vlen() - 1),
            _ => Err(BtfError::Malformed(
                "btf_trace_* is not a pointer to func_proto(void *, ...)",
            )),
        }
    }

    /// Whether a function `name` exists (an fentry/kprobe target).
    pub fn has_func(&self, name: &str) -> bool {
        self.named(name, &[FUNC]).next().is_some()
    }

    /// Types named `name` of one of `kinds` (a typedef and a struct often share a name, and
    /// vmlinux has a few duplicate struct and enum names), in id order.
    fn named<'a>(&'a self, name: &'a str, kinds: &'a [u32]) -> impl Iterator<Item = &'a Type> {
        let key = |&(off, _): &(u32, u32)| cstr(&self.strings, off);
        let start = self.by_name.partition_point(|e| key(e) < name.as_bytes());
        let same_name = self.by_name.get(start..).unwrap_or_default().iter();
        (same_name.take_while(move |e| key(e) == name.as_bytes()))
            .filter_map(|&(_, id)| self.types.get(id as usize))
            .filter(|t| kinds.contains(&t.kind()))
    }

    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..MAX_DEPTH {
            let t = self.types.get(id as usize)?;
            if !ALIASES.contains(&t.kind()) {
                return Some(t);
            }
            id = t.size_or_type;
        }
        None
    }

    /// The `width`-byte records after `t`: members, params or enumerators.
    fn records(&self, t: &Type, width: usize) -> impl Iterator<Item = &[u8]> {
        let end = t.extra.saturating_add(t.vlen() * width);
        self.raw.get(t.extra..end).unwrap_or_default().chunks_exact(width)
    }

    /// (name, value) of an ENUM or ENUM64. Signedness comes from kind_flag, which BTF only
    /// sets since 6.0: older kernels' negative ENUM values read as large unsigned ones.
    fn enumerators<'a>(&'a self, t: &Type) -> impl Iterator<Item = (&'a [u8], i64)> {
        let (is64, signed) = (t.kind() == ENUM64, t.info >> 31 == 1);
        self.records(t, if is64 { 12 } else { 8 }).map(move |r| {
            let w = |i: usize| u32_at(r, 4 * i).unwrap_or_default();
            let value = match (is64, signed) {
                (true, _) => ((u64::from(w(2)) << 32) | u64::from(w(1))) as i64,
                (false, true) => i64::from(w(1) as i32),
                (false, false) => i64::from(w(1)),
            };
            (cstr(&self.strings, w(0)), value)
        })
    }

    /// Finds `name` in struct/union `t`, descending into anonymous struct/union members in
    /// declaration order. Returns (type id, bit offset relative to `t`, bitfield size).
    fn find_member(&self, t: &Type, name: &[u8], depth: u32, budget: &mut u32) -> Option<(u32, u32, u32)> {
        if depth > MAX_DEPTH || ![STRUCT, UNION].contains(&t.kind()) {
            return None;
        }
        for r in self.records(t, 12) {
            *budget = budget.checked_sub(1)?;
            let w = |i: usize| u32_at(r, 4 * i).unwrap_or_default();
            // With kind_flag, the offset's top byte holds the bitfield size.
            let (ty, bits, size) = match t.info >> 31 {
                1 => (w(1), w(2) & 0xff_ffff, w(2) >> 24),
                _ => (w(1), w(2), 0),
            };
            let member_name = cstr(&self.strings, w(0));
            if member_name == name {
                return Some((ty, bits, size));
            }
            if member_name.is_empty()
                && let Some(inner) = self.resolve(ty)
                && let Some((ty, inner_bits, size)) = self.find_member(inner, name, depth + 1, budget)
            {
                return Some((ty, bits.checked_add(inner_bits)?, size));
            }
        }
        None
    }

    /// Byte offset and type id of member path `path` in the first struct/union `ty` having it.
    fn member(&self, ty: &str, path: &str) -> Result<(u32, u32), BtfError> {
        let mut result = Err(no_type("struct or union", ty));
        for t in self.named(ty, &[STRUCT, UNION]) {
            result = self.member_in(t, ty, path);
            if result.is_ok() {
                break;
            }
        }
        result
    }

    fn member_in(&self, t: &Type, ty: &str, path: &str) -> Result<(u32, u32), BtfError> {
        let (mut cur, mut offset, mut id, mut budget) = (Some(t), 0u32, 0, MEMBER_BUDGET);
        let err = |bitfield| {
            let (ty, member) = (ty.into(), path.into());
            match bitfield {
                true => BtfError::Bitfield { ty, member },
                false => BtfError::NoMember { ty, member },
            }
        };
        for part in path.split('.') {
            let (ty, bits, size) = (cur.filter(|_| !part.is_empty()))
                .and_then(|c| self.find_member(c, part.as_bytes(), 0, &mut budget))
                .ok_or_else(|| err(false))?;
            // pahole has set kind_flag for bitfields since before BTF reached sysfs, so the
            // older encoding (in the INT type) is not checked.
            if size != 0 || !bits.is_multiple_of(8) {
                return Err(err(true));
            }
            offset = offset
                .checked_add(bits / 8)
                .ok_or(BtfError::Malformed("offset overflows"))?;
            (cur, id) = (self.resolve(ty), ty);
        }
        Ok((offset, id))
    }

    fn size_of(&self, mut id: u32) -> Option<u32> {
        let mut elems = 1u32;
        for _ in 0..MAX_DEPTH {
            let t = self.resolve(id)?;
            match t.kind() {
                INT | STRUCT | UNION | ENUM | ENUM64 | 16 => {
                    return elems.checked_mul(t.size_or_type);
                }
                // BTF records no pointer width; the agent targets 64-bit kernels.
                PTR => return elems.checked_mul(8),
                ARRAY => {
                    elems = elems.checked_mul(u32_at(&self.raw, t.extra + 8)?)?;
                    id = u32_at(&self.raw, t.extra)?;
                }
                _ => return None,
            }
        }
        None
    }
}

fn no_type(kind: &'static str, name: &str) -> BtfError {
    BtfError::NoType {
        kind,
        name: name.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `kind | FLAG` sets kind_flag once shifted into `info`.
    const FLAG: u32 = 0x80;

    /// Hand-built blobs: `ty` appends a type with its (name, words...) records and returns its id.
    #[derive(Default)]
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        count: u32,
    }

    impl Builder {
        fn str(&mut self, s: &str) -> u32 {
            let off = self.strings.len() as u32 + 1; // after the empty name `build` prepends
            self.strings.extend(s.bytes().chain([0]));
            if s.is_empty() { 0 } else { off }
        }
        fn words(&mut self, words: &[u32]) {
            self.types.extend(words.iter().flat_map(|w| w.to_le_bytes()));
        }
        fn ty(&mut self, name: &str, kind: u32, size_or_type: u32, records: &[(&str, &[u32])]) -> u32 {
            let name = self.str(name);
            self.words(&[name, (kind << 24) | records.len() as u32, size_or_type]);
            for (name, rest) in records {
                let name = self.str(name);
                self.words(&[name]);
                self.words(rest);
            }
            self.count += 1;
            self.count
        }
        fn build(&self) -> Vec<u8> {
            let (types, strings) = (self.types.len() as u32, self.strings.len() as u32 + 1);
            let header = [0x0001_eb9f, 24, 0, types, types, strings]; // magic, version 1, flags 0
            let mut out: Vec<u8> = header.iter().flat_map(|w| w.to_le_bytes()).collect();
            out.extend(self.types.iter().chain(&[0]).chain(&self.strings));
            out
        }
    }

    #[rustfmt::skip]
    fn sample() -> Vec<u8> {
        let mut b = Builder::default();
        let uint = b.ty("unsigned int", INT, 4, &[]);
        b.words(&[32]);
        let u16t = b.ty("unsigned short", INT, 2, &[]);
        b.words(&[16]);
        let u32t = b.ty("u32", TYPEDEF, uint, &[]);
        let c = b.ty("", 10, u32t, &[]); // const
        let cv = b.ty("", 9, c, &[]); // volatile
        let tagged = b.ty("", 18, cv, &[]); // type_tag
        // outer { u32 a; struct { u32 pad; union { struct { u16 lo, hi; }; u32 whole; }; };
        //         unsigned flags:3; struct inner inner; u16 arr[3]; struct outer *next; }
        let halves = b.ty("", STRUCT, 4, &[("lo", &[u16t, 0]), ("hi", &[u16t, 16])]);
        let word = b.ty("", UNION, 4, &[("", &[halves, 0]), ("whole", &[u32t, 0])]);
        let padded = b.ty("", STRUCT, 8, &[("pad", &[uint, 0]), ("", &[word, 32])]);
        let inner = b.ty("inner", STRUCT, 8, &[("x", &[uint, 0]), ("y", &[tagged, 32])]);
        let arr = b.ty("", ARRAY, 0, &[]);
        b.words(&[u16t, uint, 3]);
        b.ty("outer", TYPEDEF, b.count + 3, &[]); // shares the struct's name, with a lower id
        let ptr = b.ty("", PTR, b.count + 2, &[]);
        b.ty("outer", STRUCT | FLAG, 48, &[
            ("a", &[u32t, 0]), ("", &[padded, 64]), ("flags", &[uint, (3 << 24) | 128]),
            ("inner", &[inner, 160]), ("arr", &[arr, 256]), ("next", &[ptr, 320]),
        ]);
        b.ty("reason", ENUM | FLAG, 4, &[]); // a forward declaration
        b.ty("reason", ENUM | FLAG, 4, &[("A", &[0]), ("B", &[u32::MAX])]);
        b.ty("ureason", ENUM, 4, &[("BIG", &[u32::MAX])]);
        b.ty("big", ENUM64, 8, &[("HUGE", &[0, 1 << 8]), ("MAX", &[u32::MAX, u32::MAX])]);
        b.ty("neg", ENUM64 | FLAG, 8, &[("M", &[u32::MAX - 1, u32::MAX])]);
        let void_ptr = b.ty("", PTR, 0, &[]);
        let proto = b.ty("", FUNC_PROTO, 0, &[("", &[void_ptr]), ("sk", &[ptr]), ("why", &[uint])]);
        let proto_ptr = b.ty("", PTR, proto, &[]);
        b.ty("btf_trace_my_event", TYPEDEF, proto_ptr, &[]);
        b.ty("btf_trace_not_ptr", TYPEDEF, uint, &[]);
        let no_ctx = b.ty("", FUNC_PROTO, 0, &[("", &[uint])]);
        let no_ctx = b.ty("", PTR, no_ctx, &[]);
        b.ty("btf_trace_no_ctx", TYPEDEF, no_ctx, &[]);
        b.ty("my_func", FUNC, proto, &[]);
        // Other trailing-data layouts, then a FUNC that is only found if they were skipped right.
        let var = b.ty("v", 14, uint, &[]); // VAR
        b.words(&[1]);
        b.ty(".data", 15, 4, &[("", &[0, 4])]); // DATASEC {type, offset, size}
        b.ty("f", 16, 8, &[]); // FLOAT
        b.ty("tag", 17, var, &[]); // DECL_TAG
        b.words(&[u32::MAX]);
        b.ty("s", 7, 0, &[]); // FWD
        b.ty("", 11, ptr, &[]); // RESTRICT
        b.ty("after_tail", FUNC, proto, &[]);
        b.build()
    }

    fn err<T: std::fmt::Debug>(r: Result<T, BtfError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn members_through_anonymous_members_paths_and_aliases() {
        let btf = Btf::parse(&sample()).unwrap();
        let at = |m| {
            (
                btf.member_offset("outer", m).unwrap(),
                btf.member_size("outer", m).unwrap(),
            )
        };
        let got = [at("a"), at("pad"), at("whole"), at("lo"), at("hi")];
        assert_eq!(got, [(0, 4), (8, 4), (12, 4), (12, 2), (14, 2)]);
        let got = [at("inner"), at("inner.y"), at("arr"), at("next")];
        assert_eq!(got, [(20, 8), (24, 4), (32, 6), (40, 8)]);
    }

    #[test]
    fn errors_name_what_is_missing() {
        let btf = Btf::parse(&sample()).unwrap();
        let flags = btf.member_offset("outer", "flags");
        assert_eq!(err(flags), "`outer.flags` is a bitfield, not byte addressable");
        assert_eq!(err(btf.member_offset("outer", "nope")), "`outer` has no member `nope`");
        for path in ["", ".", "a.", "a.x", "inner.z", "inner..y"] {
            let got = btf.member_offset("outer", path);
            assert!(matches!(got, Err(BtfError::NoMember { .. })), "{path}");
        }
        let no_sock = "kernel BTF has no struct or union named `sock`";
        assert_eq!(err(btf.member_offset("sock", "a")), no_sock);
        let no_struct_u32 = "kernel BTF has no struct or union named `u32`";
        assert_eq!(err(btf.member_size("u32", "a")), no_struct_u32);
        assert_eq!(
            err(btf.enum_value("outer", "A")),
            "kernel BTF has no enum named `outer`"
        );
        assert_eq!(
            err(btf.enum_value("reason", "C")),
            "enum `reason` has no enumerator `C`"
        );
        let no_tp = "kernel BTF has no tracepoint typedef named `btf_trace_nope`";
        assert_eq!(err(btf.tracepoint_arg_count("nope")), no_tp);
        for bad in ["not_ptr", "no_ctx"] {
            let got = btf.tracepoint_arg_count(bad);
            assert!(matches!(got, Err(BtfError::Malformed(_))), "{bad}");
        }
    }

    #[test]
    fn enums_funcs_and_tracepoints() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.enum_value("reason", "B").unwrap(), -1);
        assert_eq!(btf.enum_value("ureason", "BIG").unwrap(), i64::from(u32::MAX));
        assert_eq!(btf.enum_value("big", "HUGE").unwrap(), 1 << 40);
        assert_eq!(btf.enum_value("big", "MAX").unwrap(), -1); // u64::MAX's bit pattern
        assert_eq!(btf.enum_value("neg", "M").unwrap(), -2);
        let reasons = btf.enum_variants("reason").unwrap();
        assert_eq!(reasons, [("A".to_string(), 0), ("B".to_string(), -1)]);
        assert_eq!(btf.tracepoint_arg_count("my_event").unwrap(), 2);
        assert!(btf.has_func("my_func") && btf.has_func("after_tail"));
        assert!(!btf.has_func("outer") && !btf.has_func("my_fun") && !btf.has_func(""));
    }

    #[test]
    fn truncated_or_garbage_input_is_an_error_never_a_panic() {
        let blob = sample();
        for len in 0..blob.len() {
            assert!(Btf::parse(&blob[..len]).is_err(), "{len}-byte prefix");
        }
        let with_word = |i: usize, value: u32| {
            let mut b = blob.clone();
            b[4 * i..4 * i + 4].copy_from_slice(&value.to_le_bytes());
            Btf::parse(&b).map(|_| ())
        };
        let big_endian = with_word(0, u32::from_le_bytes([0xeb, 0x9f, 1, 0]));
        assert_eq!(err(big_endian), "malformed BTF: big-endian BTF unsupported");
        let type_len = u32::from_le_bytes([blob[12], blob[13], blob[14], blob[15]]);
        let short_types = with_word(3, type_len - 4);
        assert_eq!(err(short_types), "malformed BTF: truncated type");
        for (i, value) in [(1, 0), (1, u32::MAX), (2, u32::MAX), (4, u32::MAX), (5, 0)] {
            assert!(with_word(i, value).is_err(), "header word {i} = {value}");
        }
        // Bit flips everywhere, then sections of pseudo-random bytes (kinds mostly in range):
        // parsing or lookups may fail, but must return.
        let poke = |b: &[u8]| {
            let Ok(btf) = Btf::parse(b) else { return };
            _ = btf.member_offset("outer", "inner.y");
            _ = btf.member_size("outer", "hi");
            _ = btf.enum_variants("big");
            _ = btf.enum_value("reason", "B");
            _ = btf.tracepoint_arg_count("my_event");
        };
        for (i, mask) in (0..blob.len()).flat_map(|i| [(i, 0x01), (i, 0x80), (i, 0xff)]) {
            let mut b = blob.clone();
            b[i] ^= mask;
            poke(&b);
        }
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..2000 {
            let mut b = blob.clone();
            for byte in &mut b[24..] {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *byte = seed as u8 & if seed.is_multiple_of(3) { 0x1f } else { 0xff };
            }
            poke(&b);
        }
    }

    #[test]
    fn type_cycles_terminate() {
        let mut b = Builder::default();
        // Two anonymous members that are the struct itself: exponential without the budget.
        b.ty("loop", STRUCT, 8, &[("", &[1, 0]), ("", &[1, 0])]);
        b.ty("t", TYPEDEF, 2, &[]); // itself
        b.ty("s", STRUCT, 4, &[("m", &[2, 0])]);
        let btf = Btf::parse(&b.build()).unwrap();
        let missing = btf.member_offset("loop", "x");
        assert_eq!(err(missing), "`loop` has no member `x`");
        assert_eq!(btf.member_offset("s", "m").unwrap(), 0);
        let no_size = btf.member_size("s", "m");
        assert!(matches!(no_size, Err(BtfError::Malformed(_))));
    }

    #[test]
    fn running_kernel() {
        let btf = match Btf::from_sys() {
            Ok(btf) => btf,
            Err(e) => return eprintln!("skipping the running-kernel check: {e}"),
        };
        let at = |ty, m| Some((btf.member_offset(ty, m).ok()?, btf.member_size(ty, m).ok()?));
        let common = ["skc_daddr", "skc_dport", "skc_family", "skc_state", "skc_v6_daddr"];
        let common = common.map(|m| at("sock_common", m).unwrap());
        let sock = ["sk_err", "sk_protocol"].map(|m| at("sock", m).unwrap());
        eprintln!("sock_common daddr, dport, family, state, v6_daddr (offset, size): {common:?}");
        eprintln!("sock err, protocol (offset, size): {sock:?}");
        // Stable since long before BTF: the address and port pairs open `struct sock_common`.
        assert_eq!(common[..2], [(0, 4), (12, 2)]);
        assert_eq!(common.map(|(_, size)| size), [4, 2, 2, 1, 16]);
        assert_eq!(sock.map(|(_, size)| size), [4, 2]);
        assert_eq!(at("sock", "__sk_common.skc_dport"), Some((12, 2)));
        let reuse = btf.member_offset("sock_common", "skc_reuse");
        assert!(matches!(reuse, Err(BtfError::Bitfield { .. })));
        assert_eq!(btf.tracepoint_arg_count("inet_sock_set_state").unwrap(), 3);
        assert!(btf.has_func("tcp_connect") && !btf.has_func("no_such_function"));
        // The reset reason, as an enum and as a tracepoint argument, arrived in 6.10.
        if let Ok(reasons) = btf.enum_variants("sk_rst_reason") {
            assert!(reasons.iter().any(|(n, _)| n == "SK_RST_REASON_NO_SOCKET"));
            let not_specified = btf.enum_value("sk_rst_reason", "SK_RST_REASON_NOT_SPECIFIED");
            assert_eq!(not_specified.unwrap(), 0);
            assert_eq!(btf.tracepoint_arg_count("tcp_send_reset").unwrap(), 3);
        }
        // The classic tracepoint copies these into its record, so the widths must agree (its
        // offsets are record offsets, not struct ones). tracefs may not be mounted.
        let path = "/sys/kernel/tracing/events/sock/inet_sock_set_state/format";
        let Ok(format) = std::fs::read_to_string(path) else {
            return;
        };
        // e.g. "\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;"
        let size = |field: &str| {
            let line = format.lines().find(|l| l.contains(&format!(" {field};")))?;
            line.split("size:").nth(1)?.split(';').next()?.parse().ok()
        };
        let expected = [Some(common[1].1), Some(common[0].1), Some(common[4].1)];
        assert_eq!([size("dport"), size("daddr[4]"), size("daddr_v6[16]")], expected);
    }
}
