//! Per-metric series cap. Label sets are admitted first come, first served up to the cap; later
//! ones fold into `other` so a port scan cannot blow up memory or scrape size, while the
//! folded counts still add up to the exact totals. Pure.
use std::collections::{BTreeMap, HashSet};

pub const OTHER: &str = "other";

#[derive(Debug)]
pub struct SeriesCap {
    cap: usize,
    admitted: BTreeMap<&'static str, HashSet<Vec<String>>>,
    /// Distinct label sets folded so far, per metric: `refusal_agent_series_overflow_total`.
    folded: BTreeMap<&'static str, HashSet<Vec<String>>>,
}

impl SeriesCap {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            admitted: BTreeMap::new(),
            folded: BTreeMap::new(),
        }
    }

    /// Whether `labels` keeps its own series in `metric`; false means fold it into `other`.
    pub fn admit(&mut self, metric: &'static str, labels: &[String]) -> bool {
        let admitted = self.admitted.entry(metric).or_default();
        if admitted.contains(labels) {
            return true;
        }
        if admitted.len() < self.cap {
            admitted.insert(labels.to_vec());
            return true;
        }
        self.folded.entry(metric).or_default().insert(labels.to_vec());
        false
    }

    pub fn overflow(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.folded.iter().map(|(m, s)| (*m, s.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn l(s: &str) -> Vec<String> {
        vec![s.to_string()]
    }

    #[test]
    fn admits_up_to_cap_then_folds_and_counts_distinct_sets() {
        let mut c = SeriesCap::new(2);
        assert!(c.admit("m", &l("a")));
        assert!(c.admit("m", &l("b")));
        assert!(c.admit("m", &l("a")));
        assert!(!c.admit("m", &l("c")));
        assert!(!c.admit("m", &l("c")));
        assert!(!c.admit("m", &l("d")));
        assert!(c.admit("other_metric", &l("c")));
        assert_eq!(c.overflow().collect::<Vec<_>>(), vec![("m", 2)]);
    }

    proptest! {
        #[test]
        fn never_more_than_cap_admitted(cap in 1usize..20, sets in proptest::collection::vec(0u32..100, 0..200)) {
            let mut c = SeriesCap::new(cap);
            let mut admitted = HashSet::new();
            for s in &sets {
                if c.admit("m", &l(&s.to_string())) {
                    admitted.insert(*s);
                }
            }
            let distinct: HashSet<_> = sets.iter().collect();
            prop_assert!(admitted.len() <= cap);
            prop_assert_eq!(admitted.len() + c.overflow().map(|(_, n)| n as usize).sum::<usize>(), distinct.len());
        }
    }
}
