//! `refusal-agent status`: the running daemon's targets as a table, from `/api/targets`.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::ExitCode,
    time::Duration,
};

use agent_core::serve::views::{PortAdvice, Target};

pub fn run(listen: SocketAddr) -> ExitCode {
    match fetch(listen) {
        Ok(body) => {
            print!("{}", table(&body.targets));
            print!("{}", advice(&body.ports));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("refusal-agent: asking the daemon at {listen}: {e}");
            ExitCode::from(1)
        }
    }
}

/// What `status` reads of `/api/targets`.
#[derive(serde::Deserialize)]
struct Body {
    targets: Vec<Target>,
    #[serde(default)]
    ports: Vec<PortAdvice>,
}

fn fetch(addr: SocketAddr) -> Result<Body, String> {
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
    serde_json::from_str::<Body>(body).map_err(|e| e.to_string())
}

pub fn table(targets: &[Target]) -> String {
    let mut out = format!(
        "{:<32} {:<15} {:<15} {:<30} {:<10} {:>7}  {}\n",
        "WORKLOAD", "CONTAINER", "COMM", "TARGET", "STATE", "REFUSED", "WHY"
    );
    for t in targets {
        let target = if t.dst_addr.contains(':') {
            format!("[{}]:{}", t.dst_addr, t.dst_port)
        } else {
            format!("{}:{}", t.dst_addr, t.dst_port)
        };
        // The pod is in the workload (`pod:<namespace>/<pod>`); outside Kubernetes, no container.
        let container = if t.container.is_empty() { "-" } else { &t.container };
        out.push_str(&format!(
            "{:<32} {:<15} {:<15} {:<30} {:<10} {:>7}  {}\n",
            t.workload, container, t.comm, target, t.state, t.refused_total, t.explanation
        ));
    }
    out
}

/// The retry advice per destination port, under the table; nothing until enough cold starts.
pub fn advice(ports: &[PortAdvice]) -> String {
    if ports.is_empty() {
        return String::new();
    }
    let mut out = String::from("\nRETRY ADVICE\n");
    for p in ports {
        out.push_str(&format!("{}\n", p.sentence));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_row_per_target() {
        let pod = Target {
            workload: "pod:shop/web-7d4f9c-x2k".into(),
            namespace: "shop".into(),
            pod: "web-7d4f9c-x2k".into(),
            container: "nginx".into(),
            comm: "curl".into(),
            dst_addr: "10.0.0.7".into(),
            dst_port: 80,
            state: "refusing".into(),
            refused_total: 3,
            ..Target::default()
        };
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
        let text = table(&[pod, t]);
        let row = text.lines().nth(1).unwrap();
        assert!(
            row.starts_with("pod:shop/web-7d4f9c-x2k          nginx           curl            10.0.0.7:80 "),
            "{row}"
        );
        let row = text.lines().nth(2).unwrap();
        assert!(
            row.starts_with("container:0123456789ab           -               app             [fd00::7]:8080"),
            "{row}"
        );
        assert!(
            row.ends_with("persistent     212  refused 212 times over 3m12s and never accepted"),
            "{row}"
        );
    }

    #[test]
    fn advice_follows_the_table_once_there_is_some() {
        assert_eq!(advice(&[]), "");
        let p = PortAdvice {
            dst_port: 8080,
            sentence: "cold starts of :8080 took 12–52 s (p95 48 s, 40 seen in 24h): retry for at least 60 s".into(),
        };
        assert_eq!(
            advice(&[p]),
            "\nRETRY ADVICE\ncold starts of :8080 took 12–52 s (p95 48 s, 40 seen in 24h): retry for at least 60 s\n"
        );
    }
}
