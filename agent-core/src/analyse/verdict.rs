//! Per-target refusal episodes and their verdicts (ARCHITECTURE.md, "Verdicts"): cold start, persistent,
//! recovered, gave up, flapping. Pure and clock-injected: the caller passes monotonic time as a `Duration`,
//! so every rule is testable without a kernel, a runtime or real waiting.

use std::{
    collections::{BTreeMap, VecDeque},
    time::Duration,
};

use serde::{Serialize, Serializer};

use crate::config::Thresholds;

/// Ended episodes kept per target: enough to show a pattern, few enough to bound memory.
const HISTORY: usize = 10;

impl Thresholds {
    /// Episode starts that make a target flapping; 0 would mean "always flapping", so it acts as 1.
    fn flap_min(&self) -> usize {
        usize::try_from(self.flap_episodes.max(1)).unwrap_or(usize::MAX)
    }
}

/// What a target looks like now. `Ok` = no open episode and not flapping.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    #[default]
    Ok,
    Refusing,
    Persistent,
    Flapping,
}

impl State {
    /// The label value used in metrics and the API.
    pub fn name(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Refusing => "refusing",
            State::Persistent => "persistent",
            State::Flapping => "flapping",
        }
    }
}

/// How an episode ended; `seconds` runs from the episode's first refusal to its first success.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    ColdStart {
        seconds: f64,
    },
    Recovered {
        seconds: f64,
    },
    /// The client stopped `retried` seconds after its first refusal, without a success; the
    /// target began accepting `boot` seconds after that first refusal (`listening`: a listener
    /// appeared; else another client got through).
    GaveUp {
        retried: f64,
        boot: f64,
        listening: bool,
    },
}

impl Outcome {
    /// The `outcome` label value.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::ColdStart { .. } => "cold_start",
            Outcome::Recovered { .. } => "recovered",
            Outcome::GaveUp { .. } => "gave_up",
        }
    }

    /// Seconds from the episode's first refusal to the end it records: the success, or the
    /// last refusal of a client that gave up.
    pub fn seconds(self) -> f64 {
        match self {
            Outcome::ColdStart { seconds } | Outcome::Recovered { seconds } => seconds,
            Outcome::GaveUp { retried, .. } => retried,
        }
    }
}

/// A run of refusals ended by the first success, or by the client giving up.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Episode {
    #[serde(serialize_with = "ser_secs")]
    pub started: Duration,
    #[serde(serialize_with = "ser_opt_secs")]
    pub ended: Option<Duration>,
    pub refused: u64,
    pub outcome: Option<Outcome>,
    /// The last refusal so far.
    #[serde(serialize_with = "ser_secs")]
    pub last: Duration,
    /// The longest time between two refusals seen (at the collection's resolution): how long
    /// this client waits between retries, at most.
    #[serde(skip)]
    pub longest_gap: Duration,
}

/// Everything known about one target; `state` is current as of the last call that touched it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Target {
    pub state: State,
    pub refused_total: u64,
    #[serde(serialize_with = "ser_opt_secs")]
    pub first_refusal: Option<Duration>,
    #[serde(serialize_with = "ser_opt_secs")]
    pub last_refusal: Option<Duration>,
    #[serde(serialize_with = "ser_opt_secs")]
    pub last_success: Option<Duration>,
    /// The current episode, if any.
    pub open: Option<Episode>,
    /// Ended episodes, newest last, at most 10.
    pub history: Vec<Episode>,
    pub episodes_total: u64,
    pub cold_starts: u64,
    pub recoveries: u64,
    pub gave_ups: u64,
    /// The open episode reached `persistent`: kept apart from `state`, which flapping may hide.
    #[serde(skip)]
    persistent: bool,
    /// Recent episode starts, sorted, pruned to `flap_window` and capped at `flap_episodes`:
    /// only the newest few can decide flapping.
    #[serde(skip)]
    starts: VecDeque<Duration>,
}

impl Target {
    fn last_activity(&self) -> Option<Duration> {
        let open = self.open.as_ref().map(|e| e.started);
        [self.last_refusal, self.last_success, open].into_iter().flatten().max()
    }

