//! Retry budgets from measured boots: the cold starts seen per key (a target, a destination
//! port) over a window, their spread, and how long a client must retry to ride one out.
use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    time::Duration,
};

use serde::Serialize;

use crate::analyse::verdict::format_duration;

/// Samples kept per key: the newest, when a key sees more within the window.
const SAMPLES: usize = 1024;
/// The budget covers the longest boot seen with this much to spare.
const MARGIN: f64 = 1.15;

/// What the cold starts of one key say.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Advice {
    pub seen: usize,
    pub min: f64,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
    /// Seconds a client should keep retrying: the longest boot seen plus 15 %, rounded up.
    pub retry_for: f64,
}

impl Advice {
    /// The spread of `boots` (seconds); `None` when there are none.
    pub fn of(boots: impl IntoIterator<Item = f64>) -> Option<Advice> {
        let mut v: Vec<f64> = boots.into_iter().collect();
        v.sort_by(f64::total_cmp);
        let (min, max) = (*v.first()?, *v.last()?);
        // Nearest rank: the smallest sample at or above that fraction of them.
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Advice {
            seen: v.len(),
            min,
            p50: rank(0.5),
            p95: rank(0.95),
            max,
            retry_for: round_up(max * MARGIN),
        })
    }

    /// "cold starts of :8080 took 12–52 s (p95 48 s, 40 seen in 24h): retry for at least 60 s".
    pub fn sentence(&self, what: &str, window: Duration) -> String {
        format!(
            "cold starts of {what} took {}–{} s (p95 {} s, {} seen in {}): retry for at least {} s",
            secs(self.min),
            secs(self.max),
            secs(self.p95),
            self.seen,
            format_duration(window),
            secs(self.retry_for)
        )
    }
}

/// Seconds as people read them: whole above 10, one decimal below.
fn secs(s: f64) -> String {
    if s >= 10.0 {
        format!("{s:.0}")
    } else {
        format!("{s:.1}")
    }
}

/// Up to a round number: whole seconds to 10 s, then 5 s to a minute, 15 s to 5 minutes,
/// whole minutes beyond.
fn round_up(s: f64) -> f64 {
    let step = match s {
        s if s <= 10.0 => 1.0,
        s if s <= 60.0 => 5.0,
        s if s <= 300.0 => 15.0,
        _ => 60.0,
    };
    (s / step).ceil() * step
}

/// Boot durations per key, with when each was seen.
#[derive(Debug)]
pub struct Boots<K> {
    samples: HashMap<K, VecDeque<(Duration, f64)>>,
}

impl<K: Hash + Eq> Default for Boots<K> {
    fn default() -> Self {
        Boots {
            samples: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq> Boots<K> {
    pub fn add(&mut self, key: K, at: Duration, seconds: f64) {
        let v = self.samples.entry(key).or_default();
        v.push_back((at, seconds));
        v.drain(..v.len().saturating_sub(SAMPLES));
    }

    /// Drops what is older than `window` before `now`, and keys left empty.
    pub fn prune(&mut self, now: Duration, window: Duration) {
        self.samples.retain(|_, v| {
            while v.front().is_some_and(|(at, _)| now.saturating_sub(*at) > window) {
                v.pop_front();
            }
            !v.is_empty()
        });
    }

    /// The advice for `key`, once it has `min` boots.
    pub fn advice(&self, key: &K, min: usize) -> Option<Advice> {
        let v = self.samples.get(key).filter(|v| v.len() >= min.max(1))?;
        Advice::of(v.iter().map(|(_, s)| *s))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.samples.keys()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn quantiles_by_nearest_rank_and_a_round_budget() {
        let boots: Vec<f64> = (1..=40).map(|i| 12.0 + f64::from(i)).collect();
        let a = Advice::of(boots).unwrap();
        assert_eq!((a.seen, a.min, a.p50, a.p95, a.max), (40, 13.0, 32.0, 50.0, 52.0));
        // 52 s + 15 % = 59.8 s: a minute.
        assert_eq!(a.retry_for, 60.0);
        assert_eq!(
            a.sentence(":8080", Duration::from_secs(86_400)),
            "cold starts of :8080 took 13–52 s (p95 50 s, 40 seen in 24h): retry for at least 60 s"
        );
        assert_eq!(Advice::of([2.5]).unwrap().retry_for, 3.0);
        assert_eq!(Advice::of([100.0]).unwrap().retry_for, 120.0);
        assert_eq!(Advice::of([]), None);
    }

    #[test]
    fn advice_waits_for_enough_boots_within_the_window() {
        let mut b = Boots::default();
        let s = Duration::from_secs;
        for (at, boot) in [(10, 5.0), (20, 6.0), (30, 7.0)] {
            b.add(8080u16, s(at), boot);
        }
        assert_eq!(b.advice(&8080, 4), None);
        assert_eq!(b.advice(&8080, 3).map(|a| a.seen), Some(3));
        b.prune(s(110), s(90));
        assert_eq!(b.advice(&8080, 1).map(|a| (a.seen, a.min)), Some((2, 6.0)));
        b.prune(s(1000), s(90));
        assert_eq!(b.keys().count(), 0);
    }

    proptest! {
        #[test]
        fn the_budget_covers_every_boot_and_quantiles_are_ordered(boots in proptest::collection::vec(0.0f64..3600.0, 1..200)) {
            let a = Advice::of(boots.iter().copied()).unwrap();
            prop_assert!(a.min <= a.p50 && a.p50 <= a.p95 && a.p95 <= a.max);
            prop_assert!(a.retry_for >= a.max);
            prop_assert!(boots.iter().all(|b| *b <= a.retry_for));
        }
    }
}
