//! Who listens where, and why nothing listens any more: per network namespace and port, the
//! listeners now and the last few that went away (when, how: exited with a code, killed by a
//! signal, OOM-killed, closed while the process lived on; and whether a RST had just arrived).
//! Fed by the kernel's listener events and, for what existed before the agent, by a seed; asked
//! about a refused connection, it gives a [`Finding`]. Pure and clock-injected.
use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::SocketAddr,
    time::Duration,
};

use serde::Serialize;

use crate::{
    analyse::{
        diagnosis::{self, Diagnosis},
        verdict::format_duration,
    },
    collect::{
        labels::Label,
        listening::{Ending, ListenerEvent, Process, Seed, signal_name},
        sockdiag::canonical,
        workload::Workload,
    },
};

/// Listeners lost kept per namespace and port, newest last.
pub const HISTORY: usize = 8;
/// Namespace and port pairs with a history, at most; past it the stalest go, counted.
const MAX_PORTS: usize = 16_384;
/// A SIGKILL this soon after the OOM killer chose the process is its kill.
const OOM_WINDOW: Duration = Duration::from_secs(30);
/// A process that dies this soon after a RST on one of its connections likely died of it.
const AFTER_RESET: Duration = Duration::from_secs(1);
/// Sockets one process loses on one port this close together (IPv4 and IPv6, SO_REUSEPORT)
/// are one loss.
const SAME_LOSS: Duration = Duration::from_secs(1);
/// OOM victims remembered.
const OOM_VICTIMS: usize = 64;
/// A socket its own process closes this soon after listen(2) never served: a listen that
/// failed (EADDRINUSE), or a program probing for a free port.
const NEVER_SERVED: Duration = Duration::from_millis(10);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub local: SocketAddr,
    pub owner: Option<Process>,
    /// When it started listening; `None`: before the agent started.
    pub since: Option<Duration>,
}

/// Why a listener went away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum Cause {
    Exited {
        code: u8,
    },
    Killed {
        signal: u8,
    },
    OomKilled,
    /// Closed while its process lived on.
    Closed,
}

impl Cause {
    /// The `cause` label value.
    pub fn name(self) -> &'static str {
        match self {
            Cause::Exited { .. } => "exited",
            Cause::Killed { .. } => "killed",
            Cause::OomKilled => "oom_killed",
            Cause::Closed => "closed",
        }
    }

    pub fn diagnosis(self) -> Diagnosis {
        match self {
            Cause::Exited { .. } => Diagnosis::ListenerExited,
            Cause::Killed { .. } | Cause::OomKilled => Diagnosis::ListenerKilled,
            Cause::Closed => Diagnosis::ListenerClosed,
        }
    }

    /// "exited with code 3", "was killed by SIGKILL (OOM)", …
    pub fn describe(self) -> String {
        match self {
            Cause::Exited { code } => format!("exited with code {code}"),
            Cause::Killed { signal } => format!("was killed by {}", signal_name(signal)),
            Cause::OomKilled => "was killed by SIGKILL (OOM)".into(),
            Cause::Closed => "closed it and kept running".into(),
        }
    }
}

/// The RST a process received just before it died.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetBefore {
    pub gap: Duration,
    pub peer: SocketAddr,
}

/// A listener that went away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lost {
    pub listener: Listener,
    pub until: Duration,
    pub cause: Cause,
    /// The task that dropped it (another process than the owner when the socket was shared).
    pub by: Process,
    pub after_reset: Option<ResetBefore>,
}

impl Lost {
    /// Who listened, as a person reads it: `myapp (pid 412, service:myapp.service)`.
    pub fn who(&self) -> String {
        let p = self.listener.owner.as_ref().unwrap_or(&self.by);
        format!("{} (pid {}, {})", p.comm, p.tgid, p.workload)
    }

    /// "myapp (pid 412, …) was killed by SIGKILL (OOM)", with the reset it likely died of.
    pub fn sentence(&self) -> String {
        let mut s = format!("its listener {} {}", self.who(), self.cause.describe());
        if let Some(r) = self.after_reset {
            s.push_str(&format!(
                ", {} after a connection reset from {}: an unhandled ECONNRESET?",
                format_duration(r.gap),
                r.peer
            ));
        }
        s
    }
}

