//! Per-metric series. Label sets are admitted first come, first served up to the cap; later
//! ones fold into `other` so a port scan cannot blow up memory or scrape size, while the folded
//! counts still add up to the exact totals. Each series' label text is written once, when it
//! first appears, and reused by every scrape after: at 10,000 series, formatting and sorting
//! them anew cost more than the rest of a scrape. Pure.
use std::{hash::Hash, net::IpAddr};

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

pub use crate::collect::labels::OTHER;
use crate::{
    collect::{labels::Label, workload::Workload},
    serve::{
        exposition::{Sample, Text},
        families::{self, Cap, Family},
    },
};

/// The series of one metric, as rows: the admitted label sets, and the `other` sets past the cap.
#[derive(Debug)]
pub struct Table<S> {
    cap: usize,
    rows: HashMap<S, u32>,
    admitted: usize,
    /// Distinct label sets folded so far: `refusal_agent_series_overflow_total`.
    folded: HashSet<S>,
    /// Every row's label text, one after another; row `i` ends at `ends[i]`.
    text: String,
    ends: Vec<usize>,
}

impl<S: Hash + Eq> Table<S> {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            rows: HashMap::new(),
            admitted: 0,
            folded: HashSet::new(),
            text: String::new(),
            ends: Vec::new(),
        }
    }

    /// The row of label set `series`; once the cap is reached, of `fold(series)` for a new one.
    /// `labels` writes a new row's labels.
    pub fn row(
        &mut self,
        series: S,
        fold: impl FnOnce(&S) -> S,
        labels: impl for<'a> FnOnce(&S, Sample<'a>) -> Sample<'a>,
    ) -> usize {
        if let Some(&row) = self.rows.get(&series) {
            return row as usize;
        }
        if self.admitted < self.cap {
            self.admitted += 1;
            return self.insert(series, labels);
        }
        let other = fold(&series);
        self.folded.insert(series);
        self.fixed(other, labels)
    }

    /// The row of a label set outside the cap: an `other` row, or the kernel's own overflow.
    pub fn fixed(&mut self, series: S, labels: impl for<'a> FnOnce(&S, Sample<'a>) -> Sample<'a>) -> usize {
        match self.rows.get(&series) {
            Some(&row) => row as usize,
            None => self.insert(series, labels),
        }
    }

    fn insert(&mut self, series: S, labels: impl for<'a> FnOnce(&S, Sample<'a>) -> Sample<'a>) -> usize {
        labels(&series, Sample::labels(&mut self.text));
        let row = self.ends.len();
        self.ends.push(self.text.len());
        self.rows.insert(series, row as u32);
        row
    }

    /// Row `row`'s labels, for [`Sample::cached`].
    pub fn labels(&self, row: usize) -> &str {
        let start = row.checked_sub(1).map_or(0, |r| self.ends[r]);
        &self.text[start..self.ends[row]]
    }

    pub fn folded(&self) -> u64 {
        self.folded.len() as u64
    }
}

/// One scrape's values by row; rows nothing fed are left out.
#[derive(Debug, Default)]
pub struct Tally(Vec<Option<u64>>);

impl Tally {
    pub fn add(&mut self, row: usize, n: u64) {
        if row >= self.0.len() {
            self.0.resize(row + 1, None);
        }
        *self.0[row].get_or_insert(0) += n;
    }

    /// `(row, value)` in row order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.0.iter().enumerate().filter_map(|(row, v)| Some((row, (*v)?)))
    }

    /// A sample of `name` per row fed, with the row's labels from `table`.
    pub fn write<S: Hash + Eq>(&self, out: &mut Text, name: &str, table: &Table<S>) {
        for (row, n) in self.iter() {
            out.sample(name).cached(table.labels(row)).count(n);
        }
    }
}

/// A `refusal_connect_failures_total` label set; `None` address and port: folded into `other`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FailureSeries {
    pub workload: Workload,
    pub comm: Label,
    pub proto: &'static str,
    pub dst_addr: Option<IpAddr>,
    pub dst_port: Option<u16>,
    pub errno: Label,
}

/// A `refusal_resets_received_total` label set.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReceivedSeries {
    pub workload: Workload,
    pub comm: Label,
    pub dst_addr: Option<IpAddr>,
    pub dst_port: Option<u16>,
    pub state: &'static str,
}

/// A `refusal_resets_sent_total` label set; `None` workload and comm: folded into `other`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SentSeries {
    pub workload: Option<Workload>,
    pub comm: Option<Label>,
    pub reason: Label,
}

impl FailureSeries {
    pub fn labels<'a>(&self, l: Sample<'a>) -> Sample<'a> {
        l.workload(&self.workload)
            .label("comm", &self.comm)
            .label("proto", self.proto)
            .or_other("dst_addr", self.dst_addr)
            .or_other("dst_port", self.dst_port)
            .label("errno", &self.errno)
    }
}

impl ReceivedSeries {
    pub fn labels<'a>(&self, l: Sample<'a>) -> Sample<'a> {
        l.workload(&self.workload)
            .label("comm", &self.comm)
            .or_other("dst_addr", self.dst_addr)
            .or_other("dst_port", self.dst_port)
            .label("state", self.state)
    }
}

impl SentSeries {
    pub fn labels<'a>(&self, l: Sample<'a>) -> Sample<'a> {
        let l = match &self.workload {
            Some(w) => l.workload(w),
            None => l.workload(&Workload::from(OTHER)),
        };
        l.label("comm", self.comm.as_deref().unwrap_or(OTHER))
            .label("reason", &self.reason)
    }
}

pub fn inbound_labels<'a>(local: &Option<(IpAddr, u16)>, l: Sample<'a>) -> Sample<'a> {
    l.or_other("local_addr", local.map(|k| k.0))
        .or_other("local_port", local.map(|k| k.1))
}

