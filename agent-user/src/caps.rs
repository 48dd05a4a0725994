//! Capability checks, so a daemon started without privileges says which one is missing
//! instead of failing deep inside a bpf() call.
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Effective capability set of this process.
pub fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_cap_eff(&s))
        .unwrap_or(0)
}

pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The first capability needed to load and attach the programs that `caps` lacks.
pub fn missing_for_bpf(caps: u64) -> Option<&'static str> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        return Some("CAP_BPF (or CAP_SYS_ADMIN on kernels before 5.8)");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        return Some("CAP_PERFMON (or CAP_SYS_ADMIN on kernels before 5.8)");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks() {
        let status = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        let all = parse_cap_eff(status).unwrap();
        assert_eq!(missing_for_bpf(all), None);
        assert_eq!(
            missing_for_bpf(0).unwrap(),
            "CAP_BPF (or CAP_SYS_ADMIN on kernels before 5.8)"
        );
        assert_eq!(
            missing_for_bpf(1 << CAP_BPF).unwrap(),
            "CAP_PERFMON (or CAP_SYS_ADMIN on kernels before 5.8)"
        );
        assert_eq!(missing_for_bpf((1 << CAP_BPF) | (1 << CAP_PERFMON)), None);
        assert_eq!(missing_for_bpf(1 << CAP_SYS_ADMIN), None);
    }
}