/// A `refusal_listener_lost_total` label set.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LossKey {
    pub workload: Workload,
    pub comm: Label,
    pub port: u16,
    pub cause: &'static str,
    pub after_reset: bool,
}

/// What the listeners say about a refused connection to a local address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding<'a> {
    /// A listener would accept it now: the refusal was transient (one came up since, a full
    /// backlog).
    Accepting,
    /// Listeners on the port, on other addresses (`LoopbackOnly`, `WrongAddress`).
    Elsewhere(Diagnosis, Vec<SocketAddr>),
    /// Nothing listens; the last listener went away like this.
    Lost(&'a Lost),
    /// Nothing has listened there since the agent started, nor when it did.
    NeverListened { since: Duration },
    /// Nothing listens, and what listened before is not known.
    NotListening,
    /// This namespace's listeners cannot be known: no guess.
    Unknown,
}

impl Finding<'_> {
    pub fn diagnosis(&self) -> Option<Diagnosis> {
        match self {
            Finding::Accepting | Finding::Unknown => None,
            Finding::Elsewhere(d, _) => Some(*d),
            Finding::Lost(l) => Some(l.cause.diagnosis()),
            Finding::NeverListened { .. } => Some(Diagnosis::NeverListened),
            Finding::NotListening => Some(Diagnosis::NotListening),
        }
    }

    /// One sentence for a refusal to `local`; `now` and the agent's start are monotonic,
    /// `clock` turns them into times of day.
    pub fn sentence(&self, local: SocketAddr, now: Duration, clock: &impl Fn(Duration) -> String) -> String {
        match self {
            Finding::Accepting => format!("a listener accepts connections to {local} now: the refusal was transient"),
            Finding::Elsewhere(d, listeners) => d.explain(local, listeners),
            Finding::Lost(l) => format!("since {}, when {}", clock(l.until), l.sentence()),
            Finding::NeverListened { since } => format!(
                "nothing has listened on {} since the agent started {} ago: was it ever started?",
                local.port(),
                format_duration(now.saturating_sub(*since))
            ),
            Finding::NotListening => Diagnosis::NotListening.explain(local, &[]),
            Finding::Unknown => "this network namespace's listeners could not be listed, so the refusal is not \
                                 diagnosed"
                .into(),
        }
    }
}

pub struct Book {
    /// When the agent started (monotonic).
    started: Duration,
    own: u32,
    /// Applied after the first events (which may stop a listener the seed would still show).
    seed: Option<Seed>,
    /// Every namespace that existed at start was found: others are younger than the agent.
    complete: bool,
    at_start: HashSet<u32>,
    /// Namespaces whose listeners are known, and since when (the agent's start: all of it).
    known_since: HashMap<u32, Duration>,
    current: HashMap<(u32, u16), Vec<Listener>>,
    history: HashMap<(u32, u16), VecDeque<Lost>>,
    oom: VecDeque<(Duration, u32, u32)>,
    losses: BTreeMap<LossKey, u64>,
    /// The last loss counted per namespace, port and process, with its cause.
    last_loss: HashMap<(u32, u16, u32), (Duration, Cause)>,
    /// Listener events the kernel could not deliver (its ring was full), as last seen.
    dropped: u64,
    /// Histories dropped past [`MAX_PORTS`].
    evicted: u64,
    resync: bool,
}

impl Book {
    pub fn new(started: Duration, seed: Seed) -> Book {
        Book {
            started,
            own: seed.own,
            complete: false,
            at_start: HashSet::new(),
            known_since: HashMap::new(),
            seed: Some(seed),
            current: HashMap::new(),
            history: HashMap::new(),
            oom: VecDeque::new(),
            losses: BTreeMap::new(),
            last_loss: HashMap::new(),
            dropped: 0,
            evicted: 0,
            resync: false,
        }
    }

    /// The namespace a kernel value names: 0 (unknown) is taken as the agent's own.
    fn ns(&self, netns: u32) -> u32 {
        if netns == 0 { self.own } else { netns }
    }

