//! Group commit at partial load: when a committer waits a moment for more
//! writes before it commits.
//!
//! Under full load a group commit batches by itself: writes queue up while
//! a commit is in flight. At partial load it does not: a commit takes about
//! a millisecond, the queue is empty when it ends, and each write commits
//! alone. Every commit costs the database a statement and a WAL flush
//! whatever it holds, so at 400 sagas/s on Postgres a saga paid for two of
//! the orchestrator's commits and Postgres spent three times the CPU per
//! saga it spends at the peak (docs/benchmarks.md, "Fourth round").
//!
//! So when a committer's batch is small and writes have been arriving
//! often enough that another is due within the window, it waits out the
//! window and commits what came. A trickle never waits: at one saga a
//! second nothing else is due, and a write commits at once. Nor does full
//! load: the batch that gathered while the last commit ran is large
//! already. Nor, for long, does one client running sagas back to back:
//! its writes come fast, but each waits on the commit before it, so a
//! wait never catches one. The committer keeps count of what its waits
//! caught, stops waiting when they catch nothing, and tries again now and
//! then in case the load has changed.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

/// The window the committers use unless configured otherwise
/// (`ESO_COMMIT_GATHER` for the orchestrator's).
pub const WINDOW: Duration = Duration::from_millis(2);

/// The windows that mean something. Tokio's timers tick in milliseconds,
/// so a shorter one waits a millisecond anyway; a longer one than this is
/// latency for no further saving (and a huge one would overflow the clock).
pub const WINDOWS: std::ops::RangeInclusive<Duration> = Duration::from_millis(1)..=Duration::from_millis(50);

/// How long the arrival rate is counted over before it is updated.
const RATE_PERIOD: Duration = Duration::from_millis(100);

/// A batch this large shares its flush well enough: it commits at once.
/// At the peak, batches hold 20 to 90 writes; at half of it, 2 to 4.
const LARGE: usize = 8;

/// While waits catch nothing, one in this many batches that could wait
/// still does, to find out whether they would now.
const PROBE_EVERY: u32 = 16;

/// A committer's view of how fast writes arrive, and of whether waiting
/// for them has been worth it.
#[derive(Debug)]
pub struct Gather {
    window: Duration,
    /// Writes counted since `since`.
    counted: u64,
    since: Instant,
    /// Writes per second over the last whole period.
    rate: f64,
    /// How often the recent waits caught another write, from 0 to 1
    /// (a moving average).
    caught: f64,
    /// Batches that could have waited but did not, since the last wait.
    skipped: u32,
}

impl Gather {
    /// `window` zero: never wait. Others are brought within [`WINDOWS`].
    pub fn new(window: Duration, now: Instant) -> Gather {
        let window = if window.is_zero() { window } else { window.clamp(*WINDOWS.start(), *WINDOWS.end()) };
        Gather { window, counted: 0, since: now, rate: 0.0, caught: 1.0, skipped: 0 }
    }

    /// Counts `n` writes taken from the queue at `now`.
    pub fn arrived(&mut self, n: usize, now: Instant) {
        self.counted += n as u64;
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed >= RATE_PERIOD {
            // A pause longer than a period counts whole: after it the rate
            // is low, and the first write back does not wait.
            self.rate = self.counted as f64 / elapsed.as_secs_f64();
            self.counted = 0;
            self.since = now;
        }
    }

    /// How long a batch of `batch` writes should wait for more before
    /// it commits, if at all.
    pub fn wait(&mut self, batch: usize) -> Option<Duration> {
        let due_in_window = self.rate * self.window.as_secs_f64();
        if batch >= LARGE || due_in_window < 1.0 {
            return None;
        }
        if self.caught < 0.5 && self.skipped + 1 < PROBE_EVERY {
            self.skipped += 1;
            return None;
        }
        self.skipped = 0;
        Some(self.window)
    }

    /// Records whether a wait caught another write. One that did, probe
    /// or not, is reason enough for the next batch to wait too.
    pub fn waited(&mut self, caught: bool) {
        self.caught = if caught { (0.8 * self.caught + 0.2).max(0.5) } else { 0.8 * self.caught };
    }

