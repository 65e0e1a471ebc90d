//! Admission control: how many sagas this replica takes on at once, and
//! the answer (`429`, at once) to a new one past that.
//!
//! A saga is *in flight* here from the `POST` that starts it until it ends
//! or parks: it reaches a terminal state, or a state with no command out
//! (it waits for an outside event or a long timer), or a command of it
//! times out or finds no one to answer (it then waits on a participant,
//! not on this replica). The time that takes is the sample the limit
//! learns from.
//!
//! The limit follows the gradient of Envoy's adaptive concurrency filter
//! (the family of Netflix's concurrency-limits, which Zeebe's backpressure
//! builds on): every window of samples, `limit = limit × gradient +
//! √limit`, with `gradient = clamp(TOLERANCE × baseline / p90, 0.5, 2)`.
//! The baseline is the lowest window p90 of the last ten minutes among
//! windows that were *not* held at the gate (fewer sagas in flight than
//! the limit): what a saga takes when nothing queues in front of eso.
//! Latency may grow to `TOLERANCE` times that before the limit shrinks:
//! eso batches its commits, so some more latency under load buys a lot of
//! throughput, but past that point more sagas in flight only queue (for
//! the group commit, the database's connections, the participants). The
//! limit grows back only while the sagas in flight use most of it, so an
//! idle replica does not keep a limit it never tried. Under sustained
//! overload every window is held at the gate and the baseline is not
//! re-measured (it stays what it was, instead of drifting up with the
//! queue, the failure of baselines taken from loaded windows).
//!
//! [`Limiter`] decides, given samples and times; [`Admission`] holds the
//! counts and the tickets of the sagas in flight.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// A window closes after this long, once it holds [`WINDOW_SAMPLES`].
const WINDOW: Duration = Duration::from_millis(100);
const WINDOW_SAMPLES: usize = 16;
/// A window this old closes with whatever it holds (at light load).
const WINDOW_MAX: Duration = Duration::from_secs(1);
/// How long an unloaded window's p90 counts toward the baseline.
const BASELINE_HORIZON: Duration = Duration::from_secs(600);
/// How far above the baseline a window's p90 may go before the limit
/// shrinks (eso's latency at half its peak is about 3 to 4 times its
/// latency at one client: docs/benchmarks.md).
const TOLERANCE: f64 = 4.0;
/// The limit grows only while this share of it is in use.
const GROW_AT_UTILISATION: f64 = 0.8;
/// A ticket held this long is given back: its saga went on on another
/// replica (a timer taken over) or its step was lost with a crash.
pub const STALE_TICKET: Duration = Duration::from_secs(60);
/// `/readyz` says not ready for this long after a tick saw heavy
/// shedding, so a probe every few seconds sees it.
const SHEDDING_SHOWS_FOR: Duration = Duration::from_secs(5);
/// The share of requests refused between two ticks that is heavy shedding.
const HEAVY_SHEDDING: f64 = 0.1;

/// How the limit is set (`ESO_ADMISSION`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// Adapts between `min` and `max`, starting at `initial`.
    Adaptive { min: usize, initial: usize, max: usize },
    /// A hand-picked limit.
    Fixed(usize),
    /// Takes everything (the behaviour before admission control).
    Off,
}

impl Policy {
    pub const DEFAULT: Policy = Policy::Adaptive { min: 32, initial: 128, max: 4000 };
    const MAX: usize = 1_000_000;

    /// Whether a policy built in code (not parsed) holds together.
    pub fn check(&self) -> Result<(), String> {
        match *self {
            Policy::Adaptive { min, initial, max } if min == 0 || min > max || !(min..=max).contains(&initial) || max > Self::MAX => {
                Err(format!("the adaptive limit needs 1 ≤ least ≤ initial ≤ largest ≤ {}, not {min}, {initial}, {max}", Self::MAX))
            }
            Policy::Fixed(n) if n == 0 || n > Self::MAX => Err(format!("the limit must be 1 to {}, not {n}", Self::MAX)),
            _ => Ok(()),
        }
    }

