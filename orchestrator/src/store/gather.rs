//! When the committer waits a moment for more appends before it commits.
//!
//! Under full load the group commit batches by itself: appends queue up
//! while a commit is in flight. At partial load it does not: a commit takes
//! about a millisecond, the queue is empty when it ends, and each append
//! commits alone. Every commit costs the database a statement and a WAL
//! flush whatever it holds, so at 400 sagas/s on Postgres a saga paid for
//! two commits of its own and Postgres spent three times the CPU per saga it
//! spends at the peak (docs/benchmarks.md, "Fourth round").
//!
//! So when the committer finds its queue empty and appends have been
//! arriving often enough that another is due within the window, it waits
//! out the window and commits what came. A trickle never waits: at one
//! saga a second nothing else is due, and a step commits at once.

use std::time::Duration;

use tokio::time::Instant;

/// How long the arrival rate is counted over before it is updated.
const RATE_PERIOD: Duration = Duration::from_millis(100);

/// The committer's view of how fast appends arrive.
#[derive(Debug)]
pub(super) struct Gather {
    window: Duration,
    /// Appends counted since `since`.
    counted: u64,
    since: Instant,
    /// Appends per second over the last whole period.
    rate: f64,
}

impl Gather {
    /// `window` zero: never wait.
    pub(super) fn new(window: Duration, now: Instant) -> Gather {
        Gather { window, counted: 0, since: now, rate: 0.0 }
    }

    /// Counts `n` appends taken from the queue at `now`.
    pub(super) fn arrived(&mut self, n: usize, now: Instant) {
        self.counted += n as u64;
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed >= RATE_PERIOD {
            // A pause longer than a period counts whole: after it the rate
            // is low, and the first append back does not wait.
            self.rate = self.counted as f64 / elapsed.as_secs_f64();
            self.counted = 0;
            self.since = now;
        }
    }

    /// How long to wait for more appends before committing, if at all.
    /// `queued` says whether appends were already waiting when the
    /// committer looked: then it is busy, and the batch gathered while
    /// the last commit ran.
    pub(super) fn wait(&self, queued: bool) -> Option<Duration> {
        let due_in_window = self.rate * self.window.as_secs_f64();
        (!queued && due_in_window >= 1.0).then_some(self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_millis(1);

    /// Feeds `per_second` appends, one at a time, for `period`, from `start`.
    fn steady(gather: &mut Gather, start: Instant, per_second: u64, period: Duration) -> Instant {
        let gap = Duration::from_secs(1) / per_second as u32;
        let mut now = start;
        while now < start + period {
            gather.arrived(1, now);
            now += gap;
        }
        now
    }

    #[test]
    fn at_partial_load_an_idle_committer_waits_the_window() {
        let start = Instant::now();
        let mut gather = Gather::new(WINDOW, start);
        // 400 order sagas a second: about 1,200 appends.
        steady(&mut gather, start, 1_200, Duration::from_millis(300));
        assert_eq!(gather.wait(false), Some(WINDOW));
    }

    #[test]
    fn a_busy_committer_does_not_wait_its_queue_batches_already() {
        let start = Instant::now();
        let mut gather = Gather::new(WINDOW, start);
        steady(&mut gather, start, 5_000, Duration::from_millis(300));
        assert_eq!(gather.wait(true), None);
    }

    #[test]
    fn a_trickle_never_waits() {
        let start = Instant::now();
        let mut gather = Gather::new(WINDOW, start);
        steady(&mut gather, start, 100, Duration::from_secs(1));
        assert_eq!(gather.wait(false), None);
        // Nor does the first append of all.
        let mut fresh = Gather::new(WINDOW, start);
        fresh.arrived(1, start);
        assert_eq!(fresh.wait(false), None);
    }

    #[test]
    fn after_a_pause_the_first_append_back_commits_at_once() {
        let start = Instant::now();
        let mut gather = Gather::new(WINDOW, start);
        let end = steady(&mut gather, start, 2_000, Duration::from_millis(300));
        assert_eq!(gather.wait(false), Some(WINDOW));
        gather.arrived(1, end + Duration::from_secs(2));
        assert_eq!(gather.wait(false), None);
    }

    #[test]
    fn a_zero_window_turns_waiting_off() {
        let start = Instant::now();
        let mut gather = Gather::new(Duration::ZERO, start);
        steady(&mut gather, start, 5_000, Duration::from_millis(300));
        assert_eq!(gather.wait(false), None);
    }
}