/// A target's labels in a capped metric: its own, or its workload and comm with the address and
/// port folded into `other` (`dst` `None`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TargetSeries {
    pub workload: Workload,
    pub comm: Label,
    pub dst: Option<(IpAddr, u16)>,
}

impl TargetSeries {
    pub fn folded(&self) -> Self {
        TargetSeries {
            dst: None,
            ..self.clone()
        }
    }

    pub fn labels<'a>(&self, s: Sample<'a>) -> Sample<'a> {
        s.workload(&self.workload)
            .label("comm", &self.comm)
            .or_other("dst_addr", self.dst.map(|d| d.0))
            .or_other("dst_port", self.dst.map(|d| d.1))
    }
}

/// A `refusal_listener_lost_total` label set; `None` port: folded into `other`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LostSeries {
    pub workload: Workload,
    pub comm: Label,
    pub port: Option<u16>,
    pub cause: &'static str,
    pub after_reset: bool,
}

impl LostSeries {
    pub fn labels<'a>(&self, l: Sample<'a>) -> Sample<'a> {
        l.workload(&self.workload)
            .label("comm", &self.comm)
            .or_other("local_port", self.port)
            .label("cause", self.cause)
            .label("after_reset", if self.after_reset { "true" } else { "false" })
    }

    pub fn folded(&self) -> Self {
        LostSeries {
            port: None,
            ..self.clone()
        }
    }
}

/// Every capped metric's series.
#[derive(Debug)]
pub struct SeriesCap {
    pub failures: Table<FailureSeries>,
    pub resets_received: Table<ReceivedSeries>,
    pub resets_sent: Table<SentSeries>,
    /// `None`: local address and port both folded.
    pub inbound: Table<Option<(IpAddr, u16)>>,
    pub target_state: Table<TargetSeries>,
    pub episodes: Table<(TargetSeries, &'static str)>,
    pub listener_lost: Table<LostSeries>,
}

impl SeriesCap {
    pub fn new(cap: usize) -> Self {
        Self {
            failures: Table::new(cap),
            resets_received: Table::new(cap),
            resets_sent: Table::new(cap),
            inbound: Table::new(cap),
            target_state: Table::new(cap),
            episodes: Table::new(cap),
            listener_lost: Table::new(cap),
        }
    }

    /// Folded label sets per capped family, as its [`Cap`] says: the kernel-counted families
    /// always, the others once they fold.
    pub fn overflow(&self) -> impl Iterator<Item = (&'static str, u64)> {
        let folded: [(&Family, u64); 7] = [
            (&families::CONNECT_FAILURES, self.failures.folded()),
            (&families::RESETS_RECEIVED, self.resets_received.folded()),
            (&families::RESETS_SENT, self.resets_sent.folded()),
            (&families::INBOUND_REFUSED, self.inbound.folded()),
            (&families::TARGET_STATE, self.target_state.folded()),
            (&families::EPISODES, self.episodes.folded()),
            (&families::LISTENER_LOST, self.listener_lost.folded()),
        ];
        folded
            .into_iter()
            .filter(|(f, n)| f.cap == Cap::Always || *n > 0)
            .map(|(f, n)| (f.name, n))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn row(t: &mut Table<Option<u16>>, v: u16) -> usize {
        t.row(Some(v), |_| None, |s, l| l.or_other("v", *s))
    }

    #[test]
    fn admits_up_to_cap_then_folds_and_counts_distinct_sets() {
        let mut t = Table::new(2);
        assert_eq!(row(&mut t, 7), 0);
        assert_eq!(row(&mut t, 8), 1);
        assert_eq!(row(&mut t, 7), 0);
        // Past the cap: all into one `other` row, each distinct set counted once.
        assert_eq!(row(&mut t, 9), 2);
        assert_eq!(row(&mut t, 9), 2);
        assert_eq!(row(&mut t, 10), 2);
        assert_eq!(t.folded(), 2);
        assert_eq!(
            [t.labels(0), t.labels(1), t.labels(2)],
            ["{v=\"7\"", "{v=\"8\"", "{v=\"other\""]
        );
        let mut s = SeriesCap::new(1);
        s.inbound.row(Some(("::1".parse().unwrap(), 80)), |_| None, |_, l| l);
        s.inbound.row(Some(("::1".parse().unwrap(), 81)), |_| None, |_, l| l);
        assert_eq!(
            s.overflow().collect::<Vec<_>>(),
            [
                (families::CONNECT_FAILURES.name, 0),
                (families::RESETS_RECEIVED.name, 0),
                (families::RESETS_SENT.name, 0),
                (families::INBOUND_REFUSED.name, 1)
            ]
        );
    }

    #[test]
    fn tallies_sum_by_row_and_skip_unfed_rows() {
        let mut t = Tally::default();
        t.add(2, 5);
        t.add(0, 1);
        t.add(2, 3);
        assert_eq!(t.iter().collect::<Vec<_>>(), [(0, 1), (2, 8)]);
    }

    proptest! {
        #[test]
        fn never_more_than_cap_admitted(cap in 1usize..20, sets in proptest::collection::vec(0u16..100, 0..200)) {
            let mut t = Table::new(cap);
            let mut own = std::collections::HashSet::new();
            for s in &sets {
                let r = row(&mut t, *s);
                if t.labels(r) != "{v=\"other\"" {
                    own.insert(*s);
                }
            }
            let distinct: std::collections::HashSet<_> = sets.iter().collect();
            prop_assert!(own.len() <= cap);
            prop_assert_eq!(own.len() + t.folded() as usize, distinct.len());
        }
    }
}