    /// `adaptive`, `adaptive:MIN..MAX`, `fixed:N` or `off`.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let usage = "expected `adaptive`, `adaptive:MIN..MAX` (e.g. adaptive:32..4000), `fixed:N` or `off`";
        let number = |s: &str, what: &str| -> Result<usize, String> {
            let n: usize = s.trim().parse().map_err(|_| format!("{what} {s:?} is not a whole number; {usage}"))?;
            if n == 0 || n > Self::MAX {
                return Err(format!("{what} must be 1 to {}, not {n}", Self::MAX));
            }
            Ok(n)
        };
        match text.trim().split_once(':') {
            None if text.trim() == "adaptive" => Ok(Self::DEFAULT),
            None if text.trim() == "off" => Ok(Policy::Off),
            Some(("fixed", n)) => Ok(Policy::Fixed(number(n, "the limit")?)),
            Some(("adaptive", range)) => {
                let (min, max) = range.split_once("..").ok_or_else(|| format!("{range:?} is not a range MIN..MAX; {usage}"))?;
                let (min, max) = (number(min, "the least limit")?, number(max, "the largest limit")?);
                if min > max {
                    return Err(format!("the least limit {min} is above the largest {max}"));
                }
                Ok(Policy::Adaptive { min, initial: 128.clamp(min, max), max })
            }
            _ => Err(format!("{text:?}: {usage}")),
        }
    }
}

/// The adaptive limit, pure: samples and times in, the limit out.
#[derive(Debug)]
pub struct Limiter {
    min: f64,
    max: f64,
    limit: f64,
    window: Vec<Duration>,
    window_started: Instant,
    /// The most sagas in flight seen in this window.
    window_peak: usize,
    /// The p90 of each closed window that was not held at the gate.
    history: VecDeque<(Instant, Duration)>,
    /// The baseline when `history` is empty: the last one known.
    last_baseline: Option<Duration>,
    /// The gate's count of refusals when this window began.
    window_refused: u64,
}

impl Limiter {
    pub fn new(min: usize, initial: usize, max: usize, now: Instant) -> Limiter {
        Limiter {
            min: min as f64,
            max: max as f64,
            limit: initial.clamp(min, max) as f64,
            window: Vec::with_capacity(WINDOW_SAMPLES * 4),
            window_started: now,
            window_peak: 0,
            history: VecDeque::new(),
            last_baseline: None,
            window_refused: 0,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// What a saga takes when nothing queues at the gate: the lowest p90
    /// of the recent windows that were not held there.
    pub fn baseline(&self) -> Option<Duration> {
        self.history.iter().map(|(_, p90)| *p90).min().or(self.last_baseline)
    }

    /// A saga was in flight for `latency`, with `in_flight` (itself
    /// included) beside it, when the gate had refused `refused` requests
    /// in all. A window that closes updates the limit, which is returned.
    pub fn sample(&mut self, latency: Duration, in_flight: usize, refused: u64, now: Instant) -> Option<usize> {
        self.window.push(latency);
        self.window_peak = self.window_peak.max(in_flight);
        let age = now.saturating_duration_since(self.window_started);
        if !(age >= WINDOW_MAX || (age >= WINDOW && self.window.len() >= WINDOW_SAMPLES)) {
            return None;
        }
        self.window.sort_unstable();
        let p90 = self.window[(self.window.len() * 9).div_ceil(10).saturating_sub(1)];
        while self.history.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) > BASELINE_HORIZON) {
            self.history.pop_front();
        }
        // A window in which the gate turned someone away measures the
        // queue as well as eso: it does not count toward the baseline.
        let held = refused > self.window_refused;
        if !held {
            self.history.push_back((now, p90));
        }
        // A replica that starts under overload has no baseline yet: it
        // keeps its limit until a window that was not held gives one.
        if let Some(baseline) = self.baseline() {
            self.last_baseline = Some(baseline);
            let gradient = (TOLERANCE * baseline.as_secs_f64() / p90.as_secs_f64().max(1e-6)).clamp(0.5, 2.0);
            let used = self.window_peak as f64 >= GROW_AT_UTILISATION * self.limit;
            // Latency says "more would fit", but the sagas in flight did
            // not use the limit: it stays, rather than grow to a size never tried.
            if gradient < 1.0 || used {
                let next = self.limit * gradient;
                self.limit = (next + next.sqrt()).clamp(self.min, self.max);
            }
        }
        self.window.clear();
        self.window_started = now;
        self.window_peak = in_flight;
        self.window_refused = refused;
        Some(self.limit())
    }
}