    /// Time-driven part of the rules; a `now` earlier than recorded times saturates to "no time passed".
    fn advance(&mut self, now: Duration, th: &Thresholds) {
        let old = |s: &Duration| now.saturating_sub(*s) > th.flap_window;
        while self.starts.front().is_some_and(old) {
            self.starts.pop_front();
        }
        if let Some(ep) = &self.open
            && ep.refused >= th.min_attempts
            && now.saturating_sub(ep.started) >= th.persistent_after
        {
            self.persistent = true;
        }
        self.state = match &self.open {
            _ if self.starts.len() >= th.flap_min() => State::Flapping,
            None => State::Ok,
            Some(_) if self.persistent => State::Persistent,
            Some(_) => State::Refusing,
        };
    }
}

/// Episode tracking for every target seen, keyed by whatever identifies a target for the caller.
#[derive(Clone, Debug)]
pub struct Engine<K> {
    thresholds: Thresholds,
    targets: BTreeMap<K, Target>,
}

impl<K: Ord + Clone> Engine<K> {
    pub fn new(t: Thresholds) -> Self {
        let targets = BTreeMap::new();
        Self { thresholds: t, targets }
    }

    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    /// `n` (>= 1) refused connects, the last at `at`.
    pub fn refused(&mut self, key: &K, at: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let th = &self.thresholds;
        let t = self.targets.entry(key.clone()).or_default();
        t.refused_total = t.refused_total.saturating_add(n);
        t.first_refusal = Some(t.first_refusal.map_or(at, |f| f.min(at)));
        t.last_refusal = Some(t.last_refusal.map_or(at, |l| l.max(at)));
        match &mut t.open {
            Some(ep) => {
                ep.refused = ep.refused.saturating_add(n);
                ep.longest_gap = ep.longest_gap.max(at.saturating_sub(ep.last));
                ep.last = ep.last.max(at);
            }
            None => {
                t.open = Some(Episode {
                    started: at,
                    ended: None,
                    refused: n,
                    outcome: None,
                    last: at,
                    longest_gap: Duration::ZERO,
                });
                t.persistent = false;
                t.episodes_total += 1;
                // Sorted even if times arrive out of order; only the newest `flap_episodes` matter.
                t.starts.insert(t.starts.partition_point(|&s| s <= at), at);
                t.starts.drain(..t.starts.len().saturating_sub(th.flap_min()));
            }
        }
        t.advance(at, th);
    }

    /// `n` (>= 1) successful connects, the last at `at`. Returns the outcome when this ends an open
    /// episode. Creates the target if needed: the caller compares successes across peers.
    pub fn succeeded(&mut self, key: &K, at: Duration, n: u64) -> Option<Outcome> {
        if n == 0 {
            return None;
        }
        let th = &self.thresholds;
        let t = self.targets.entry(key.clone()).or_default();
        t.last_success = Some(t.last_success.map_or(at, |l| l.max(at)));
        // Judge persistence as of the success, so the outcome does not depend on tick cadence.
        t.advance(at, th);
        let mut ep = t.open.take()?;
        let took = at.saturating_sub(ep.started);
        let seconds = took.as_secs_f64();
        let outcome = if !t.persistent && took <= th.cold_start_max {
            t.cold_starts += 1;
            Outcome::ColdStart { seconds }
        } else {
            t.recoveries += 1;
            Outcome::Recovered { seconds }
        };
        (ep.ended, ep.outcome) = (Some(at.max(ep.started)), Some(outcome));
        t.history.push(ep);
        t.history.drain(..t.history.len().saturating_sub(HISTORY));
        t.advance(at, th);
        Some(outcome)
    }

