//! `render-ab SERIES ROUNDS`: the render stage of a scrape alone, on SERIES connect-failure
//! series and as many inbound ones (the daemon's largest families at `max_series`), written two
//! ways in interleaved rounds: the direct writer the daemon uses (`agent_core::serve::counts`,
//! label text cached per series in the series caps), and the `prometheus` crate's model built
//! for the same snapshot each scrape (a `MetricFamily` per family, a `Metric` with its
//! `LabelPair`s per series, summed by label set, then its `TextEncoder`). Both are checked to
//! write the same samples. Prints `round DIRECT_NS MODEL_NS` per round, then
//! `bytes DIRECT MODEL`.
use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use agent_core::{
    collect::{
        snapshot::{Inbound, Outcome, Snapshot},
        workload::{Names, Workload},
    },
    serve::{counts, exposition::Text, families, series::SeriesCap},
};
use prometheus::{
    TextEncoder,
    proto::{Counter, LabelPair, Metric, MetricFamily, MetricType},
};

/// Pods the failures come from, each with its own workload labels.
const PODS: usize = 20;

fn snapshot(series: usize) -> Snapshot {
    let pods: Vec<Workload> = (0..PODS)
        .map(|i| {
            Workload::new(Names {
                workload: format!("pod:shop/web-7d4f9c-{i:03}"),
                namespace: "shop".into(),
                pod: format!("web-7d4f9c-{i:03}"),
                container: "app".into(),
            })
        })
        .collect();
    let addr = |i: usize| IpAddr::V4(Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8 + 1));
    let outcomes = (0..series)
        .map(|i| Outcome {
            cgroup_id: (i % PODS) as u64,
            workload: pods[i % PODS].clone(),
            comm: "app".into(),
            proto: "tcp",
            dst_addr: addr(i / 16),
            dst_port: 8000 + (i % 16) as u16,
            errno: Some("ECONNREFUSED".into()),
            count: 1 + i as u64 % 97,
            last_ns: 0,
        })
        .collect();
    let inbound = (0..series)
        .map(|i| Inbound {
            netns: 0,
            local_addr: addr(i % 8),
            local_port: 20_000 + (i / 8) as u16,
            count: 1 + i as u64 % 13,
        })
        .collect();
    Snapshot {
        outcomes,
        inbound,
        ..Default::default()
    }
}

fn pair(name: &str, value: String) -> LabelPair {
    let mut p = LabelPair::default();
    p.set_name(name.into());
    p.set_value(value);
    p
}

fn family(f: &families::Family, rows: impl IntoIterator<Item = (Vec<LabelPair>, u64)>) -> MetricFamily {
    let mut mf = MetricFamily::default();
    mf.set_name(f.name.into());
    mf.set_help(f.help.into());
    mf.set_field_type(MetricType::COUNTER);
    mf.set_metric(
        rows.into_iter()
            .map(|(labels, n)| {
                let mut c = Counter::default();
                c.set_value(n as f64);
                let mut m = Metric::from_label(labels);
                m.set_counter(c);
                m
            })
            .collect(),
    );
    mf
}

/// The crate's model of the same two families, built from `snap`, encoded into `out`. At
/// `max_series` nothing folds, so it does no cap bookkeeping (which the direct writer does).
fn model(snap: &Snapshot, out: &mut String) {
    let mut failures: HashMap<(&Workload, &str, &str, IpAddr, u16, &str), u64> = HashMap::new();
    for (o, errno) in snap.failures() {
        *failures
            .entry((&o.workload, &o.comm, o.proto, o.dst_addr, o.dst_port, errno))
            .or_default() += o.count;
    }
    let mut inbound: HashMap<(IpAddr, u16), u64> = HashMap::new();
    for i in &snap.inbound {
        *inbound.entry((i.local_addr, i.local_port)).or_default() += i.count;
    }
    let families = [
        family(
            &families::CONNECT_FAILURES,
            failures.into_iter().map(|((w, comm, proto, addr, port, errno), n)| {
                let labels = vec![
                    pair("workload", w.workload.clone()),
                    pair("namespace", w.namespace.clone()),
                    pair("pod", w.pod.clone()),
                    pair("container", w.container.clone()),
                    pair("comm", comm.into()),
                    pair("proto", proto.into()),
                    pair("dst_addr", addr.to_string()),
                    pair("dst_port", port.to_string()),
                    pair("errno", errno.into()),
                ];
                (labels, n)
            }),
        ),
        family(
            &families::INBOUND_REFUSED,
            inbound.into_iter().map(|((addr, port), n)| {
                let labels = vec![
                    pair("local_addr", addr.to_string()),
                    pair("local_port", port.to_string()),
                ];
                (labels, n)
            }),
        ),
    ];
    out.clear();
    if let Err(e) = TextEncoder::new().encode_utf8(&families, out) {
        eprintln!("render-ab: encoding the model: {e}");
        std::process::exit(1);
    }
}

fn direct(snap: &Snapshot, series: &mut SeriesCap, buffer: String) -> String {
    let mut out = Text::new(buffer);
    counts::render(snap, series, &mut out);
    out.finish()
}

/// The samples of an exposition, order aside.
fn samples(text: &str) -> BTreeSet<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let [series, rounds] = args[..] else {
        eprintln!("usage: render-ab SERIES ROUNDS");
        std::process::exit(2);
    };
    let snap = snapshot(series);
    let mut cap = SeriesCap::new(series);
    // The daemon's steady state: label sets admitted and their text written by earlier scrapes,
    // buffers at size.
    let mut text = direct(&snap, &mut cap, String::new());
    let mut model_text = String::new();
    model(&snap, &mut model_text);
    if samples(&text) != samples(&model_text) {
        eprintln!("render-ab: the two writers wrote different samples");
        std::process::exit(1);
    }
    for round in 0..rounds {
        let mut times = [0u128; 2];
        for which in [round % 2, 1 - round % 2] {
            let t = Instant::now();
            if which == 0 {
                let mut buffer = std::mem::take(&mut text);
                buffer.clear();
                text = direct(&snap, &mut cap, buffer);
            } else {
                model(&snap, &mut model_text);
            }
            times[which] = t.elapsed().as_nanos();
        }
        println!("round {} {}", times[0], times[1]);
    }
    println!("bytes {} {}", text.len(), model_text.len());
}