    /// The next batch for a commit: everything waiting, up to `max`, and at
    /// partial load whatever else comes within the window. Empty once the
    /// queue is closed and drained.
    pub async fn next_batch<T>(&mut self, rx: &mut mpsc::Receiver<T>, max: usize) -> Vec<T> {
        let mut batch = Vec::with_capacity(max);
        if rx.recv_many(&mut batch, max).await == 0 {
            return batch;
        }
        self.arrived(batch.len(), Instant::now());
        if let Some(window) = self.wait(batch.len()) {
            let (until, before) = (Instant::now() + window, batch.len());
            while batch.len() < max {
                let room = max - batch.len();
                match tokio::time::timeout_at(until, rx.recv_many(&mut batch, room)).await {
                    Ok(n) if n > 0 => self.arrived(n, Instant::now()),
                    // The window is out, or the queue closed: commit what came.
                    _ => break,
                }
            }
            self.waited(batch.len() > before);
        }
        batch
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

    /// A committer that has taken `per_second` writes, one at a time, for 300 ms.
    fn seen(per_second: u64) -> Gather {
        let start = Instant::now();
        let mut gather = Gather::new(WINDOW, start);
        steady(&mut gather, start, per_second, Duration::from_millis(300));
        gather
    }

    #[test]
    fn at_partial_load_a_small_batch_waits_the_window() {
        // 400 order sagas a second: about 1,200 appends.
        assert_eq!(seen(1_200).wait(1), Some(WINDOW));
    }

    #[test]
    fn a_large_batch_does_not_wait_it_gathered_while_the_last_commit_ran() {
        let mut gather = seen(5_000);
        assert_eq!(gather.wait(LARGE - 1), Some(WINDOW));
        assert_eq!(gather.wait(LARGE), None);
    }

    #[test]
    fn a_trickle_never_waits() {
        let start = Instant::now();
        let mut gather = Gather::new(WINDOW, start);
        steady(&mut gather, start, 100, Duration::from_secs(1));
        assert_eq!(gather.wait(1), None);
        // Nor does the first append of all.
        let mut fresh = Gather::new(WINDOW, start);
        fresh.arrived(1, start);
        assert_eq!(fresh.wait(1), None);
    }

    #[test]
    fn after_a_pause_the_first_append_back_commits_at_once() {
        let start = Instant::now();
        let mut gather = Gather::new(WINDOW, start);
        let end = steady(&mut gather, start, 2_000, Duration::from_millis(300));
        assert_eq!(gather.wait(1), Some(WINDOW));
        gather.arrived(1, end + Duration::from_secs(2));
        assert_eq!(gather.wait(1), None);
    }

    #[tokio::test(start_paused = true)]
    async fn next_batch_takes_what_comes_within_the_window_at_partial_load() {
        // Tokio's timers tick in milliseconds: a window of ten, sends two apart.
        let window = Duration::from_millis(10);
        let (tx, mut rx) = mpsc::channel(16);
        // Writes in the 300 ms up to now, so the batches' own arrivals count on.
        let start = Instant::now() - Duration::from_millis(300);
        let mut gather = Gather::new(window, start);
        steady(&mut gather, start, 2_000, Duration::from_millis(300));
        let sender = tokio::spawn(async move {
            for n in 0..3 {
                let _ = tx.send(n).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            // Past the window: the next batch.
            tokio::time::sleep(window * 2).await;
            let _ = tx.send(3).await;
        });
        assert_eq!(gather.next_batch(&mut rx, 16).await, vec![0, 1, 2]);
        assert_eq!(gather.next_batch(&mut rx, 16).await, vec![3]);
        let _ = sender.await;
        assert!(gather.next_batch(&mut rx, 16).await.is_empty(), "a closed queue gives an empty batch");
    }

    #[tokio::test(start_paused = true)]
    async fn next_batch_commits_at_once_when_nothing_else_is_due() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut gather = Gather::new(WINDOW, Instant::now());
        let _ = tx.send(1).await;
        let started = Instant::now();
        assert_eq!(gather.next_batch(&mut rx, 16).await, vec![1]);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[test]
    fn waits_that_catch_nothing_stop_but_for_a_probe_now_and_then() {
        // One client's sagas back to back: fast writes, each after the last commit.
        let mut gather = seen(1_500);
        let mut waits = 0;
        for _ in 0..(4 * PROBE_EVERY) {
            if gather.wait(1).is_some() {
                waits += 1;
                gather.waited(false);
            }
        }
        // The first few, while the average falls below half (4), then a
        // probe every PROBE_EVERY batches (3 more).
        assert_eq!(waits, 7);
        // One probe that catches something brings the waits back.
        let probed = (0..PROBE_EVERY).any(|_| gather.wait(1).is_some());
        assert!(probed, "no probe within {PROBE_EVERY} batches");
        gather.waited(true);
        assert_eq!(gather.wait(1), Some(WINDOW));
    }

    #[test]
    fn waits_that_catch_writes_go_on() {
        let mut gather = seen(1_500);
        for _ in 0..100 {
            assert_eq!(gather.wait(2), Some(WINDOW));
            gather.waited(true);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_writer_stops_waiting_on_itself() {
        let (tx, mut rx) = mpsc::channel(16);
        // Writes in the 300 ms up to now, so the batches' own arrivals count on.
        let start = Instant::now() - Duration::from_millis(300);
        let mut gather = Gather::new(WINDOW, start);
        steady(&mut gather, start, 1_500, Duration::from_millis(300));
        let started = Instant::now();
        for n in 0..(2 * PROBE_EVERY) {
            let _ = tx.send(n).await;
            assert_eq!(gather.next_batch(&mut rx, 16).await, vec![n]);
        }
        // 32 writes, a wait of WINDOW each would be 32 windows.
        let waited = started.elapsed();
        assert!(waited <= WINDOW * 8, "waited {waited:?}");
    }

    #[test]
    fn a_window_out_of_bounds_is_brought_within_them() {
        let start = Instant::now();
        let mut huge = Gather::new(Duration::MAX, start);
        steady(&mut huge, start, 1_500, Duration::from_millis(300));
        assert_eq!(huge.wait(1), Some(*WINDOWS.end()));
        let mut tiny = Gather::new(Duration::from_micros(250), start);
        steady(&mut tiny, start, 1_500, Duration::from_millis(300));
        assert_eq!(tiny.wait(1), Some(*WINDOWS.start()));
    }

    #[test]
    fn a_zero_window_turns_waiting_off() {
        let start = Instant::now();
        let mut gather = Gather::new(Duration::ZERO, start);
        steady(&mut gather, start, 5_000, Duration::from_millis(300));
        assert_eq!(gather.wait(1), None);
    }
}
