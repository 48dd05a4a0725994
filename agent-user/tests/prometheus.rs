//! Prometheus for real: a Prometheus server (Debian package) scrapes the real daemon every second
//! while the test produces every signal; then every PromQL expression of every dashboard panel
//! and every rule must parse and return data, `promtool check metrics` must accept the daemon's
//! exposition, which must hold every family of the table once (both writers), and Prometheus
//! must have stored the registry's process metrics and scrape histogram.
use std::{
    collections::BTreeSet,
    io::Write,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use agent_core::serve::families;
use testkit::{Daemon, closed_port, get, linger_zero, privileged, workspace_root};

const BIN: &str = env!("CARGO_BIN_EXE_refusal-agent");

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Dashboard variables as Grafana would fill them: everything, one scrape interval's worth.
fn substitute(expr: &str) -> String {
    let mut e = expr.to_string();
    // All namespaces and pods is `.*` (the variables' allValue): it keeps the workloads outside
    // Kubernetes, which have neither label.
    for var in ["namespace", "pod"] {
        e = e.replace(&format!("${var}"), ".*");
    }
    for var in ["instance", "workload", "dst_addr", "dst_port", "job", "comm"] {
        e = e
            .replace(&format!("=\"${var}\""), "=~\".+\"")
            .replace(&format!("=\"${{{var}}}\""), "=~\".+\"");
        e = e
            .replace(&format!("${{{var}}}"), ".+")
            .replace(&format!("${var}"), ".+");
    }
    e.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
}

fn dashboard_exprs() -> Vec<(String, String)> {
    fn walk(panels: &[serde_json::Value], file: &str, out: &mut Vec<(String, String)>) {
        for p in panels {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((format!("{file}: {}", p["title"].as_str().unwrap_or("?")), e.to_string()));
                }
            }
            walk(p["panels"].as_array().map(Vec::as_slice).unwrap_or_default(), file, out);
        }
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(workspace_root().join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            walk(d["panels"].as_array().unwrap(), &name, &mut out);
        }
    }
    out
}

/// The alert or record name and the `expr` of every rule in a rules file, each expression on
/// one line.
fn rule_exprs(path: &Path) -> Vec<(String, String)> {
    let file = path.file_name().unwrap().to_string_lossy();
    let doc: serde_json::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rules = doc["groups"].as_array().into_iter().flatten();
    rules
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .map(|r| {
            let name = r["alert"].as_str().or(r["record"].as_str()).unwrap_or_default();
            let expr = r["expr"].as_str().unwrap_or_default();
            let line = expr
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>();
            (format!("{file}: {name}"), line.join(" "))
        })
        .collect()
}

/// An alert's expression is a query compared to a threshold; the query itself must have data
/// even when the alert does not fire.
fn without_threshold(expr: &str) -> Option<String> {
    for op in [" == ", " != ", " > ", " < ", " >= ", " <= "] {
        if let Some((lhs, rhs)) = expr.rsplit_once(op)
            && rhs.trim().parse::<f64>().is_ok()
        {
            return Some(lhs.trim().to_string());
        }
    }
    None
}

struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Scrapes `target` as the DaemonSet's agent is scraped: with the agent pod's `namespace`
    /// and `pod` as target labels, and `honor_labels`.
    fn start(target: SocketAddr) -> Prometheus {
        let addr: SocketAddr = format!("127.0.0.1:{}", closed_port()).parse().unwrap();
        let dir = std::env::temp_dir().join(format!("refusal-prom-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let rules = workspace_root().join("dashboards/rules");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n  - {}\nscrape_configs:\n  - job_name: refusal-agent\n    honor_labels: true\n    static_configs:\n      - targets: ['{target}']\n        labels: {{namespace: refusal-agent, pod: refusal-agent-x7k2p}}\n",
            rules.join("refusal-recording.yml").display(),
            rules.join("refusal-alerts.yml").display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (Debian package `prometheus`)");
        let p = Prometheus { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !get(addr, "/-/ready").is_ok_and(|(c, _)| c == 200) {
            assert!(Instant::now() < deadline, "prometheus not ready:\n{}", p.log());
            thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// (error, number of series returned).
    fn query(&self, expr: &str) -> Result<usize, String> {
        let (code, body) =
            get(self.addr, &format!("/api/v1/query?query={}", encode(expr))).map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{code}: {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        Ok(match &v["data"]["result"] {
            serde_json::Value::Array(a) => a.len(),
            // Scalars and strings always carry a value.
            _ => 1,
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every signal the dashboards show: refusals (cold start, persistent, flapping, a client that
/// gives up before the cold start ends), inbound refusals, resets both ways, a listener killed.
fn produce_signals(duration: Duration) {
    let start = Instant::now();
    let persistent = closed_port();
    let cold = closed_port();
    // A client that stops after a second and a half, while `cold` listens only after 3 s.
    let quitter = thread::Builder::new()
        .name("quitter".into())
        .spawn(move || {
            while start.elapsed() < Duration::from_millis(1500) {
                let _ = TcpStream::connect(("127.0.0.1", cold));
                thread::sleep(Duration::from_millis(200));
            }
        })
        .unwrap();
    // A listener SIGKILLed, whose port keeps being refused.
    let killed = closed_port();
    let mut victim = Command::new("python3")
        .args(["-c", "import socket, sys, time\ns = socket.socket()\ns.bind(('127.0.0.1', int(sys.argv[1])))\ns.listen()\nprint('listening', flush=True)\ntime.sleep(60)"])
        .arg(killed.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut said = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(victim.stdout.take().unwrap()), &mut said).unwrap();
    assert_eq!(said.trim(), "listening");
    victim.kill().unwrap();
    victim.wait().unwrap();
    let resets = TcpListener::bind("127.0.0.1:0").unwrap();
    let resets_port = resets.local_addr().unwrap().port();
    thread::spawn(move || {
        while let Ok((s, _)) = resets.accept() {
            linger_zero(&s).expect("SO_LINGER");
        }
    });
    let mut cold_server = None;
    // Listens for one second in every two: a crash loop.
    let flapping = closed_port();
    let mut flap_server: Option<TcpListener> = None;
    while start.elapsed() < duration {
        let _ = TcpStream::connect(("127.0.0.1", persistent));
        let _ = TcpStream::connect(("127.0.0.1", cold));
        let _ = TcpStream::connect(("127.0.0.1", flapping));
        let _ = TcpStream::connect(("127.0.0.1", killed));
        let up = start.elapsed().as_secs() % 2 == 1;
        if up != flap_server.is_some() {
            flap_server = up.then(|| TcpListener::bind(("127.0.0.1", flapping)).unwrap());
        }
        if cold_server.is_none() && start.elapsed() > Duration::from_secs(3) {
            cold_server = Some(TcpListener::bind(("127.0.0.1", cold)).unwrap());
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", resets_port)) {
            let _ = s.write(b"x");
        }
        thread::sleep(Duration::from_millis(200));
    }
    quitter.join().unwrap();
}

#[test]
fn prometheus_scrapes_and_every_dashboard_and_rule_query_returns_data() {
    if !privileged("prometheus_scrapes_and_every_dashboard_and_rule_query_returns_data") {
        return;
    }
    let stats = Path::new("/proc/sys/kernel/bpf_stats_enabled");
    let before = std::fs::read_to_string(stats).unwrap_or_default();
    std::fs::write(stats, "1").unwrap();
    let d = Daemon::start(
        BIN,
        &[
            "--persistent-after",
            "2s",
            "--cold-start-max",
            "30s",
            "--gave-up-after",
            "2s",
        ],
    );
    let prom = Prometheus::start(d.addr);
    produce_signals(Duration::from_secs(12));
    // A few more scrapes and rule evaluations after the last signal.
    thread::sleep(Duration::from_secs(4));

    // The exposition itself passes Prometheus's own linter.
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = d.metrics();
    check.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    let complaints = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "promtool check metrics:\n{complaints}"
    );

    // The agent pod's target labels stay off the workloads' series (which carry their own
    // namespace and pod, empty outside Kubernetes) and label only the agent's own.
    // (Over the last 30 s: a scrape a loaded machine timed out leaves no gap here.)
    let agent = "{namespace=\"refusal-agent\",pod=\"refusal-agent-x7k2p\"}";
    let seen = |series: &str| prom.query(&format!("last_over_time({series}[30s])"));
    assert_eq!(seen(&format!("refusal_agent_build_info{agent}")), Ok(1));
    assert_eq!(seen(&format!("refusal_connect_failures_total{agent}")), Ok(0));
    assert!(seen("refusal_connect_failures_total{namespace=\"\",pod=\"\"}").is_ok_and(|n| n > 0));

    // Both writers in one exposition: every family of the table, each once, with its labels.
    let written = families::check(&metrics).unwrap_or_else(|e| panic!("{e}\n{metrics}"));
    let all: BTreeSet<&str> = families::ALL.iter().map(|f| f.name).collect();
    assert_eq!(written, all, "families written against the table");
    // The registry's process metrics and scrape histogram, as Prometheus stored them: one
    // series each, for the agent's own target labels, with plausible values.
    let labels = agent.trim_matches(['{', '}']);
    for (name, matchers, cmp) in [
        ("process_resident_memory_bytes", "", "> 1e6"),
        ("process_virtual_memory_bytes", "", "> 1e6"),
        ("process_open_fds", "", "> 3"),
        ("process_max_fds", "", "> 3"),
        ("process_threads", "", "> 1"),
        ("process_start_time_seconds", "", "> 1.7e9"),
        ("process_cpu_seconds_total", "", ">= 0"),
        // Scraped every second for some 16 s.
        ("refusal_agent_scrape_duration_seconds_count", "", "> 5"),
        ("refusal_agent_scrape_duration_seconds_bucket", "le=\"+Inf\",", "> 5"),
    ] {
        let q = format!("last_over_time({name}{{{matchers}{labels}}}[30s]) {cmp}");
        assert_eq!(prom.query(&q), Ok(1), "{q}");
    }
    let p50 = "histogram_quantile(0.5, rate(refusal_agent_scrape_duration_seconds_bucket[30s])) < 1";
    assert_eq!(prom.query(p50), Ok(1), "{p50}");

    let mut exprs = dashboard_exprs();
    let rules = workspace_root().join("dashboards/rules");
    exprs.extend(rule_exprs(&rules.join("refusal-recording.yml")));
    exprs.extend(rule_exprs(&rules.join("refusal-alerts.yml")));
    assert!(exprs.len() > 30, "found only {} expressions", exprs.len());
    let mut failures = Vec::new();
    for (place, expr) in &exprs {
        let q = substitute(expr);
        match prom.query(&q) {
            Err(e) => failures.push(format!("{place}: does not parse: {e}\n    {q}")),
            Ok(0) => match without_threshold(&q).map(|lhs| (prom.query(&lhs), lhs)) {
                Some((Ok(n), _)) if n > 0 => {}
                Some((r, lhs)) => failures.push(format!("{place}: no data ({r:?})\n    {lhs}")),
                None => failures.push(format!("{place}: no data\n    {q}")),
            },
            Ok(_) => {}
        }
    }
    let _ = std::fs::write(stats, before.trim());
    assert!(
        failures.is_empty(),
        "{} of {} expressions failed:\n{}",
        failures.len(),
        exprs.len(),
        failures.join("\n")
    );
}
