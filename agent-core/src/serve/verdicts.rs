//! The families derived by analysis: target states, ended episodes, inbound diagnoses,
//! cold-start durations and listeners lost.
use crate::{
    analyse::{
        analysis::{Analysis, TargetId},
        verdict::State,
    },
    serve::{
        exposition::{self, Sample, Text},
        families as f,
        series::{LostSeries, SeriesCap, Tally, TargetSeries},
    },
};

fn target_series(id: &TargetId) -> TargetSeries {
    TargetSeries {
        workload: id.workload.clone(),
        comm: id.comm.clone(),
        dst: Some((id.dst_addr, id.dst_port)),
    }
}

fn episode_labels<'a>((target, outcome): &(TargetSeries, &str), l: Sample<'a>) -> Sample<'a> {
    target.labels(l).label("outcome", outcome)
}

/// Writes the verdict and listener families of `analysis`, folding label sets past the cap.
pub fn render(analysis: &Analysis, series: &mut SeriesCap, out: &mut Text) {
    // One series per target, for the state it is in: three per target would triple a port
    // scan's scrape for zeros that absent series express as well.
    let table = &mut series.target_state;
    let mut states = Vec::new();
    for (id, t) in analysis.targets().filter(|(_, t)| t.state != State::Ok) {
        let row = table.row(target_series(id), TargetSeries::folded, TargetSeries::labels);
        states.push((row, t.state.name()));
    }
    // A gauge: targets folded together are one series at 1, not a sum.
    states.sort_unstable();
    states.dedup();
    f::TARGET_STATE.open(out);
    for (row, state) in states {
        (out.sample(f::TARGET_STATE.name).cached(table.labels(row)))
            .label("state", state)
            .count(1);
    }

    let table = &mut series.episodes;
    let mut tally = Tally::default();
    let fold = |(t, outcome): &(TargetSeries, &'static str)| (t.folded(), *outcome);
    for ((id, outcome), n) in analysis.episodes() {
        tally.add(table.row((target_series(id), *outcome), fold, episode_labels), *n);
    }
    f::EPISODES.open(out);
    tally.write(out, f::EPISODES.name, table);

    f::INBOUND_DIAGNOSIS.open(out);
    // Namespaces refusing the same address with the same diagnosis are one series.
    for (local, d) in analysis.diagnoses() {
        out.sample(f::INBOUND_DIAGNOSIS.name)
            .plain("local_addr", local.ip())
            .plain("local_port", local.port())
            .label("diagnosis", d.name())
            .count(1);
    }

    f::COLD_START_DURATION.open(out);
    for ((workload, port), h) in analysis.cold_starts() {
        exposition::histogram(out, f::COLD_START_DURATION.name, h, |s| {
            s.workload(workload).plain("dst_port", *port)
        });
    }

    let table = &mut series.listener_lost;
    let mut tally = Tally::default();
    for (k, n) in analysis.listeners().losses() {
        let s = LostSeries {
            workload: k.workload.clone(),
            comm: k.comm.clone(),
            port: Some(k.port),
            cause: k.cause,
            after_reset: k.after_reset,
        };
        tally.add(table.row(s, LostSeries::folded, LostSeries::labels), *n);
    }
    f::LISTENER_LOST.open(out);
    tally.write(out, f::LISTENER_LOST.name, table);
}
