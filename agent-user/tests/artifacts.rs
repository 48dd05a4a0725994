//! The monitoring and deployment artifacts: `dashboards/` (Grafana JSON, Prometheus rules and their
//! unit tests) and `deploy/` (systemd unit, Kubernetes manifests, example config).
//!
//! Structure only, without a running daemon: the dashboards parse, panel ids are unique, every
//! panel has a query, every panel, query and variable uses the `${datasource}` variable, time and
//! rate panels have units; the dashboards and rules name only the metrics the daemon exports (and `up`, and
//! the recording rules); every alert has its annotations, a runbook section and promtool unit
//! tests that fire and that do not; the deploy files agree with each other. Then, when `promtool`
//! is on PATH, `promtool check rules` and `promtool test rules` (missing promtool fails under
//! CI=true and is skipped loudly otherwise).
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::PathBuf,
    process::Command,
};

use agent_core::serve::{exposition::Kind, families};
use serde::Deserialize as _;
use serde_json::{Value, json};
use testkit::{ci, which, workspace_root as root};

/// The exported series and their labels, from the daemon's table of metric families (a
/// histogram as its three series), and Prometheus's own `up` (for RefusalAgentDown).
fn metrics() -> Vec<(String, Vec<&'static str>)> {
    let mut out = vec![("up".to_string(), vec![])];
    for f in families::ALL {
        let labels = f.labels.to_vec();
        if f.kind == Kind::Histogram {
            out.push((format!("{}_bucket", f.name), [labels.as_slice(), &["le"]].concat()));
            out.push((format!("{}_sum", f.name), labels.clone()));
            out.push((format!("{}_count", f.name), labels));
        } else {
            out.push((f.name.to_string(), labels));
        }
    }
    out
}

/// Labels every scraped series carries on top of its own.
const TARGET_LABELS: &[&str] = &["job", "instance"];

const DASHBOARDS: &[(&str, &str, &[&str])] = &[
    (
        "refusal-overview.json",
        "refusal-overview",
        &["datasource", "instance", "namespace", "pod", "workload"],
    ),
    (
        "refusal-target.json",
        "refusal-target",
        &[
            "datasource",
            "instance",
            "namespace",
            "pod",
            "workload",
            "dst_addr",
            "dst_port",
        ],
    ),
];

const RULE_FILES: &[&str] = &[
    "dashboards/rules/refusal-alerts.yml",
    "dashboards/rules/refusal-recording.yml",
];

/// The config keys DESIGN.md and the README document, which the example config must show.
const CONFIG_KEYS: &[&str] = &[
    "listen",
    "cold_start_max",
    "persistent_after",
    "min_attempts",
    "flap_episodes",
    "flap_window",
    "forget_after",
    "gave_up_after",
    "advice_window",
    "advice_min_cold_starts",
    "max_series",
    "log_format",
    "kernel_log",
    "attach",
    "connect_sync",
    "pin_dir",
    "keep_pins",
    "host_root",
];

const TIME_UNITS: &[&str] = &["s", "ms", "µs", "ns", "dtdurations", "dtdurationms", "percentunit"];
const RATE_UNITS: &[&str] = &["ops", "opm", "reqps", "rps", "wps", "cps", "cpm"];
/// Grafana's own variables that may appear in queries.
const BUILTIN_VARS: &[&str] = &[
    "__rate_interval",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
];

