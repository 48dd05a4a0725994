//! The operator commands that print tables: `check` (what attaches where) and `status` (the
//! running daemon's targets).
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::ExitCode,
    time::Duration,
};

use crate::{api::Target, config::AttachMode, daemon, loader};

pub fn check(mode: AttachMode, opt_in: &[&str]) -> ExitCode {
    let kernel = match loader::prepare() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("refusal-agent: {e}");
            return ExitCode::from(1);
        }
    };
    println!("kernel {}", daemon::kernel_release());
    let probed = match loader::probe_all(&kernel) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("refusal-agent: {e}");
            return ExitCode::from(1);
        }
    };
    let mut all_ok = true;
    println!(
        "{:<14} {:<11} {:<52} {:<31} {:<6} detail",
        "HOOK", "MODE", "TARGET", "PROGRAM", "WORKS"
    );
    for ((hook, modes), spec) in probed.iter().zip(loader::HOOKS) {
        // The mode the daemon would use: the first that works, in chain order, of the forced
        // mode where the hook offers it (which it then must get, as `run` requires).
        let wanted = loader::wanted(spec, opt_in);
        let forced = wanted && mode != AttachMode::Auto && modes.iter().any(|(m, _)| *m == mode);
        let chosen = modes.iter().position(|(m, r)| r.is_ok() && (!forced || *m == mode));
        all_ok &= chosen.is_some() || !(spec.required || forced);
        for (i, ((m, result), (_, attach))) in modes.iter().zip(spec.chain).enumerate() {
            let works = if result.is_ok() { "yes" } else { "no" };
            let detail = match result {
                Ok(()) if Some(i) == chosen && wanted => "used".to_string(),
                Ok(()) if Some(i) == chosen => format!("off: opt-in, run --{}", hook.replace('_', "-")),
                Ok(()) => "available".to_string(),
                Err(why) => why.clone(),
            };
            // Program names match `refusal_agent_bpf_run_seconds_total{program}`.
            let programs = match loader::programs(attach).join(",") {
                p if p.is_empty() => "-".to_string(),
                p => p,
            };
            println!(
                "{hook:<14} {:<11} {:<52} {programs:<31} {works:<6} {detail}",
                m.name(),
                loader::target(attach)
            );
        }
    }
    if all_ok { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

pub fn status(listen: SocketAddr) -> ExitCode {
    match fetch_targets(listen) {
        Ok(targets) => {
            print!("{}", table(&targets));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("refusal-agent: asking the daemon at {listen}: {e}");
            ExitCode::from(1)
        }
    }
}

fn fetch_targets(addr: SocketAddr) -> Result<Vec<Target>, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET /api/targets HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").ok_or("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(head.lines().next().unwrap_or_default().to_string());
    }
    #[derive(serde::Deserialize)]
    struct Body {
        targets: Vec<Target>,
    }
    serde_json::from_str::<Body>(body)
        .map(|b| b.targets)
        .map_err(|e| e.to_string())
}

pub fn table(targets: &[Target]) -> String {
    let mut out = format!(
        "{:<24} {:<15} {:<30} {:<10} {:>7}  {}\n",
        "WORKLOAD", "COMM", "TARGET", "STATE", "REFUSED", "WHY"
    );
    for t in targets {
        let target = if t.dst_addr.contains(':') {
            format!("[{}]:{}", t.dst_addr, t.dst_port)
        } else {
            format!("{}:{}", t.dst_addr, t.dst_port)
        };
        out.push_str(&format!(
            "{:<24} {:<15} {:<30} {:<10} {:>7}  {}\n",
            t.workload, t.comm, target, t.state, t.refused_total, t.explanation
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_row_per_target() {
        let t = Target {
            workload: "container:0123456789ab".into(),
            comm: "app".into(),
            dst_addr: "fd00::7".into(),
            dst_port: 8080,
            state: "persistent".into(),
            refused_total: 212,
            explanation: "refused 212 times over 3m12s and never accepted".into(),
            ..Target::default()
        };
        let text = table(&[t]);
        let row = text.lines().nth(1).unwrap();
        assert!(
            row.starts_with("container:0123456789ab   app             [fd00::7]:8080"),
            "{row}"
        );
        assert!(
            row.ends_with("persistent     212  refused 212 times over 3m12s and never accepted"),
            "{row}"
        );
    }
}