    /// Applies the kernel's events in order, then (the first time) the seed. `dropped` is the
    /// kernel's count of events it could not deliver.
    pub fn apply(&mut self, events: &[ListenerEvent], dropped: u64) {
        for ev in events {
            match ev {
                // listen(2) on an unbound socket: the port is chosen after the event. A client
                // cannot know it; its stop names it.
                ListenerEvent::Started { local, .. } | ListenerEvent::Stopped { local, .. } if local.port() == 0 => {}
                ListenerEvent::Started {
                    at,
                    netns,
                    local,
                    owner,
                } => {
                    let key = (self.ns(*netns), local.port());
                    self.current.entry(key).or_default().push(Listener {
                        local: canonical(*local),
                        owner: Some(owner.clone()),
                        since: Some(*at),
                    });
                }
                ListenerEvent::Stopped {
                    at,
                    netns,
                    local,
                    by,
                    pid,
                    ending,
                    last_reset,
                } => {
                    let ns = self.ns(*netns);
                    self.stopped(ns, canonical(*local), *at, by, *pid, *ending, *last_reset);
                }
                ListenerEvent::OomVictim { at, tgid, pid } => {
                    self.oom.push_back((*at, *tgid, *pid));
                    self.oom.drain(..self.oom.len().saturating_sub(OOM_VICTIMS));
                }
            }
        }
        if let Some(seed) = self.seed.take() {
            self.seeded(seed);
        }
        if dropped > self.dropped {
            // Starts or stops were missed: what is current may be wrong anywhere. The own
            // namespace is listed again; the others are no longer claimed to be known.
            self.dropped = dropped;
            self.known_since.clear();
            self.complete = false;
            self.resync = true;
        }
    }