/// One saga's place in flight; given back when dropped.
#[derive(Debug)]
pub struct Ticket {
    in_flight: Arc<AtomicUsize>,
    taken: Instant,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// At the limit: `limit` sagas in flight.
    Full { limit: usize },
}

/// This replica's gate for new work, and the tickets of what it admitted.
pub struct Admission {
    policy: Policy,
    in_flight: Arc<AtomicUsize>,
    limit: AtomicUsize,
    limiter: Mutex<Option<Limiter>>,
    /// Tickets of sagas started here, until they end or park.
    held: Mutex<HashMap<Uuid, Ticket>>,
    /// Requests admitted and refused since the start.
    admitted: AtomicU64,
    refused: AtomicU64,
    /// What [`Admission::tick`] last saw, and when shedding was last heavy.
    ticked: Mutex<Tick>,
}

#[derive(Default)]
struct Tick {
    admitted: u64,
    refused: u64,
    heavy_at: Option<Instant>,
}

impl Admission {
    pub fn new(policy: Policy) -> Admission {
        let (limit, limiter) = match policy {
            Policy::Adaptive { min, initial, max } => (initial, Some(Limiter::new(min, initial, max, Instant::now()))),
            Policy::Fixed(n) => (n, None),
            Policy::Off => (usize::MAX, None),
        };
        Admission {
            policy,
            in_flight: Arc::default(),
            limit: AtomicUsize::new(limit),
            limiter: Mutex::new(limiter),
            held: Mutex::default(),
            admitted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            ticked: Mutex::default(),
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// A place for one more saga (or outside event), or why not.
    pub fn try_admit(&self) -> Result<Ticket, Refusal> {
        let limit = self.limit.load(Ordering::Acquire);
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let ticket = Ticket { in_flight: self.in_flight.clone(), taken: Instant::now() };
        if before >= limit {
            drop(ticket);
            self.refused.fetch_add(1, Ordering::AcqRel);
            return Err(Refusal::Full { limit });
        }
        self.admitted.fetch_add(1, Ordering::AcqRel);
        Ok(ticket)
    }

    /// Whether a request would be refused now: the gate's cheap first
    /// look, before a request's body is read (the place itself is taken
    /// once it is, by [`Admission::try_admit`]).
    pub fn full(&self) -> bool {
        let full = self.in_flight.load(Ordering::Acquire) >= self.limit.load(Ordering::Acquire);
        if full {
            self.refused.fetch_add(1, Ordering::AcqRel);
        }
        full
    }

    /// Saga `id` started with `ticket`: it is in flight until [`Admission::settle`].
    pub fn hold(&self, id: Uuid, ticket: Ticket) {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).insert(id, ticket);
    }

    /// Saga `id` ended or parked; with `learn`, its time in flight is a
    /// sample of what this replica sustains (not when a timeout ended it:
    /// that measures a participant, not us).
    pub fn settle(&self, id: Uuid, learn: bool) {
        let Some(ticket) = self.held.lock().unwrap_or_else(PoisonError::into_inner).remove(&id) else { return };
        let latency = ticket.taken.elapsed();
        // Read with this saga still counted: the peak a window saw can
        // then reach the limit, as the gate saw it.
        let in_flight = self.in_flight.load(Ordering::Acquire);
        drop(ticket);
        if !learn {
            return;
        }
        let refused = self.refused.load(Ordering::Acquire);
        let mut limiter = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(limiter) = limiter.as_mut()
            && let Some(limit) = limiter.sample(latency, in_flight, refused, Instant::now())
        {
            self.limit.store(limit, Ordering::Release);
        }
    }

    /// Once a second or so: gives back tickets held past [`STALE_TICKET`],
    /// and notes whether the gate refused a real share of the requests
    /// since the last tick (for `/readyz`).
    pub fn tick(&self) {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).retain(|_, t| t.taken.elapsed() < STALE_TICKET);
        let (admitted, refused) = (self.admitted.load(Ordering::Acquire), self.refused.load(Ordering::Acquire));
        let mut last = self.ticked.lock().unwrap_or_else(PoisonError::into_inner);
        let (new_admitted, new_refused) = (admitted.saturating_sub(last.admitted), refused.saturating_sub(last.refused));
        if new_refused > 0 && new_refused as f64 >= HEAVY_SHEDDING * (new_admitted + new_refused) as f64 {
            last.heavy_at = Some(Instant::now());
        }
        (last.admitted, last.refused) = (admitted, refused);
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The saga time the limit measures latency against ([`Limiter::baseline`]).
    pub fn baseline(&self) -> Option<Duration> {
        self.limiter.lock().unwrap_or_else(PoisonError::into_inner).as_ref().and_then(Limiter::baseline)
    }

    /// Whether the gate refused a real share of its requests in the last
    /// few seconds (not one refusal: a replica at half its peak sheds a
    /// few, and would flap out of its load balancer).
    pub fn shedding(&self) -> bool {
        self.ticked.lock().unwrap_or_else(PoisonError::into_inner).heavy_at.is_some_and(|at| at.elapsed() < SHEDDING_SHOWS_FOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds `windows` full windows of `latency` at `in_flight`, the gate
    /// refusing someone in each when `held`; returns the limit.
    struct Feed {
        limiter: Limiter,
        now: Instant,
        refused: u64,
    }

    impl Feed {
        fn new(min: usize, initial: usize, max: usize) -> Feed {
            let now = Instant::now();
            Feed { limiter: Limiter::new(min, initial, max, now), now, refused: 0 }
        }

        fn windows(&mut self, n: usize, latency: Duration, in_flight: usize, held: bool) -> usize {
            for _ in 0..n {
                for _ in 0..WINDOW_SAMPLES {
                    self.limiter.sample(latency, in_flight, self.refused, self.now);
                }
                if held {
                    self.refused += 1;
                }
                self.now += WINDOW;
                self.limiter.sample(latency, in_flight, self.refused, self.now);
            }
            self.limiter.limit()
        }
    }

    #[test]
    fn latency_within_its_tolerance_lets_a_used_limit_grow() {
        let mut feed = Feed::new(16, 64, 2000);
        feed.windows(1, 5 * MS, 10, false);
        let grown = feed.windows(3, 15 * MS, 60, false);
        assert!(grown > 64, "{grown}");
    }

    #[test]
    fn an_unused_limit_does_not_grow() {
        let mut feed = Feed::new(16, 64, 2000);
        assert_eq!(feed.windows(10, 20 * MS, 5, false), 64);
    }

    #[test]
    fn queueing_past_its_tolerance_shrinks_the_limit_to_its_floor_and_no_further() {
        let mut feed = Feed::new(16, 64, 2000);
        feed.windows(5, 20 * MS, 40, false);
        let before = feed.limiter.limit();
        let after = feed.windows(1, 200 * MS, before, true);
        assert!(after < before, "{after} < {before}");
        assert_eq!(feed.windows(30, 200 * MS, 16, true), 16);
    }

    #[test]
    fn windows_held_at_the_gate_do_not_move_the_baseline() {
        let mut feed = Feed::new(16, 64, 2000);
        feed.windows(1, 10 * MS, 8, false);
        // Sustained overload: someone refused in every window, latency up,
        // the sagas in flight one short of the limit as `settle` sees them.
        for _ in 0..50 {
            let limit = feed.limiter.limit();
            feed.windows(1, 300 * MS, limit.saturating_sub(1), true);
        }
        assert_eq!(feed.limiter.baseline(), Some(10 * MS));
        // Long after every unloaded window expired (refusals all along),
        // the last baseline holds.
        feed.refused += 1;
        feed.now += BASELINE_HORIZON + WINDOW;
        feed.windows(1, 300 * MS, 15, true);
        assert_eq!(feed.limiter.baseline(), Some(10 * MS));
        assert_eq!(feed.limiter.limit(), 16);
    }

    #[test]
    fn a_replica_started_under_overload_keeps_its_limit_until_it_has_a_baseline() {
        let mut feed = Feed::new(16, 64, 2000);
        assert_eq!(feed.windows(5, 300 * MS, 64, true), 64);
        assert_eq!(feed.limiter.baseline(), None);
    }

    #[test]
    fn the_baseline_forgets_unloaded_windows_older_than_its_horizon() {
        let mut feed = Feed::new(16, 64, 2000);
        feed.windows(1, 5 * MS, 8, false);
        feed.now += BASELINE_HORIZON + WINDOW;
        feed.windows(1, 40 * MS, 8, false);
        assert_eq!(feed.limiter.baseline(), Some(40 * MS));
    }

    #[test]
    fn past_the_limit_a_request_is_refused_and_its_place_given_back() {
        let admission = Admission::new(Policy::Fixed(2));
        let (a, b) = (admission.try_admit(), admission.try_admit());
        assert!(a.is_ok() && b.is_ok());
        assert!(admission.full());
        assert_eq!(admission.try_admit().err(), Some(Refusal::Full { limit: 2 }));
        assert_eq!(admission.in_flight(), 2);
        drop(a);
        assert!(!admission.full());
        assert!(admission.try_admit().is_ok());
    }

    #[test]
    fn only_a_real_share_of_refusals_is_shedding() {
        let admission = Admission::new(Policy::Fixed(1));
        let kept = admission.try_admit();
        admission.tick();
        // One refusal beside a hundred admissions: not shedding.
        drop(kept);
        for _ in 0..100 {
            drop(admission.try_admit());
        }
        let kept = admission.try_admit();
        assert!(admission.try_admit().is_err());
        admission.tick();
        assert!(!admission.shedding());
        // A fifth of the requests refused: shedding.
        for _ in 0..4 {
            assert!(admission.try_admit().is_err());
        }
        drop(kept);
        for _ in 0..16 {
            drop(admission.try_admit());
        }
        admission.tick();
        assert!(admission.shedding());
    }

    #[test]
    fn a_settled_saga_gives_its_place_back_once() {
        let admission = Admission::new(Policy::DEFAULT);
        let id = Uuid::nil();
        admission.hold(id, admission.try_admit().unwrap_or_else(|_| panic!("admitted")));
        assert_eq!(admission.in_flight(), 1);
        admission.settle(id, true);
        admission.settle(id, true);
        assert_eq!(admission.in_flight(), 0);
    }

    #[test]
    fn policies_parse_and_absurd_ones_say_why() {
        assert_eq!(Policy::parse("adaptive"), Ok(Policy::DEFAULT));
        assert_eq!(Policy::parse("fixed:500"), Ok(Policy::Fixed(500)));
        assert_eq!(Policy::parse("off"), Ok(Policy::Off));
        assert_eq!(Policy::parse("adaptive:8..100"), Ok(Policy::Adaptive { min: 8, initial: 100, max: 100 }));
        assert_eq!(Policy::parse("adaptive:200..300"), Ok(Policy::Adaptive { min: 200, initial: 200, max: 300 }));
        assert_eq!(Policy::parse("adaptive:8..1000"), Ok(Policy::Adaptive { min: 8, initial: 128, max: 1000 }));
        for (bad, says) in [("fixed:0", "1 to"), ("fixed:x", "whole number"), ("adaptive:9..3", "above"), ("adaptive:5", "range"), ("lots", "expected")] {
            let why = Policy::parse(bad).err().unwrap_or_default();
            assert!(why.contains(says), "{bad}: {why}");
        }
        assert!(Policy::DEFAULT.check().is_ok());
        assert!(Policy::Adaptive { min: 9, initial: 9, max: 3 }.check().is_err());
        assert!(Policy::Fixed(0).check().is_err());
    }
}