    /// Ends `key`'s open episode at its last refusal: its client stopped retrying, while the
    /// target began accepting at `accepting` (`listening`: a listener appeared). `now` advances
    /// the rest of its state.
    pub fn gave_up(&mut self, key: &K, now: Duration, accepting: Duration, listening: bool) -> Option<Outcome> {
        let th = &self.thresholds;
        let t = self.targets.get_mut(key)?;
        let mut ep = t.open.take()?;
        let since_first = |d: Duration| d.saturating_sub(ep.started).as_secs_f64();
        let outcome = Outcome::GaveUp {
            retried: since_first(ep.last),
            boot: since_first(accepting),
            listening,
        };
        t.gave_ups += 1;
        (ep.ended, ep.outcome) = (Some(ep.last), Some(outcome));
        t.history.push(ep);
        t.history.drain(..t.history.len().saturating_sub(HISTORY));
        t.advance(now, th);
        Some(outcome)
    }

    /// Open episodes, for the rules that look across targets.
    pub fn open(&self) -> impl Iterator<Item = (&K, &Episode)> {
        self.targets.iter().filter_map(|(k, t)| Some((k, t.open.as_ref()?)))
    }

    /// Time-driven transitions at `now` (refusing → persistent, flapping ends as the window slides)
    /// and forgetting idle targets, which is what bounds memory.
    pub fn tick(&mut self, now: Duration) {
        let th = &self.thresholds;
        self.targets.retain(|_, t| {
            t.advance(now, th);
            let recent = |last: Duration| now.saturating_sub(last) < th.forget_after;
            t.last_activity().is_some_and(recent)
        });
    }

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

    /// Keys with an open episode: the daemon asks the kernel to report successes only for these.
    pub fn watched(&self) -> impl Iterator<Item = &K> {
        self.targets.iter().filter(|(_, t)| t.open.is_some()).map(|(k, _)| k)
    }

    /// One plain-language sentence for a person: the facts, then what they most likely mean.
    pub fn explain(&self, key: &K, now: Duration) -> Option<String> {
        let (t, th) = (self.get(key)?, self.thresholds());
        let ago = |d: Duration| format_duration(now.saturating_sub(d));
        let open = t.open.as_ref().map(|e| (times(e.refused), ago(e.started)));
        Some(match (t.state, open, t.history.last()) {
            (State::Flapping, open, _) => {
                let (k, window) = (t.starts.len(), format_duration(th.flap_window));
                let now = open.map_or("accepting for now".into(), |(_, age)| {
                    format!("refusing again for {age}")
                });
                format!(
                    "{k} or more refusal episodes within {window}, {now}: flapping, it listens, dies and listens again"
                )
            }
            (State::Persistent, Some((n, age)), _) => format!(
                "refused {n} over {age} and never accepted: persistent misconfiguration (wrong port, service not \
                 started, or bound elsewhere)"
            ),
            (_, Some((n, age)), _) => {
                let (after, min) = (format_duration(th.persistent_after), th.min_attempts);
                format!(
                    "refused {n} over {age} and not accepted yet: probably still starting, persistent if it lasts \
                     {after} with {min} or more attempts"
                )
            }
            (_, None, Some(e)) => {
                let took = format_duration(e.ended.unwrap_or(e.started).saturating_sub(e.started));
                let how = match e.outcome {
                    Some(Outcome::Recovered { .. }) => format!("recovered after {took} of refusals"),
                    Some(Outcome::GaveUp { retried, boot, .. }) => format!(
                        "its client stopped retrying after {}, {} before the target began accepting",
                        format_secs(retried),
                        format_secs(boot - retried)
                    ),
                    _ => format!("a cold start that took {took}"),
                };
                let (n, ended) = (e.refused, e.ended.map_or("?".into(), ago));
                format!("accepting: the last episode ({n} refused) ended {ended} ago, {how}")
            }
            (_, None, None) => {
                let last = t.last_success.map_or("?".into(), ago);
                format!("accepting, last success {last} ago, no refusals seen")
            }
        })
    }
}

/// Seconds measured at the collection's resolution, as [`format_duration`] prints them, rounded
/// to the nearest second from one up (5.95 s is "6s", not "5s").
pub fn format_secs(s: f64) -> String {
    let s = if s >= 1.0 { s.round() } else { s };
    format_duration(Duration::from_secs_f64(s.max(0.0)))
}

/// "45s", "3m12s", "1h2m", "850ms" below a second: coarse on purpose, for people.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        _ if s == 0 => format!("{}ms", d.subsec_millis()),
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