    fn seeded(&mut self, seed: Seed) {
        self.complete = seed.complete;
        for (ns, listeners) in seed.namespaces {
            self.at_start.insert(ns);
            let Ok(listeners) = listeners else { continue };
            self.known_since.insert(ns, self.started);
            for s in listeners {
                let local = canonical(s.local);
                let now = self.current.entry((ns, local.port())).or_default();
                // Seen starting since the agent attached: the event knows more.
                if !now.iter().any(|l| l.local == local) {
                    now.push(Listener {
                        local,
                        owner: s.owner,
                        since: None,
                    });
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn stopped(
        &mut self,
        ns: u32,
        local: SocketAddr,
        at: Duration,
        by: &Process,
        pid: u32,
        ending: Ending,
        last_reset: Option<(Duration, SocketAddr)>,
    ) {
        let key = (ns, local.port());
        let listener = match self.current.get_mut(&key) {
            Some(now) => {
                // The closer's own socket first: SO_REUSEPORT groups share the address.
                let mine = |l: &Listener| l.local == local && l.owner.as_ref().is_some_and(|o| o.tgid == by.tgid);
                let i = now
                    .iter()
                    .position(mine)
                    .or_else(|| now.iter().position(|l| l.local == local));
                let found = i.map(|i| now.remove(i));
                if now.is_empty() {
                    self.current.remove(&key);
                }
                found
            }
            None => None,
        };
        let never_served = listener.as_ref().is_some_and(|l| {
            let own = l.owner.as_ref().is_some_and(|o| o.tgid == by.tgid);
            let quick = l.since.is_some_and(|t| at.saturating_sub(t) < NEVER_SERVED);
            own && quick && ending == Ending::Alive
        });
        if never_served {
            return;
        }
        let listener = listener.unwrap_or(Listener {
            local,
            owner: None,
            since: None,
        });
        let oom = |&(t, tgid, victim): &(Duration, u32, u32)| {
            at.saturating_sub(t) <= OOM_WINDOW && (tgid == by.tgid || victim == by.tgid || victim == pid)
        };
        let cause = match ending {
            Ending::Alive => Cause::Closed,
            Ending::Exited { code } => Cause::Exited { code },
            Ending::Signaled { signal: 9, .. } if self.oom.iter().any(oom) => Cause::OomKilled,
            Ending::Signaled { signal, .. } => Cause::Killed { signal },
        };
        let after_reset = last_reset
            .filter(|_| cause != Cause::Closed)
            .map(|(t, peer)| ResetBefore {
                gap: at.saturating_sub(t),
                peer,
            })
            .filter(|r| r.gap <= AFTER_RESET);
        let owner = listener.owner.clone().unwrap_or_else(|| by.clone());
        let lost = Lost {
            listener,
            until: at,
            cause,
            by: by.clone(),
            after_reset,
        };
        let same = self
            .last_loss
            .get(&(ns, key.1, owner.tgid))
            .is_some_and(|(t, c)| *c == cause && at.saturating_sub(*t) <= SAME_LOSS);
        if !same {
            let loss = LossKey {
                workload: owner.workload.clone(),
                comm: owner.comm.clone(),
                port: key.1,
                cause: cause.name(),
                after_reset: after_reset.is_some(),
            };
            *self.losses.entry(loss).or_default() += 1;
            self.last_loss.insert((ns, key.1, owner.tgid), (at, cause));
        }
        let history = self.history.entry(key).or_default();
        history.push_back(lost);
        history.drain(..history.len().saturating_sub(HISTORY));
        if self.history.len() > MAX_PORTS {
            self.evict();
        }
    }

    /// Drops the stalest history past [`MAX_PORTS`]: a flood of ports cannot grow memory.
    fn evict(&mut self) {
        let newest = |h: &VecDeque<Lost>| h.back().map_or(Duration::ZERO, |l| l.until);
        if let Some(key) = self.history.iter().min_by_key(|(_, h)| newest(h)).map(|(k, _)| *k) {
            self.history.remove(&key);
            self.evicted += 1;
        }
    }

    /// Whether the agent's own namespace should be listed again (events were lost).
    pub fn resync_due(&self) -> bool {
        self.resync
    }

    /// The own namespace's listeners as just listed at `now` (`None`: the listing failed).
    pub fn listed(&mut self, listed: Option<Vec<SocketAddr>>, now: Duration) {
        self.resync = false;
        let Some(listed) = listed else {
            self.known_since.remove(&self.own);
            return;
        };
        let own = self.own;
        let mut fresh: HashMap<(u32, u16), Vec<Listener>> = HashMap::new();
        for local in listed.into_iter().map(canonical) {
            let key = (own, local.port());
            let kept = self.current.get_mut(&key).and_then(|now| {
                let i = now.iter().position(|l| l.local == local)?;
                Some(now.remove(i))
            });
            fresh.entry(key).or_default().push(kept.unwrap_or(Listener {
                local,
                owner: None,
                since: None,
            }));
        }
        self.current.retain(|(ns, _), _| *ns != own);
        self.current.extend(fresh);
        self.known_since.entry(own).or_insert(now);
    }

    /// Since when this namespace's listeners are known: the agent's start when it has seen all
    /// of them; `None` when they are not known.
    fn known(&self, ns: u32) -> Option<Duration> {
        let young = self.complete && !self.at_start.contains(&ns);
        self.known_since.get(&ns).copied().or(young.then_some(self.started))
    }

    /// Whether the agent's own namespace's listeners are known.
    pub fn own_known(&self) -> bool {
        self.known(self.own).is_some()
    }

    /// What the listeners of namespace `netns` say about a refused connection to `local`.
    pub fn finding(&self, netns: u32, local: SocketAddr) -> Finding<'_> {
        let ns = self.ns(netns);
        let Some(since) = self.known(ns) else {
            return Finding::Unknown;
        };
        let key = (ns, local.port());
        let now: Vec<SocketAddr> = self.current.get(&key).into_iter().flatten().map(|l| l.local).collect();
        if !now.is_empty() {
            return match diagnosis::diagnose(local, &now) {
                Some(d) => Finding::Elsewhere(d, now),
                None => Finding::Accepting,
            };
        }
        match self.history.get(&key).and_then(VecDeque::back) {
            Some(lost) => Finding::Lost(lost),
            None if since == self.started => Finding::NeverListened { since },
            None => Finding::NotListening,
        }
    }

    /// The listeners lost on `port` of `netns`, newest last.
    pub fn history(&self, netns: u32, port: u16) -> impl Iterator<Item = &Lost> {
        self.history.get(&(self.ns(netns), port)).into_iter().flatten()
    }

    /// The listeners on `port` of `netns` now.
    pub fn listening(&self, netns: u32, port: u16) -> impl Iterator<Item = &Listener> {
        self.current.get(&(self.ns(netns), port)).into_iter().flatten()
    }

    /// Losses by label set, for `refusal_listener_lost_total`.
    pub fn losses(&self) -> impl Iterator<Item = (&LossKey, &u64)> {
        self.losses.iter()
    }

    /// Histories dropped past the bound.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Forgets the history of ports nothing listens on and nothing was lost on for `after`.
    pub fn forget(&mut self, now: Duration, after: Duration) {
        let current = &self.current;
        self.history.retain(|key, h| {
            current.contains_key(key) || h.back().is_some_and(|l| now.saturating_sub(l.until) < after)
        });
        self.last_loss.retain(|_, (t, _)| now.saturating_sub(*t) < after);
        self.oom.retain(|(t, _, _)| now.saturating_sub(*t) <= OOM_WINDOW);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::collect::listening::Seeded;

    const OWN: u32 = 4026531840;
    const OTHER: u32 = 4026532001;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn sa(a: &str) -> SocketAddr {
        a.parse().unwrap()
    }

    fn proc(tgid: u32, comm: &str) -> Process {
        Process {
            tgid,
            comm: comm.into(),
            workload: "service:app.service".into(),
        }
    }

    fn started(at: u64, netns: u32, local: &str, tgid: u32) -> ListenerEvent {
        ListenerEvent::Started {
            at: s(at),
            netns,
            local: sa(local),
            owner: proc(tgid, "app"),
        }
    }

    fn stopped(at: u64, netns: u32, local: &str, tgid: u32, ending: Ending) -> ListenerEvent {
        ListenerEvent::Stopped {
            at: s(at),
            netns,
            local: sa(local),
            by: proc(tgid, "app"),
            pid: tgid,
            ending,
            last_reset: None,
        }
    }

    fn seed(namespaces: Vec<(u32, Result<Vec<&str>, String>)>, complete: bool) -> Seed {
        Seed {
            own: OWN,
            namespaces: namespaces
                .into_iter()
                .map(|(ns, l)| {
                    let l = l.map(|l| {
                        l.into_iter()
                            .map(|a| Seeded {
                                local: sa(a),
                                owner: None,
                            })
                            .collect()
                    });
                    (ns, l)
                })
                .collect(),
            complete,
        }
    }

    fn book() -> Book {
        let mut b = Book::new(
            s(100),
            seed(vec![(OWN, Ok(vec!["0.0.0.0:22"])), (OTHER, Ok(vec![]))], true),
        );
        b.apply(&[], 0);
        b
    }

    fn diagnosis(b: &Book, netns: u32, local: &str) -> Option<&'static str> {
        b.finding(netns, sa(local)).diagnosis().map(Diagnosis::name)
    }

    #[test]
    fn each_ending_is_its_own_cause() {
        let mut b = book();
        let cases = [
            (
                8001,
                Ending::Signaled { signal: 9, core: false },
                "listener_killed",
                "was killed by SIGKILL",
            ),
            (
                8002,
                Ending::Signaled { signal: 11, core: true },
                "listener_killed",
                "was killed by SIGSEGV",
            ),
            (
                8003,
                Ending::Exited { code: 3 },
                "listener_exited",
                "exited with code 3",
            ),
            (8004, Ending::Alive, "listener_closed", "closed it and kept running"),
        ];
        for (port, ending, _, _) in cases {
            let local = format!("127.0.0.1:{port}");
            b.apply(&[started(110, OWN, &local, 7), stopped(120, OWN, &local, 7, ending)], 0);
        }
        for (port, _, want, says) in cases {
            let local = format!("127.0.0.1:{port}");
            assert_eq!(diagnosis(&b, OWN, &local), Some(want), "{port}");
            let Finding::Lost(lost) = b.finding(OWN, sa(&local)) else {
                panic!()
            };
            assert!(lost.sentence().ends_with(says), "{}", lost.sentence());
            assert_eq!(lost.listener.since, Some(s(110)));
        }
        let losses: Vec<_> = b.losses().map(|(k, n)| (k.port, k.cause, *n)).collect();
        assert_eq!(
            losses,
            [
                (8001, "killed", 1),
                (8002, "killed", 1),
                (8003, "exited", 1),
                (8004, "closed", 1)
            ]
        );
    }

    #[test]
    fn a_sigkill_after_the_oom_killer_chose_the_process_is_an_oom_kill() {
        let mut b = book();
        let kill = Ending::Signaled { signal: 9, core: false };
        b.apply(
            &[
                started(101, OWN, "0.0.0.0:9000", 50),
                ListenerEvent::OomVictim {
                    at: s(110),
                    tgid: 0,
                    pid: 50,
                },
                stopped(111, OWN, "0.0.0.0:9000", 50, kill),
                // The same signal from someone else, long after: a plain kill.
                started(150, OWN, "0.0.0.0:9001", 51),
                stopped(160, OWN, "0.0.0.0:9001", 51, kill),
            ],
            0,
        );
        let Finding::Lost(l) = b.finding(OWN, sa("10.0.0.1:9000")) else {
            panic!()
        };
        assert_eq!(l.cause, Cause::OomKilled);
        assert_eq!(
            l.sentence(),
            "its listener app (pid 50, service:app.service) was killed by SIGKILL (OOM)"
        );
        let Finding::Lost(l) = b.finding(OWN, sa("10.0.0.1:9001")) else {
            panic!()
        };
        assert_eq!(l.cause, Cause::Killed { signal: 9 });
    }

    #[test]
    fn a_death_right_after_a_reset_says_so_and_is_counted_apart() {
        let mut b = book();
        let ev = |at_ms: u64, reset_ms: u64| ListenerEvent::Stopped {
            at: Duration::from_millis(at_ms),
            netns: OWN,
            local: sa("0.0.0.0:3000"),
            by: proc(88, "node"),
            pid: 88,
            ending: Ending::Exited { code: 1 },
            last_reset: Some((Duration::from_millis(reset_ms), sa("10.0.0.7:443"))),
        };
        b.apply(&[started(101, OWN, "0.0.0.0:3000", 88), ev(105_040, 105_000)], 0);
        let Finding::Lost(l) = b.finding(OWN, sa("127.0.0.1:3000")) else {
            panic!()
        };
        assert_eq!(
            l.sentence(),
            "its listener app (pid 88, service:app.service) exited with code 1, 40ms after a connection reset \
             from 10.0.0.7:443: an unhandled ECONNRESET?"
        );
        // A reset long before the exit is not its cause.
        b.apply(&[started(200, OWN, "0.0.0.0:3000", 89), ev(300_000, 250_000)], 0);
        let keys: Vec<_> = b.losses().map(|(k, n)| (k.cause, k.after_reset, *n)).collect();
        assert_eq!(keys, [("exited", false, 1), ("exited", true, 1)]);
    }

    #[test]
    fn never_listened_only_where_every_listener_was_seen() {
        let mut b = Book::new(
            s(100),
            seed(
                vec![(OWN, Ok(vec!["127.0.0.1:5432"])), (OTHER, Err("setns: EPERM".into()))],
                true,
            ),
        );
        b.apply(&[], 0);
        assert_eq!(diagnosis(&b, OWN, "127.0.0.1:8080"), Some("never_listened"));
        assert_eq!(
            b.finding(OWN, sa("127.0.0.1:8080"))
                .sentence(sa("127.0.0.1:8080"), s(100 + 3 * 3600), &|_| String::new()),
            "nothing has listened on 8080 since the agent started 3h ago: was it ever started?"
        );
        // Seeded before: a listener is there.
        assert_eq!(b.finding(OWN, sa("127.0.0.1:5432")), Finding::Accepting);
        assert_eq!(diagnosis(&b, OWN, "10.0.0.1:5432"), Some("loopback_only"));
        // A namespace that could not be listed at start: no guess.
        assert_eq!(b.finding(OTHER, sa("10.0.0.2:80")), Finding::Unknown);
        // One born after the agent: every listener of it was seen.
        assert_eq!(diagnosis(&b, 4026532999, "10.0.0.3:80"), Some("never_listened"));
        // Lost events: nothing is claimed never to have listened any more.
        b.apply(&[], 3);
        assert!(b.resync_due());
        assert_eq!(b.finding(4026532999, sa("10.0.0.3:80")), Finding::Unknown);
        b.listed(Some(vec![sa("127.0.0.1:5432")]), s(200));
        assert!(!b.resync_due());
        assert_eq!(diagnosis(&b, OWN, "127.0.0.1:8080"), Some("not_listening"));
    }

    #[test]
    fn seeded_listeners_that_stop_before_the_seed_is_applied_are_not_resurrected() {
        let mut b = Book::new(
            s(100),
            seed(vec![(OWN, Ok(vec!["0.0.0.0:7000", "0.0.0.0:7001"]))], true),
        );
        // 7001 started after attaching (the seed saw it too); 7002 stopped before the seed was
        // taken, though it listened before the agent.
        b.apply(
            &[
                started(101, OWN, "0.0.0.0:7001", 9),
                stopped(
                    102,
                    OWN,
                    "0.0.0.0:7002",
                    9,
                    Ending::Signaled {
                        signal: 15,
                        core: false,
                    },
                ),
            ],
            0,
        );
        let listening = |port| b.listening(OWN, port).map(|l| l.since).collect::<Vec<_>>();
        assert_eq!(listening(7000), [None]);
        assert_eq!(listening(7001), [Some(s(101))]);
        let Finding::Lost(l) = b.finding(OWN, sa("10.0.0.1:7002")) else {
            panic!()
        };
        assert_eq!((l.listener.since, l.cause), (None, Cause::Killed { signal: 15 }));
    }

    #[test]
    fn dual_stack_sockets_of_one_death_are_one_loss_and_namespaces_stay_apart() {
        let mut b = book();
        let kill = Ending::Signaled { signal: 9, core: false };
        b.apply(
            &[
                started(101, OTHER, "0.0.0.0:80", 5),
                started(101, OTHER, "[::]:80", 5),
                stopped(110, OTHER, "0.0.0.0:80", 5, kill),
                stopped(110, OTHER, "[::]:80", 5, kill),
            ],
            0,
        );
        assert_eq!(b.losses().map(|(_, n)| *n).sum::<u64>(), 1);
        assert_eq!(b.history(OTHER, 80).count(), 2);
        assert_eq!(diagnosis(&b, OTHER, "10.200.1.2:80"), Some("listener_killed"));
        // Port 80 of the own namespace never listened.
        assert_eq!(diagnosis(&b, OWN, "127.0.0.1:80"), Some("never_listened"));
    }

    #[test]
    fn failed_and_probing_listens_leave_no_history() {
        let mut b = book();
        let ms = Duration::from_millis;
        let started_at = |at, local: &str| ListenerEvent::Started {
            at,
            netns: OWN,
            local: sa(local),
            owner: proc(3, "probe"),
        };
        let stopped_at = |at, local: &str| ListenerEvent::Stopped {
            at,
            netns: OWN,
            local: sa(local),
            by: proc(3, "probe"),
            pid: 3,
            ending: Ending::Alive,
            last_reset: None,
        };
        b.apply(
            &[
                // EADDRINUSE: listen(2) failed at once.
                started_at(ms(101_000), "0.0.0.0:8080"),
                stopped_at(ms(101_001), "0.0.0.0:8080"),
                // An unbound socket: port 0 at the start.
                started_at(ms(102_000), "0.0.0.0:0"),
                stopped_at(ms(103_000), "0.0.0.0:0"),
            ],
            0,
        );
        assert_eq!(b.losses().count(), 0);
        assert_eq!(b.history(OWN, 8080).count(), 0);
        assert_eq!(b.listening(OWN, 0).count() + b.listening(OWN, 8080).count(), 0);
        assert_eq!(diagnosis(&b, OWN, "127.0.0.1:8080"), Some("never_listened"));
    }

    proptest! {
        /// Whatever the events, histories stay bounded and every loss is counted once per
        /// process death.
        #[test]
        fn histories_stay_bounded(events in proptest::collection::vec((0u16..40, 1u32..5, 0u8..4), 0..300)) {
            let mut b = book();
            let mut at = 100;
            let mut deaths = BTreeMap::new();
            for (port, tgid, how) in events {
                at += 2;
                let local = format!("0.0.0.0:{}", 9000 + port);
                let ending = match how {
                    0 => Ending::Alive,
                    1 => Ending::Exited { code: 1 },
                    _ => Ending::Signaled { signal: how, core: false },
                };
                b.apply(&[started(at, OWN, &local, tgid), stopped(at + 1, OWN, &local, tgid, ending)], 0);
                *deaths.entry(port).or_insert(0u64) += 1;
            }
            for port in deaths.keys() {
                prop_assert!(b.history(OWN, 9000 + port).count() <= HISTORY);
            }
            prop_assert_eq!(b.losses().map(|(_, n)| *n).sum::<u64>(), deaths.values().sum::<u64>());
        }
    }
}
