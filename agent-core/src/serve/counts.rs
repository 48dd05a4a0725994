//! The kernel-counted families (connect failures, resets both ways, inbound refusals) from a
//! snapshot, through the series caps: a new label set past the cap folds into `other`, the
//! kernel's own overflow slots are written outside the cap, so totals stay exact.
use std::hash::Hash;

use crate::{
    collect::{labels::Label, snapshot::Snapshot},
    serve::{
        exposition::{Sample, Text},
        families::{self, Family},
        series::{FailureSeries, ReceivedSeries, SentSeries, SeriesCap, Table, Tally, inbound_labels},
    },
};

/// How one capped family writes a row's labels.
type Labels<S> = for<'a> fn(&S, Sample<'a>) -> Sample<'a>;

/// Writes one kernel-counted family: `rows` through the table's cap (a new label set past it
/// folds to `fold` of it), then the kernel's own overflow, which is outside the cap.
fn capped<S: Hash + Eq>(
    out: &mut Text,
    family: &Family,
    table: &mut Table<S>,
    labels: Labels<S>,
    fold: impl Fn(&S) -> S,
    rows: impl IntoIterator<Item = (S, u64)>,
    overflow: impl IntoIterator<Item = (S, u64)>,
) {
    let mut tally = Tally::default();
    for (s, n) in rows {
        tally.add(table.row(s, &fold, labels), n);
    }
    for (s, n) in overflow {
        tally.add(table.fixed(s, labels), n);
    }
    family.open(out);
    tally.write(out, family.name, table);
}

/// Writes the kernel-counted metrics of `snap`, folding label sets past the cap.
pub fn render(snap: &Snapshot, series: &mut SeriesCap, out: &mut Text) {
    capped(
        out,
        &families::CONNECT_FAILURES,
        &mut series.failures,
        FailureSeries::labels,
        |s| FailureSeries {
            dst_addr: None,
            dst_port: None,
            ..s.clone()
        },
        snap.failures().map(|(f, errno)| {
            let s = FailureSeries {
                workload: f.workload.clone(),
                comm: f.comm.clone(),
                proto: f.proto,
                dst_addr: Some(f.dst_addr),
                dst_port: Some(f.dst_port),
                errno: errno.clone(),
            };
            (s, f.count)
        }),
        snap.overflow
            .failures
            .iter()
            .map(|((workload, comm, proto, errno), n)| {
                let s = FailureSeries {
                    workload: workload.clone(),
                    comm: comm.clone(),
                    proto,
                    dst_addr: None,
                    dst_port: None,
                    errno: errno.clone(),
                };
                (s, *n)
            }),
    );
    capped(
        out,
        &families::RESETS_RECEIVED,
        &mut series.resets_received,
        ReceivedSeries::labels,
        |s| ReceivedSeries {
            dst_addr: None,
            dst_port: None,
            ..s.clone()
        },
        snap.resets_received.iter().map(|r| {
            let s = ReceivedSeries {
                workload: r.workload.clone(),
                comm: r.comm.clone(),
                dst_addr: Some(r.dst_addr),
                dst_port: Some(r.dst_port),
                state: r.state,
            };
            (s, r.count)
        }),
        snap.overflow
            .resets_received
            .iter()
            .map(|((workload, comm, state), n)| {
                let s = ReceivedSeries {
                    workload: workload.clone(),
                    comm: comm.clone(),
                    dst_addr: None,
                    dst_port: None,
                    state,
                };
                (s, *n)
            }),
    );
    let sent = |workload, comm, reason: &Label| SentSeries {
        workload,
        comm,
        reason: reason.clone(),
    };
    capped(
        out,
        &families::RESETS_SENT,
        &mut series.resets_sent,
        SentSeries::labels,
        |s| sent(None, None, &s.reason),
        snap.resets_sent.iter().map(|r| {
            let s = sent(Some(r.workload.clone()), Some(r.comm.clone()), &r.reason);
            (s, r.count)
        }),
        snap.overflow
            .resets_sent
            .iter()
            .map(|(reason, n)| (sent(None, None, reason), *n)),
    );
    // Both address and port fold: a flood of local addresses must not grow one series each.
    capped(
        out,
        &families::INBOUND_REFUSED,
        &mut series.inbound,
        inbound_labels,
        |_| None,
        snap.inbound
            .iter()
            .map(|i| (Some((i.local_addr, i.local_port)), i.count)),
        (snap.overflow.inbound > 0).then_some((None, snap.overflow.inbound)),
    );
}