fn times(n: u64) -> String {
    format!("{n} time{}", if n == 1 { "" } else { "s" })
}

fn ser_secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn ser_opt_secs<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    d.map(|d| d.as_secs_f64()).serialize(s)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{State::*, *};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }
    fn engine() -> Engine<u8> {
        Engine::new(Thresholds::default())
    }
    fn st(e: &Engine<u8>, k: u8) -> Option<State> {
        e.get(&k).map(|t| t.state)
    }
    fn secs(o: Outcome) -> f64 {
        o.seconds()
    }

    #[test]
    fn cold_start_is_one_episode_with_exact_duration() {
        let mut e = engine();
        (0..=16).for_each(|i| e.refused(&1, ms(i * 300), 1));
        e.tick(ms(4900));
        assert_eq!((st(&e, 1), e.watched().collect()), (Some(Refusing), vec![&1]));
        assert_eq!(e.succeeded(&1, ms(5000), 1), Some(Outcome::ColdStart { seconds: 5.0 }));
        assert_eq!(e.succeeded(&1, ms(6000), 3), None, "no open episode");
        let t = e.get(&1).expect("target");
        let ep = &t.history[0];
        assert_eq!((ep.started, ep.ended, ep.refused), (ms(0), Some(ms(5000)), 17));
        let counts = (t.state, t.episodes_total, t.cold_starts, t.recoveries);
        assert_eq!(
            (counts, t.last_success, e.watched().count()),
            ((State::Ok, 1, 1, 0), Some(ms(6000)), 0)
        );
    }

    #[test]
    fn a_client_that_gave_up_ends_its_episode_at_its_last_refusal() {
        let mut e = engine();
        for at in [0, 1000, 3000] {
            e.refused(&1, ms(at), 1);
        }
        let ep = e.open().next().map(|(_, ep)| ep.clone()).expect("open");
        assert_eq!((ep.last, ep.longest_gap), (s(3), s(2)));
        let o = e.gave_up(&1, s(10), s(6), true);
        assert_eq!(
            o,
            Some(Outcome::GaveUp {
                retried: 3.0,
                boot: 6.0,
                listening: true
            })
        );
        assert_eq!(e.gave_up(&1, s(11), s(6), true), None, "no open episode");
        let t = e.get(&1).unwrap();
        assert_eq!((t.state, t.gave_ups, t.history[0].ended), (State::Ok, 1, Some(s(3))));
        assert_eq!(
            e.explain(&1, s(10)).unwrap(),
            "accepting: the last episode (3 refused) ended 7s ago, its client stopped retrying after 3s, 3s before \
             the target began accepting"
        );
    }

    #[test]
    fn persistent_exactly_at_the_threshold() {
        let mut e = engine();
        [0, 60, 120, 179].into_iter().for_each(|at| e.refused(&1, s(at), 1));
        e.tick(s(180) - Duration::from_nanos(1));
        assert_eq!(st(&e, 1), Some(Refusing));
        e.tick(s(180));
        assert_eq!(st(&e, 1), Some(Persistent));
        e.refused(&2, s(0), 2);
        e.refused(&2, s(180), 1);
        assert_eq!(st(&e, 2), Some(Persistent), "a refusal's time counts as now");
        e.refused(&3, s(0), 1);
        e.refused(&3, s(300), 1);
        (1..=10).for_each(|m| e.tick(s(m * 60)));
        assert_eq!(st(&e, 3), Some(Refusing), "fewer than min_attempts over 10 min");
        assert_eq!(e.succeeded(&3, s(600), 1), Some(Outcome::Recovered { seconds: 600.0 }));
    }

    #[test]
    fn recovered() {
        let mut e = engine();
        e.refused(&1, s(0), 5);
        e.tick(s(190));
        assert_eq!(st(&e, 1), Some(Persistent));
        assert_eq!(e.succeeded(&1, s(200), 1), Some(Outcome::Recovered { seconds: 200.0 }));
        let t = e.get(&1).expect("target");
        assert_eq!((t.state, t.cold_starts, t.recoveries), (State::Ok, 0, 1));
        // Persistence is judged at the success, without waiting for a tick.
        e.refused(&2, s(0), 3);
        assert_eq!(e.succeeded(&2, s(180), 1), Some(Outcome::Recovered { seconds: 180.0 }));
        e.refused(&3, s(0), 2);
        assert_eq!(e.succeeded(&3, s(180), 1), Some(Outcome::ColdStart { seconds: 180.0 }));
    }

    #[test]
    fn flapping_until_the_window_slides() {
        let mut e = engine();
        for (i, m) in [0, 5, 10].into_iter().enumerate() {
            e.refused(&1, s(m * 60), 2);
            assert_eq!(st(&e, 1), Some(if i == 2 { Flapping } else { Refusing }));
            assert!(e.succeeded(&1, s(m * 60 + 20), 1).is_some());
        }
        assert_eq!(st(&e, 1), Some(Flapping), "holds without an open episode");
        e.tick(s(15 * 60));
        assert_eq!(st(&e, 1), Some(Flapping), "the window includes its edge");
        e.tick(s(15 * 60) + ms(1));
        assert_eq!(st(&e, 1), Some(State::Ok));
    }

    #[test]
    fn forgets_idle_targets() {
        let mut e = engine();
        e.refused(&1, s(0), 1);
        e.succeeded(&1, s(5), 1);
        e.refused(&2, s(0), 9);
        e.refused(&3, s(3000), 1);
        e.tick(s(3605) - ms(1));
        assert_eq!(e.len(), 2, "2's persistent episode went idle at 1h");
        e.tick(s(3605));
        assert_eq!(e.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [3]);
        e.tick(s(10_000));
        assert!(e.is_empty());
    }

    #[test]
    fn bounded_history_and_disorder_saturates() {
        let mut e = engine();
        for i in 0..25 {
            e.refused(&1, s(i * 1000), 1);
            e.succeeded(&1, s(i * 1000 + 1), 1);
        }
        let t = e.get(&1).expect("target");
        assert_eq!((t.history.len(), t.history[0].started), (HISTORY, s(15_000)));
        e.refused(&2, s(10), 0);
        assert!(e.get(&2).is_none(), "n == 0 is a no-op");
        [10, 3].into_iter().for_each(|at| e.refused(&2, s(at), 1));
        e.tick(s(1));
        assert_eq!(e.succeeded(&2, s(5), 1), Some(Outcome::ColdStart { seconds: 0.0 }));
        let t = e.get(&2).expect("target");
        let times = (t.first_refusal, t.last_refusal, t.history[0].ended);
        assert_eq!(times, (Some(s(3)), Some(s(10)), Some(s(10))));
    }

    #[test]
    fn explains_each_state() {
        let mut e = engine();
        let say = |e: &Engine<u8>, k, now| e.explain(&k, now).expect("known");
        e.refused(&1, s(0), 4);
        let want = "refused 4 times over 45s and not accepted yet: probably still starting, persistent if it lasts 3m \
                    with 3 or more attempts";
        assert_eq!(say(&e, 1, s(45)), want);
        e.tick(s(192));
        let want = "refused 4 times over 3m12s and never accepted: persistent misconfiguration (wrong port, service \
                    not started, or bound elsewhere)";
        assert_eq!(say(&e, 1, s(192)), want);
        e.succeeded(&1, s(200), 1);
        let want = "accepting: the last episode (4 refused) ended 2m ago, recovered after 3m20s of refusals";
        assert_eq!(say(&e, 1, s(320)), want);
        e.refused(&2, s(0), 1);
        e.succeeded(&2, ms(4500), 1);
        let want = "accepting: the last episode (1 refused) ended 1h2m ago, a cold start that took 4s";
        assert_eq!(say(&e, 2, s(3725)), want);
        for at in [0, 60, 120, 150] {
            e.refused(&3, s(at), 1);
            e.succeeded(&3, s(at + 5), u64::from(at < 150));
        }
        let want = "3 or more refusal episodes within 15m, refusing again for 30s: flapping, it listens, dies and \
                    listens again";
        assert_eq!(say(&e, 3, s(180)), want);
        e.succeeded(&4, s(1), 1);
        let want = "accepting, last success 850ms ago, no refusals seen";
        assert_eq!((say(&e, 4, ms(1850)), e.explain(&5, s(1))), (want.into(), None));
    }

    #[test]
    fn formats_durations_and_names_states() {
        let cases = [(850, "850ms"), (0, "0ms"), (45, "45s"), (192, "3m12s"), (180, "3m")];
        let long = [(3720, "1h2m"), (3659, "1h"), (90_000, "25h")];
        for (d, want) in cases.into_iter().chain(long) {
            let d = if want.ends_with("ms") { ms(d) } else { s(d) };
            assert_eq!(format_duration(d), want);
        }
        let names = [State::Ok, Refusing, Persistent, Flapping].map(State::name);
        assert_eq!(names, ["ok", "refusing", "persistent", "flapping"]);
    }

    /// Mostly steps that keep episodes and flapping going, some long enough to forget targets.
    fn steps() -> impl Strategy<Value = u64> {
        prop_oneof![15 => 0..5_000u64, 4 => 0..60_000u64, 1 => 0..700_000u64]
    }

    proptest! {
        /// Ops are (kind: 0 refused, 1 succeeded, 2 tick, 3 gave up; key; n; clock step in ms).
        #[test]
        fn invariants_hold(ops in prop::collection::vec((0..4u8, 0..3u8, 0..4u64, steps()), 0..200)) {
            let mut th = Thresholds::default();
            (th.cold_start_max, th.persistent_after, th.flap_window, th.forget_after) = (s(10), s(20), s(300), s(600));
            let mut e = Engine::new(th.clone());
            let mut starts: BTreeMap<u8, Vec<Duration>> = BTreeMap::new();
            let mut now = Duration::ZERO;
            for (kind, k, n, step) in ops {
                now += ms(step);
                if kind == 0 && n > 0 && e.get(&k).is_none_or(|t| t.open.is_none()) {
                    starts.entry(k).or_default().push(now);
                }
                match kind {
                    0 => e.refused(&k, now, n),
                    1 => prop_assert!(e.succeeded(&k, now, n).is_none_or(|o| secs(o) >= 0.0)),
                    3 => prop_assert!(e.gave_up(&k, now, now, n % 2 == 0).is_none_or(|o| secs(o) >= 0.0)),
                    2 => {
                        e.tick(now);
                        starts.retain(|k, _| e.get(k).is_some());
                        for (k, t) in e.iter() {
                            let recent = starts.get(k).map_or(0, |v| v.iter().filter(|&&x| now - x <= s(300)).count());
                            prop_assert_eq!(t.state == Flapping, recent >= 3);
                            if let (Some(ep), false) = (&t.open, t.state == Flapping) {
                                let due = ep.refused >= 3 && now - ep.started >= s(20);
                                prop_assert_eq!(t.state, if due { Persistent } else { Refusing });
                            }
                        }
                    }
                    _ => unreachable!(),
                }
                for (k, t) in e.iter() {
                    prop_assert_eq!(
                        t.cold_starts + t.recoveries + t.gave_ups + u64::from(t.open.is_some()),
                        t.episodes_total
                    );
                    prop_assert!(t.history.len() <= HISTORY && t.starts.len() <= 3);
                    prop_assert_eq!(e.watched().any(|w| w == k), t.open.is_some());
                    let open_ok = |o: &Episode| o.refused > 0 && o.ended.is_none() && o.outcome.is_none();
                    prop_assert!(t.open.as_ref().is_none_or(open_ok));
                    prop_assert!(t.state != State::Ok || t.open.is_none());
                    for ep in &t.history {
                        let ended = ep.ended.unwrap_or_default();
                        let exact = ep.outcome.is_some_and(|o| secs(o) == (ended - ep.started).as_secs_f64());
                        prop_assert!(ep.ended.is_some() && ended >= ep.started && exact, "{:?}", ep);
                    }
                }
            }
            let last = e.iter().filter_map(|(_, t)| t.last_activity()).max().unwrap_or_default();
            e.tick(last.max(now) + th.forget_after);
            prop_assert!(e.is_empty());
        }
    }
}