fn read(rel: &str) -> String {
    let p = root().join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// The documents of a YAML file (`---` between them), as JSON values.
fn yaml_docs(text: &str, file: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{file}: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// A YAML file of one document.
fn yaml_one(text: &str, file: &str) -> Value {
    let mut docs = yaml_docs(text, file);
    assert_eq!(docs.len(), 1, "{file}: expected one YAML document");
    docs.remove(0)
}

fn ds() -> Value {
    json!({"type": "prometheus", "uid": "${datasource}"})
}

fn design_labels(metric: &str) -> Option<BTreeSet<String>> {
    metrics()
        .into_iter()
        .find(|(m, _)| m == metric)
        .map(|(_, ls)| ls.iter().chain(TARGET_LABELS).map(|s| s.to_string()).collect())
}

// ------------------------------------------------------------------------------------------------
// Dashboards

struct Dashboard {
    file: &'static str,
    json: Value,
}

fn dashboards() -> Vec<Dashboard> {
    DASHBOARDS
        .iter()
        .map(|&(file, _, _)| {
            let text = read(&format!("dashboards/{file}"));
            let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("dashboards/{file}: {e}"));
            Dashboard { file, json }
        })
        .collect()
}

/// Every panel, rows and the panels nested in collapsed rows included.
fn all_panels(d: &Value) -> Vec<&Value> {
    fn walk<'a>(ps: &'a Value, out: &mut Vec<&'a Value>) {
        for p in ps.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
}

fn is_row(p: &Value) -> bool {
    p["type"] == "row"
}

fn exprs(p: &Value) -> Vec<&str> {
    p["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["expr"].as_str())
        .collect()
}

/// The PromQL of a template variable's query, `label_values(SELECTOR, label)` → `SELECTOR`.
fn variable_selector(v: &Value) -> Option<String> {
    let q = match &v["query"] {
        Value::String(s) => s.clone(),
        Value::Object(o) => o.get("query")?.as_str()?.to_string(),
        _ => return None,
    };
    let inner = q.trim().strip_prefix("label_values(")?.strip_suffix(')')?;
    let (sel, _label) = inner.rsplit_once(',')?;
    Some(sel.trim().to_string())
}

#[test]
fn dashboards_are_well_formed() {
    let mut problems = Vec::new();
    for (d, (file, uid, vars)) in dashboards().iter().zip(DASHBOARDS) {
        let j = &d.json;
        let mut bad = |m: String| problems.push(format!("dashboards/{file}: {m}"));
        if j["uid"] != *uid {
            bad(format!("uid is {}, want {uid:?}", j["uid"]));
        }
        if !j["id"].is_null() {
            bad("has an `id`: provisioned dashboards must not carry one".into());
        }
        if j["schemaVersion"].as_u64().is_none_or(|v| v < 36) {
            bad(format!("schemaVersion {} (want >= 36)", j["schemaVersion"]));
        }
        if j["title"].as_str().is_none_or(str::is_empty) {
            bad("no title".into());
        }

        // Template variables.
        let list = j["templating"]["list"].as_array().cloned().unwrap_or_default();
        let names: BTreeSet<&str> = list.iter().filter_map(|v| v["name"].as_str()).collect();
        for want in *vars {
            if !names.contains(want) {
                bad(format!("no template variable `{want}`"));
            }
        }
        for v in &list {
            let name = v["name"].as_str().unwrap_or("?");
            match v["type"].as_str() {
                Some("datasource") => {
                    if name != "datasource" || v["query"] != "prometheus" {
                        bad(format!(
                            "variable {name}: the data source variable must be `datasource`, query `prometheus`"
                        ));
                    }
                }
                Some("query") => {
                    if v["datasource"] != ds() {
                        bad(format!(
                            "variable {name}: datasource is {}, want {}",
                            v["datasource"],
                            ds()
                        ));
                    }
                    if variable_selector(v).is_none() {
                        bad(format!("variable {name}: query is not label_values(SELECTOR, LABEL)"));
                    }
                }
                other => bad(format!("variable {name}: unexpected type {other:?}")),
            }
        }
        let instance = list.iter().find(|v| v["name"] == "instance");
        if instance.and_then(variable_selector).as_deref() != Some("refusal_agent_build_info") {
            bad("variable instance must be label_values(refusal_agent_build_info, instance)".into());
        }

        // Panels.
        let panels = all_panels(j);
        if panels.iter().filter(|p| !is_row(p)).count() < 5 {
            bad("fewer than 5 panels".into());
        }
        let mut ids = BTreeSet::new();
        for p in &panels {
            let title = p["title"].as_str().unwrap_or("?");
            let mut bad = |m: String| problems.push(format!("dashboards/{file}: panel {title:?}: {m}"));
            match p["id"].as_u64() {
                Some(id) if !ids.insert(id) => bad(format!("duplicate panel id {id}")),
                Some(_) => {}
                None => bad("no numeric id".into()),
            }
            let g = &p["gridPos"];
            let (x, w, h) = (g["x"].as_u64(), g["w"].as_u64(), g["h"].as_u64());
            if !matches!((x, w, h), (Some(x), Some(w), Some(h)) if w > 0 && h > 0 && x + w <= 24)
                || g["y"].as_u64().is_none()
            {
                bad(format!("bad gridPos {g}"));
            }
            if is_row(p) {
                if !p["datasource"].is_null() && p["datasource"] != ds() {
                    bad(format!("row datasource is {}, want {}", p["datasource"], ds()));
                }
                if p["targets"].as_array().is_some_and(|t| !t.is_empty()) {
                    bad("a row with queries".into());
                }
                continue;
            }
            if title == "?" || title.is_empty() {
                bad("no title".into());
            }
            if p["datasource"] != ds() {
                bad(format!("datasource is {}, want {}", p["datasource"], ds()));
            }
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                bad("no queries".into());
            }
            let mut ref_ids = BTreeSet::new();
            for t in &targets {
                if t["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                    bad(format!("query {} has no expr", t["refId"]));
                }
                if t["datasource"] != ds() {
                    bad(format!(
                        "query {} datasource is {}, want {}",
                        t["refId"],
                        t["datasource"],
                        ds()
                    ));
                }
                if !t["refId"].as_str().is_some_and(|r| ref_ids.insert(r.to_string())) {
                    bad(format!("missing or duplicate refId {}", t["refId"]));
                }
            }

            // Variables used in queries must exist.
            for e in exprs(p) {
                for var in referenced_variables(e) {
                    if !names.contains(var.as_str()) && !BUILTIN_VARS.contains(&var.as_str()) {
                        bad(format!("query uses undefined variable ${var}"));
                    }
                }
            }

            // Units on time and rate panels.
            let all = exprs(p).join("\n");
            let unit = p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or("");
            let is_time =
                all.contains("histogram_quantile") || metric_names(&all).iter().any(|m| m.contains("_seconds"));
            let is_rate = ["rate(", "irate(", ":rate"].iter().any(|s| all.contains(s));
            let is_count = all.contains("increase(");
            if is_time && !TIME_UNITS.contains(&unit) {
                bad(format!(
                    "a time panel needs a time unit ({TIME_UNITS:?}) in fieldConfig.defaults.unit, has {unit:?}"
                ));
            } else if !is_time && is_rate && !RATE_UNITS.contains(&unit) {
                bad(format!(
                    "a rate panel needs a rate unit ({RATE_UNITS:?}) in fieldConfig.defaults.unit, has {unit:?}"
                ));
            } else if is_count && unit.is_empty() {
                bad("a panel counting increase() needs fieldConfig.defaults.unit".into());
            }
        }

        // Links to the drill-down point at its uid.
        let text = j.to_string();
        for (i, _) in text.match_indices("/d/") {
            let uid_end = text[i + 3..].find('/').map_or(text.len(), |n| i + 3 + n);
            let linked = &text[i + 3..uid_end];
            if !DASHBOARDS.iter().any(|(_, u, _)| *u == linked) {
                problems.push(format!("dashboards/{file}: link to unknown dashboard uid {linked:?}"));
            }
        }
    }
    assert!(problems.is_empty(), "dashboard problems:\n  {}", problems.join("\n  "));
}

/// `$name` and `${name}` / `${name:format}` references in a query.
fn referenced_variables(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            let mut j = i + 1;
            let braced = j < b.len() && b[j] == b'{';
            if braced {
                j += 1;
            }
            let start = j;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                j += 1;
            }
            if j > start {
                out.push(expr[start..j].to_string());
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

// ------------------------------------------------------------------------------------------------
// Metric names

const PROMQL_WORDS: &[&str] = &[
    // aggregation operators (followed by `by`/`without` or a parenthesis)
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    // keywords
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
    "start",
    "end",
];

/// Metric (and recording rule) names a PromQL expression reads: identifiers that are not
/// functions, keywords, label names in matchers, grouping lists, strings, numbers or durations.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Strings, then label matchers and ranges, out.
    let mut s = String::new();
    let mut quote = None;
    let mut escaped = false;
    for c in expr.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q != '`' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                    s.push_str("\"\"");
                }
            }
            None if matches!(c, '"' | '\'' | '`') => quote = Some(c),
            None => s.push(c),
        }
    }
    let mut t = String::new();
    let mut depth: Option<char> = None;
    for c in s.chars() {
        match (depth, c) {
            (None, '{') => depth = Some('}'),
            (None, '[') => depth = Some(']'),
            (Some(close), c) if c == close => depth = None,
            (Some(_), _) => {}
            (None, c) => t.push(c),
        }
    }
    let chars: Vec<char> = t.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if c == '$' {
            // A Grafana variable outside a matcher: skip its name.
            i += 1;
            while i < chars.len() && (ident(chars[i]) || chars[i] == '{' || chars[i] == '}') {
                i += 1;
            }
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if ident_start(c) {
            let start = i;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let lower = word.to_ascii_lowercase();
            if matches!(
                lower.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) && j < chars.len()
                && chars[j] == '('
            {
                // A label list: skip to its closing parenthesis.
                while j < chars.len() && chars[j] != ')' {
                    j += 1;
                }
                i = j + 1;
            } else if j < chars.len() && chars[j] == '(' {
                // A function call or an aggregation.
            } else if !PROMQL_WORDS.contains(&lower.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_name_extraction() {
    let n = metric_names(
        r#"sum by (instance, le) (rate(refusal_x_total{a="b{c}", d=~"$d"}[$__rate_interval])) * on (instance) group_left (x) max without (y) (up == bool 1) / 1e-9 or vector(0) > 0.5 and rec:ord:rate5m offset 5m"#,
    );
    assert_eq!(
        n,
        ["refusal_x_total", "up", "rec:ord:rate5m"]
            .into_iter()
            .map(String::from)
            .collect::<BTreeSet<_>>()
    );
    assert_eq!(
        metric_names(r#"histogram_quantile(0.9, sum by (le) (h_bucket))"#).len(),
        1
    );
    assert_eq!(
        referenced_variables(r#"x{a=~"$instance", b="${dst_addr}"}[$__range]"#),
        ["instance", "dst_addr", "__range"]
    );
}

struct Rule {
    file: String,
    record: Option<String>,
    alert: Option<String>,
    expr: String,
    node: Value,
}

fn rules() -> Vec<Rule> {
    let mut out = Vec::new();
    for file in RULE_FILES {
        let doc = yaml_one(&read(file), file);
        let groups = doc["groups"].as_array().unwrap_or_else(|| panic!("{file}: no groups"));
        for g in groups {
            for r in g["rules"]
                .as_array()
                .unwrap_or_else(|| panic!("{file}: group {} has no rules", g["name"]))
            {
                out.push(Rule {
                    file: file.to_string(),
                    record: r["record"].as_str().map(String::from),
                    alert: r["alert"].as_str().map(String::from),
                    expr: r["expr"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{file}: a rule without expr: {r}"))
                        .to_string(),
                    node: r.clone(),
                });
            }
        }
    }
    out
}

fn recorded() -> BTreeSet<String> {
    rules().into_iter().filter_map(|r| r.record).collect()
}

#[test]
fn dashboards_and_rules_name_only_design_metrics() {
    let recorded = recorded();
    assert!(!recorded.is_empty(), "no recording rules in refusal-recording.yml");
    let check = |where_: String, expr: &str| -> Vec<String> {
        let mut out = Vec::new();
        for m in metric_names(expr) {
            let known = if m.contains(':') {
                recorded.contains(&m)
            } else {
                design_labels(&m).is_some()
            };
            if !known {
                out.push(format!(
                    "{where_}: `{m}` is neither a exported metric nor a recording rule\n      in: {expr}"
                ));
            }
        }
        if metric_names(expr).is_empty() && !expr.contains("vector(") {
            out.push(format!("{where_}: reads no metric: {expr}"));
        }
        out
    };
    let mut problems = Vec::new();
    for d in dashboards() {
        for p in all_panels(&d.json) {
            for e in exprs(p) {
                problems.extend(check(
                    format!("dashboards/{}: panel {:?}", d.file, p["title"].as_str().unwrap_or("?")),
                    e,
                ));
            }
        }
        for v in d.json["templating"]["list"].as_array().into_iter().flatten() {
            if let Some(sel) = variable_selector(v) {
                problems.extend(check(format!("dashboards/{}: variable {}", d.file, v["name"]), &sel));
            }
        }
    }
    for r in rules() {
        let name = r.record.as_deref().or(r.alert.as_deref()).unwrap_or("?").to_string();
        problems.extend(check(format!("{}: {name}", r.file), &r.expr));
        if let Some(rec) = &r.record
            && metric_names(&r.expr).iter().any(|m| m.contains(':'))
        {
            problems.push(format!(
                "{}: {rec} reads another recording rule (evaluation order)",
                r.file
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "unknown metric names:\n  {}",
        problems.join("\n  ")
    );
}

// ------------------------------------------------------------------------------------------------
// Alerts, runbooks and rule unit tests

fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn rule_test_files() -> Vec<(String, Value)> {
    let dir = root().join("dashboards/rules/tests");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no rule unit tests in dashboards/rules/tests/");
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(root()).expect("under root").display().to_string();
            let doc = yaml_one(&fs::read_to_string(&p).expect("rule test file"), &rel);
            (rel, doc)
        })
        .collect()
}

#[test]
fn alerts_have_annotations_runbooks_and_tests() {
    let all = rules();
    let alerts: Vec<&Rule> = all.iter().filter(|r| r.alert.is_some()).collect();
    let names: BTreeSet<&str> = alerts.iter().filter_map(|r| r.alert.as_deref()).collect();
    for want in [
        "RefusalTargetPersistent",
        "RefusalTargetFlapping",
        "RefusalInboundSpike",
        "RefusalAgentProbeNotAttached",
        "RefusalAgentEventsDropped",
        "RefusalAgentSeriesOverflow",
        "RefusalAgentDown",
    ] {
        assert!(names.contains(want), "alert {want} is missing from refusal-alerts.yml");
    }
    let mut problems = Vec::new();
    for r in &alerts {
        let name = r.alert.as_deref().unwrap_or("?");
        let ann = &r.node["annotations"];
        for key in ["summary", "description", "runbook", "runbook_url"] {
            if ann[key].as_str().is_none_or(|s| s.trim().is_empty()) {
                problems.push(format!("{name}: no `{key}` annotation"));
            }
        }
        if r.node["labels"]["severity"].as_str().is_none() {
            problems.push(format!("{name}: no severity label"));
        }
        if let Some(url) = ann["runbook_url"].as_str() {
            let (path, anchor) = url.split_once('#').unwrap_or((url, ""));
            match fs::read_to_string(root().join(path)) {
                Err(e) => problems.push(format!("{name}: runbook_url {url}: {e}")),
                Ok(doc) => {
                    let found = doc
                        .lines()
                        .filter_map(|l| l.strip_prefix("## "))
                        .any(|h| github_anchor(h) == anchor && h.trim() == name);
                    if !found {
                        problems.push(format!("{name}: {path} has no section `## {name}` for #{anchor}"));
                    }
                }
            }
        }
    }

    // Every alert fires in some test and stays quiet in another; every recording rule is tested.
    let mut firing: BTreeSet<String> = BTreeSet::new();
    let mut quiet: BTreeSet<String> = BTreeSet::new();
    let mut tested_exprs: BTreeSet<String> = BTreeSet::new();
    for (file, doc) in rule_test_files() {
        for rf in doc["rule_files"].as_array().into_iter().flatten() {
            let p = root()
                .join(&file)
                .parent()
                .expect("dir")
                .join(rf.as_str().unwrap_or(""));
            if !p.is_file() {
                problems.push(format!("{file}: rule file {rf} not found"));
            }
        }
        for t in doc["tests"].as_array().into_iter().flatten() {
            for a in t["alert_rule_test"].as_array().into_iter().flatten() {
                let name = a["alertname"].as_str().unwrap_or("?").to_string();
                if !names.contains(name.as_str()) {
                    problems.push(format!("{file}: tests unknown alert {name}"));
                }
                match &a["exp_alerts"] {
                    Value::Array(v) if v.is_empty() => quiet.insert(name),
                    Value::Null => quiet.insert(name),
                    Value::Array(_) => firing.insert(name),
                    other => panic!("{file}: exp_alerts of {name} is {other}"),
                };
            }
            for e in t["promql_expr_test"].as_array().into_iter().flatten() {
                tested_exprs.insert(e["expr"].as_str().unwrap_or("").trim().to_string());
            }
        }
    }
    for name in &names {
        if !firing.contains(*name) {
            problems.push(format!("{name}: no promtool test where it fires"));
        }
        if !quiet.contains(*name) {
            problems.push(format!("{name}: no promtool test where it does not fire"));
        }
    }
    for rec in all.iter().filter_map(|r| r.record.as_deref()) {
        if !tested_exprs.contains(rec) {
            problems.push(format!("recording rule {rec}: no promql_expr_test with `expr: {rec}`"));
        }
    }
    assert!(problems.is_empty(), "alert problems:\n  {}", problems.join("\n  "));
}

/// The labels every family with `workload` has, empty (so absent in Prometheus) outside
/// Kubernetes.
const K8S_LABELS: [&str; 3] = ["namespace", "pod", "container"];

/// `name{label="value",...}` of a promtool input series.
fn parse_series(s: &str) -> (String, BTreeMap<String, String>) {
    let s = s.trim();
    let (name, rest) = s.split_once('{').unwrap_or((s, "}"));
    let body = rest
        .strip_suffix('}')
        .unwrap_or_else(|| panic!("series {s:?}: no closing brace"));
    let mut labels = BTreeMap::new();
    let b: Vec<char> = body.chars().collect();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == ',' || b[i].is_whitespace()) {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && b[i] != '=' {
            i += 1;
        }
        let key: String = b[start..i].iter().collect::<String>().trim().to_string();
        i += 1;
        assert!(i < b.len() && b[i] == '"', "series {s:?}: label {key} is not `=\"…\"`");
        i += 1;
        let mut val = String::new();
        while i < b.len() && b[i] != '"' {
            if b[i] == '\\' && i + 1 < b.len() {
                i += 1;
            }
            val.push(b[i]);
            i += 1;
        }
        i += 1;
        labels.insert(key, val);
    }
    (name.trim().to_string(), labels)
}

#[test]
fn rule_tests_use_design_label_sets() {
    let mut problems = Vec::new();
    for (file, doc) in rule_test_files() {
        for t in doc["tests"].as_array().into_iter().flatten() {
            for s in t["input_series"].as_array().into_iter().flatten() {
                let series = s["series"].as_str().unwrap_or("");
                let (name, labels) = parse_series(series);
                let mut have: BTreeSet<String> = labels.keys().cloned().collect();
                // Prometheus drops empty labels: outside Kubernetes a workload has no
                // namespace, pod or container; a pod has a namespace.
                assert_eq!(have.contains("pod"), have.contains("namespace"), "{file}: {series}");
                if have.contains("container") {
                    assert!(have.contains("pod"), "{file}: {series}: a container without its pod");
                }
                if have.contains("workload") {
                    have.extend(K8S_LABELS.map(String::from));
                }
                match design_labels(&name) {
                    None => problems.push(format!("{file}: {name} is not a exported metric")),
                    Some(want) if want != have => problems.push(format!(
                        "{file}: {series}\n      labels {have:?}, exported + scrape: {want:?}"
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "input series problems:\n  {}",
        problems.join("\n  ")
    );
}

/// The README lists every panel and alert by its exact title.
#[test]
fn readme_lists_every_panel_and_alert() {
    let readme = read("README.md");
    let mut missing = Vec::new();
    for d in dashboards() {
        for p in all_panels(&d.json).into_iter().filter(|p| !is_row(p)) {
            let title = p["title"].as_str().unwrap_or("?");
            if !readme.contains(title) {
                missing.push(format!("panel {title:?} ({})", d.file));
            }
        }
    }
    for name in rules().into_iter().filter_map(|r| r.alert) {
        if !readme.contains(&name) {
            missing.push(format!("alert {name}"));
        }
    }
    assert!(
        missing.is_empty(),
        "README.md does not mention:\n  {}",
        missing.join("\n  ")
    );
}

// ------------------------------------------------------------------------------------------------
// Deploy

/// The PrometheusRule for the Operator holds exactly the rule files' groups.
#[test]
fn prometheus_rule_matches_rule_files() {
    let pr = read("deploy/kubernetes/prometheusrule.yaml");
    let (_, body) = pr
        .split_once("\n  groups:\n")
        .expect("prometheusrule.yaml: no `  groups:` line");
    let mut want = String::new();
    for f in RULE_FILES {
        let text = read(f);
        let (_, groups) = text
            .split_once("\ngroups:\n")
            .unwrap_or_else(|| panic!("{f}: no `groups:` line"));
        for line in groups.lines() {
            if line.trim().is_empty() {
                want.push('\n');
            } else {
                want.push_str("  ");
                want.push_str(line);
                want.push('\n');
            }
        }
    }
    assert!(
        body == want,
        "deploy/kubernetes/prometheusrule.yaml is out of date with dashboards/rules/*.yml: regenerate it \
         with the command at its top"
    );
    let doc = yaml_docs(&pr, "deploy/kubernetes/prometheusrule.yaml");
    assert_eq!(doc.len(), 1);
    assert_eq!(doc[0]["kind"], "PrometheusRule");
}

fn toml_keys(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("not `key = value`: {l}"));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

#[test]
fn deploy_files_agree() {
    // Example config: exactly the documented keys, durations with units.
    let conf = toml_keys(&read("deploy/refusal-agent.toml"));
    let keys: Vec<&str> = conf.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, CONFIG_KEYS, "deploy/refusal-agent.toml keys");
    for (k, v) in &conf {
        if k.ends_with("_max") || k.ends_with("_after") || k.ends_with("_window") {
            let d = v.trim_matches('"');
            assert!(
                v.starts_with('"') && d.ends_with(['s', 'm', 'h']) && d.starts_with(|c: char| c.is_ascii_digit()),
                "{k} = {v}: a quoted duration like \"180s\""
            );
        }
    }

    // systemd: the bounding and ambient sets are the same, and name the capabilities the daemon
    // checks for.
    let unit = read("deploy/refusal-agent.service");
    let directive = |name: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(|v| v.trim().to_string())
            .collect()
    };
    let caps = |v: &str| -> BTreeSet<String> {
        v.split_whitespace()
            .map(|c| c.trim_start_matches("CAP_").to_string())
            .collect()
    };
    let bounding = directive("CapabilityBoundingSet");
    let ambient = directive("AmbientCapabilities");
    assert_eq!(bounding.len(), 1, "one active CapabilityBoundingSet= line");
    assert_eq!(
        bounding, ambient,
        "CapabilityBoundingSet and AmbientCapabilities differ"
    );
    let unit_caps = caps(&bounding[0]);
    for c in ["BPF", "PERFMON"] {
        assert!(unit_caps.contains(c), "the unit lacks CAP_{c}");
    }
    assert!(
        directive("ExecStart").iter().any(|e| e.contains(" run")),
        "ExecStart does not `run`"
    );
    for d in [
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "ProtectKernelModules",
        "RestrictAddressFamilies",
        "LockPersonality",
        "MemoryDenyWriteExecute",
        "SystemCallArchitectures",
        "User",
    ] {
        assert_eq!(directive(d).len(), 1, "deploy/refusal-agent.service: {d}= set once");
    }

    // Kubernetes: same capabilities, host namespaces, probes, mounts, annotations.
    let docs = yaml_docs(
        &read("deploy/kubernetes/daemonset.yaml"),
        "deploy/kubernetes/daemonset.yaml",
    );
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for k in ["Namespace", "ServiceAccount", "DaemonSet"] {
        assert!(kinds.contains(&k), "daemonset.yaml has no {k}");
    }
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").expect("DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostPID"], true);
    assert_eq!(spec["hostNetwork"], true);
    assert!(
        spec["tolerations"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["operator"] == "Exists" && t["key"].is_null())),
        "the DaemonSet must tolerate every taint (operator: Exists)"
    );
    let ann = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "9977");
    let c = &spec["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    let k8s_caps: BTreeSet<String> = sc["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    assert_eq!(
        k8s_caps, unit_caps,
        "the DaemonSet and the systemd unit grant different capabilities"
    );
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    let port = c["ports"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["containerPort"] == 9977))
        .expect("containerPort 9977");
    let port_name = port["name"].as_str().expect("named port");
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert!(
            c[probe]["httpGet"]["port"] == port_name || c[probe]["httpGet"]["port"] == 9977,
            "{probe} port"
        );
    }
    for r in ["requests", "limits"] {
        assert!(
            c["resources"][r]["memory"].is_string() && c["resources"][r]["cpu"].is_string(),
            "resources.{r}"
        );
    }
    let mounts: BTreeMap<&str, &Value> = c["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .filter_map(|m| Some((m["mountPath"].as_str()?, m)))
        .collect();
    for path in ["/sys/kernel/btf", "/sys/kernel/tracing", "/sys/fs/cgroup"] {
        let m = mounts.get(path).unwrap_or_else(|| panic!("no volumeMount at {path}"));
        assert_eq!(m["readOnly"], true, "{path} must be mounted read-only");
    }
    // The pins that carry counts across pod restarts need the host's bpffs, writable.
    let bpffs = mounts.get("/sys/fs/bpf").expect("no volumeMount at /sys/fs/bpf");
    assert_ne!(bpffs["readOnly"], true, "/sys/fs/bpf must be writable for pin_dir");
    // Workload names: every directory the runtimes keep them in, read-only under the host root.
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.windows(2).any(|w| w == ["--host-root", "/host"]), "args: {args:?}");
    use agent_core::collect::runtimes::paths as p;
    let dirs = [
        p::KUBELET_PODS,
        p::KUBELET_CONTAINERS,
        p::CONTAINERD_BUNDLES,
        p::DOCKER_CONTAINERS,
    ]
    .into_iter()
    .chain(p::CRIO_BUNDLES)
    .chain(p::PODMAN_LISTS.map(|f| f.rsplit_once('/').unwrap().0));
    for dir in dirs {
        let path = format!("/host/{dir}");
        let m = mounts
            .get(path.as_str())
            .unwrap_or_else(|| panic!("no volumeMount at {path}"));
        assert_eq!(m["readOnly"], true, "{path} must be mounted read-only");
    }
    // The ConfigMap's config uses only documented keys.
    if let Some(cm) = docs.iter().find(|d| d["kind"] == "ConfigMap") {
        for (k, _) in toml_keys(
            cm["data"]["refusal-agent.toml"]
                .as_str()
                .expect("refusal-agent.toml in the ConfigMap"),
        ) {
            assert!(CONFIG_KEYS.contains(&k.as_str()), "ConfigMap: unknown config key {k}");
        }
    }

    let sm = yaml_docs(
        &read("deploy/kubernetes/servicemonitor.yaml"),
        "deploy/kubernetes/servicemonitor.yaml",
    );
    let svc = sm
        .iter()
        .find(|d| d["kind"] == "Service")
        .expect("a Service in servicemonitor.yaml");
    assert_eq!(svc["spec"]["clusterIP"], "None", "the Service must be headless");
    // The job label is the Service's name; RefusalAgentDown selects job="refusal-agent".
    assert_eq!(svc["metadata"]["name"], "refusal-agent");
    let mon = sm
        .iter()
        .find(|d| d["kind"] == "ServiceMonitor")
        .expect("a ServiceMonitor");
    assert_eq!(mon["spec"]["endpoints"][0]["port"], svc["spec"]["ports"][0]["name"]);
    // The workload's namespace and pod labels win over the agent pod's target labels.
    assert_eq!(mon["spec"]["endpoints"][0]["honorLabels"], true);

    // Grafana provisioning.
    let prov = yaml_one(&read("dashboards/provisioning/dashboards.yaml"), "dashboards.yaml");
    assert_eq!(prov["providers"][0]["type"], "file");
    assert!(prov["providers"][0]["options"]["path"].is_string());
    let dsy = yaml_one(&read("dashboards/provisioning/datasource.yaml"), "datasource.yaml");
    assert_eq!(dsy["datasources"][0]["type"], "prometheus");

    // The scrape config keeps the job name the alerts select.
    let scrape = yaml_one(&read("deploy/prometheus-scrape.yml"), "deploy/prometheus-scrape.yml");
    assert_eq!(scrape["scrape_configs"][0]["job_name"], "refusal-agent");
    assert_eq!(scrape["scrape_configs"][0]["honor_labels"], true);
}

// ------------------------------------------------------------------------------------------------
// promtool

#[test]
fn promtool_checks_and_tests_the_rules() {
    let Some(promtool) = which("promtool") else {
        assert!(
            !ci(),
            "promtool is not on PATH (Debian package `prometheus`; `cargo xtask test` installs it)"
        );
        eprintln!(
            "\n{0}\nSKIP promtool_checks_and_tests_the_rules: promtool is not on PATH\n     (apt-get install prometheus); the rules were NOT checked.\n{0}\n",
            "*".repeat(72)
        );
        return;
    };
    let run = |args: &[&str]| {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(root())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", promtool.display()));
        assert!(
            out.status.success(),
            "promtool {} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let mut check = vec!["check", "rules"];
    check.extend(RULE_FILES);
    run(&check);
    for (file, _) in rule_test_files() {
        run(&["test", "rules", file.as_str()]);
    }
}
