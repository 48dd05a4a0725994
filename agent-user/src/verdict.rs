//! Per-target refusal episodes and verdicts (DESIGN.md, "Verdicts"). Pure: time is a `Duration`
//! since an arbitrary monotonic epoch, injected by the caller; no kernel, no runtime inside.
use std::{collections::BTreeMap, time::Duration};

use serde::{Serialize, Serializer};

/// Ended episodes kept per target, newest last.
pub const HISTORY: usize = 10;

#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    pub cold_start_max: Duration,
    pub persistent_after: Duration,
    pub min_attempts: u64,
    pub flap_episodes: u32,
    pub flap_window: Duration,
    /// Targets with no refusal, success or open episode for this long are dropped.
    pub forget_after: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            cold_start_max: Duration::from_secs(180),
            persistent_after: Duration::from_secs(180),
            min_attempts: 3,
            flap_episodes: 3,
            flap_window: Duration::from_secs(15 * 60),
            forget_after: Duration::from_secs(3600),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No open episode and not flapping.
    Ok,
    Refusing,
    Persistent,
    Flapping,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Refusing => "refusing",
            State::Persistent => "persistent",
            State::Flapping => "flapping",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// First refusal → first success within `cold_start_max`.
    ColdStart { seconds: f64 },
    /// A persistent target (or one refusing past `cold_start_max`) finally accepted.
    Recovered { seconds: f64 },
}

fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn opt_secs<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Episode {
    #[serde(serialize_with = "secs")]
    pub started: Duration,
    #[serde(serialize_with = "opt_secs")]
    pub ended: Option<Duration>,
    pub refused: u64,
    /// Reached `persistent` before it ended.
    pub persistent: bool,
    pub outcome: Option<Outcome>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Target {
    pub state: State,
    pub refused_total: u64,
    #[serde(serialize_with = "opt_secs")]
    pub first_refusal: Option<Duration>,
    #[serde(serialize_with = "opt_secs")]
    pub last_refusal: Option<Duration>,
    #[serde(serialize_with = "opt_secs")]
    pub last_success: Option<Duration>,
    pub open: Option<Episode>,
    pub history: Vec<Episode>,
    pub episodes_total: u64,
    pub cold_starts: u64,
    pub recoveries: u64,
    /// Episode starts within the flap window (at most `flap_episodes` kept).
    #[serde(skip)]
    starts: Vec<Duration>,
    #[serde(skip)]
    last_activity: Duration,
}

impl Target {
    fn new(at: Duration) -> Self {
        Self {
            state: State::Ok,
            refused_total: 0,
            first_refusal: None,
            last_refusal: None,
            last_success: None,
            open: None,
            history: Vec::new(),
            episodes_total: 0,
            cold_starts: 0,
            recoveries: 0,
            starts: Vec::new(),
            last_activity: at,
        }
    }

    /// Re-derives `state` at `now`: flapping wins, then the open episode's verdict.
    fn evaluate(&mut self, t: &Thresholds, now: Duration) {
        self.starts.retain(|s| now.saturating_sub(*s) < t.flap_window);
        if let Some(e) = self.open.as_mut()
            && e.refused >= t.min_attempts
            && now.saturating_sub(e.started) >= t.persistent_after
        {
            e.persistent = true;
        }
        self.state = if self.starts.len() >= t.flap_episodes as usize {
            State::Flapping
        } else {
            match &self.open {
                Some(e) if e.persistent => State::Persistent,
                Some(_) => State::Refusing,
                None => State::Ok,
            }
        };
    }
}

pub struct Engine<K> {
    t: Thresholds,
    targets: BTreeMap<K, Target>,
}

impl<K: Ord + Clone> Engine<K> {
    pub fn new(t: Thresholds) -> Self {
        Self {
            t,
            targets: BTreeMap::new(),
        }
    }

    /// `n` refused connects, the last at `at`.
    pub fn refused(&mut self, key: &K, at: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let t = &self.t;
        let target = self.targets.entry(key.clone()).or_insert_with(|| Target::new(at));
        target.refused_total += n;
        target.first_refusal.get_or_insert(at);
        target.last_refusal = Some(target.last_refusal.map_or(at, |l| l.max(at)));
        target.last_activity = target.last_activity.max(at);
        match target.open.as_mut() {
            Some(e) => e.refused += n,
            None => {
                target.open = Some(Episode {
                    started: at,
                    ended: None,
                    refused: n,
                    persistent: false,
                    outcome: None,
                });
                target.episodes_total += 1;
                target.starts.push(at);
                let keep = t.flap_episodes as usize;
                if target.starts.len() > keep {
                    target.starts.drain(..target.starts.len() - keep);
                }
            }
        }
        target.evaluate(t, at);
    }

    /// `n` successful connects, the last at `at`; the outcome when this ends an open episode.
    pub fn succeeded(&mut self, key: &K, at: Duration, n: u64) -> Option<Outcome> {
        if n == 0 {
            return None;
        }
        let t = &self.t;
        let target = self.targets.entry(key.clone()).or_insert_with(|| Target::new(at));
        target.last_success = Some(target.last_success.map_or(at, |l| l.max(at)));
        target.last_activity = target.last_activity.max(at);
        let mut episode = target.open.take()?;
        target.evaluate_persistence(t, at, &mut episode);
        let seconds = at.saturating_sub(episode.started).as_secs_f64();
        let outcome = if !episode.persistent && at.saturating_sub(episode.started) <= t.cold_start_max {
            target.cold_starts += 1;
            Outcome::ColdStart { seconds }
        } else {
            target.recoveries += 1;
            Outcome::Recovered { seconds }
        };
        episode.ended = Some(at);
        episode.outcome = Some(outcome);
        target.history.push(episode);
        if target.history.len() > HISTORY {
            target.history.remove(0);
        }
        target.evaluate(t, at);
        Some(outcome)
    }

    /// Time-driven transitions at `now`, and forgetting idle targets.
    pub fn tick(&mut self, now: Duration) {
        let t = &self.t;
        self.targets.retain(|_, target| {
            target.evaluate(t, now);
            target.open.is_some() || now.saturating_sub(target.last_activity) < t.forget_after
        });
        // An open episode idle past forget_after: the client gave up; drop it too.
        self.targets
            .retain(|_, target| now.saturating_sub(target.last_activity) < t.forget_after);
    }

    #[cfg(test)]
    pub fn get(&self, key: &K) -> Option<&Target> {
        self.targets.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &Target)> {
        self.targets.iter()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Keys with an open episode.
    pub fn watched(&self) -> impl Iterator<Item = &K> {
        self.targets.iter().filter(|(_, t)| t.open.is_some()).map(|(k, _)| k)
    }

    /// One plain sentence about the target at `now`.
    pub fn explain(&self, key: &K, now: Duration) -> Option<String> {
        let t = self.targets.get(key)?;
        let times = |n: u64| {
            if n == 1 {
                "once".to_string()
            } else {
                format!("{n} times")
            }
        };
        Some(match (t.state, &t.open) {
            (State::Flapping, _) => format!(
                "{} refusal episodes within {}, each ended by a success: flapping (the service listens, dies and listens again: a crash loop)",
                t.starts.len(),
                format_duration(self.t.flap_window)
            ),
            (State::Persistent, Some(e)) => format!(
                "refused {} over {} and never accepted: persistent misconfiguration (wrong port or address, service not started, or bound elsewhere)",
                times(e.refused),
                format_duration(now.saturating_sub(e.started))
            ),
            (_, Some(e)) => format!(
                "refused {} over {} so far: refusing; a success within {} of the first refusal would make it a cold start",
                times(e.refused),
                format_duration(now.saturating_sub(e.started)),
                format_duration(self.t.cold_start_max)
            ),
            (_, None) => match t.history.last().and_then(|e| e.outcome) {
                Some(Outcome::ColdStart { seconds }) => format!(
                    "accepted {} after its first refusal: a cold start (refusals during a boot are expected)",
                    format_duration(Duration::from_secs_f64(seconds))
                ),
                Some(Outcome::Recovered { seconds }) => {
                    format!(
                        "accepted again after {} of refusals: recovered",
                        format_duration(Duration::from_secs_f64(seconds))
                    )
                }
                None => "connects succeed; no refusals".to_string(),
            },
        })
    }
}

impl Target {
    /// Persistence is judged at the success's time too: refusals that crossed the threshold
    /// between ticks still make it a recovery, not a cold start.
    fn evaluate_persistence(&self, t: &Thresholds, at: Duration, e: &mut Episode) {
        if e.refused >= t.min_attempts && at.saturating_sub(e.started) >= t.persistent_after {
            let last = self.last_refusal.unwrap_or(e.started);
            e.persistent |= last.saturating_sub(e.started) >= t.persistent_after;
        }
    }
}

/// `850ms`, `45s`, `3m12s`, `1h2m`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn short() -> Thresholds {
        Thresholds {
            cold_start_max: Duration::from_secs(30),
            persistent_after: Duration::from_secs(10),
            min_attempts: 3,
            flap_episodes: 3,
            flap_window: Duration::from_secs(60),
            forget_after: Duration::from_secs(120),
        }
    }

    #[test]
    fn cold_start_is_one_episode_with_exact_duration() {
        let mut e = Engine::new(Thresholds::default());
        for i in 0..17 {
            e.refused(&"t", ms(1000 + i * 300), 1);
            e.tick(ms(1000 + i * 300));
        }
        assert_eq!(e.get(&"t").unwrap().state, State::Refusing);
        assert_eq!(
            e.succeeded(&"t", ms(6000), 1),
            Some(Outcome::ColdStart { seconds: 5.0 })
        );
        let t = e.get(&"t").unwrap();
        assert_eq!(
            (t.state, t.episodes_total, t.cold_starts, t.refused_total),
            (State::Ok, 1, 1, 17)
        );
        assert_eq!(e.watched().count(), 0);
        assert_eq!(
            e.explain(&"t", ms(7000)).unwrap(),
            "accepted 5s after its first refusal: a cold start (refusals during a boot are expected)"
        );
    }

    #[test]
    fn persistent_exactly_at_the_threshold_then_recovered() {
        let mut e = Engine::new(short());
        e.refused(&"t", ms(0), 1);
        e.refused(&"t", ms(1000), 2);
        e.tick(ms(9999));
        assert_eq!(e.get(&"t").unwrap().state, State::Refusing);
        e.tick(ms(10_000));
        assert_eq!(e.get(&"t").unwrap().state, State::Persistent);
        assert!(
            e.explain(&"t", ms(192_000))
                .unwrap()
                .starts_with("refused 3 times over 3m12s and never accepted: persistent")
        );
        assert_eq!(
            e.succeeded(&"t", ms(20_000), 1),
            Some(Outcome::Recovered { seconds: 20.0 })
        );
        assert_eq!(e.get(&"t").unwrap().recoveries, 1);
    }

    #[test]
    fn too_few_attempts_stay_refusing() {
        let mut e = Engine::new(short());
        e.refused(&"t", ms(0), 1);
        e.refused(&"t", ms(5000), 1);
        e.tick(ms(110_000));
        assert_eq!(e.get(&"t").unwrap().state, State::Refusing);
        // Past cold_start_max without becoming persistent: a recovery, not a cold start.
        assert_eq!(
            e.succeeded(&"t", ms(110_000), 1),
            Some(Outcome::Recovered { seconds: 110.0 })
        );
    }

    #[test]
    fn crash_loop_is_flapping_until_the_window_slides() {
        let mut e = Engine::new(short());
        for i in 0..3 {
            e.refused(&"t", ms(i * 2000), 1);
            e.succeeded(&"t", ms(i * 2000 + 1000), 1);
        }
        assert_eq!(e.get(&"t").unwrap().state, State::Flapping);
        assert!(e.explain(&"t", ms(6000)).unwrap().contains("flapping"));
        e.tick(ms(4000 + 60_000));
        assert_eq!(e.get(&"t").unwrap().state, State::Ok);
    }

    #[test]
    fn idle_targets_are_forgotten() {
        let mut e = Engine::new(short());
        e.refused(&"a", ms(0), 1);
        e.succeeded(&"b", ms(0), 1);
        e.tick(ms(119_999));
        assert_eq!(e.len(), 2);
        e.tick(ms(120_000));
        assert!(e.is_empty());
    }

    #[test]
    fn formats_durations() {
        assert_eq!(format_duration(ms(850)), "850ms");
        assert_eq!(format_duration(ms(45_000)), "45s");
        assert_eq!(format_duration(ms(192_000)), "3m12s");
        assert_eq!(format_duration(ms(3_720_000)), "1h2m");
    }

    #[derive(Clone, Debug)]
    enum Op {
        Refused(u8, u64),
        Succeeded(u8, u64),
        Tick,
    }

    fn op() -> impl Strategy<Value = (Op, u64)> {
        let kind = prop_oneof![
            (0u8..3, 1u64..4).prop_map(|(k, n)| Op::Refused(k, n)),
            (0u8..3, 1u64..3).prop_map(|(k, n)| Op::Succeeded(k, n)),
            Just(Op::Tick),
        ];
        (kind, 0u64..20_000)
    }

    proptest! {
        #[test]
        fn invariants_hold_for_any_sequence(ops in proptest::collection::vec(op(), 0..200)) {
            let t = short();
            let mut e = Engine::new(t.clone());
            let mut now = Duration::ZERO;
            for (op, step) in ops {
                now += ms(step);
                let ticked = matches!(op, Op::Tick);
                match op {
                    Op::Refused(k, n) => e.refused(&k, now, n),
                    Op::Succeeded(k, n) => { e.succeeded(&k, now, n); }
                    Op::Tick => e.tick(now),
                }
                for (_, target) in e.iter() {
                    // Every episode ended in exactly one outcome, or is the one open episode.
                    prop_assert_eq!(target.episodes_total, target.cold_starts + target.recoveries + u64::from(target.open.is_some()));
                    for ep in &target.history {
                        prop_assert!(ep.outcome.is_some() && ep.ended.is_some_and(|end| end >= ep.started));
                        match ep.outcome.unwrap() {
                            Outcome::ColdStart { seconds } | Outcome::Recovered { seconds } => prop_assert!(seconds >= 0.0),
                        }
                    }
                    prop_assert!(target.history.len() <= HISTORY);
                    prop_assert!(target.starts.len() <= t.flap_episodes as usize);
                    let flapping = target.starts.iter().filter(|s| now.saturating_sub(**s) < t.flap_window).count() >= t.flap_episodes as usize;
                    // States advance on a target's own events and on ticks.
                    if ticked { prop_assert_eq!(target.state == State::Flapping, flapping); }
                }
            }
            e.tick(now + t.forget_after + t.flap_window);
            prop_assert!(e.is_empty());
        }
    }
}
