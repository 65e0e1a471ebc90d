//! Knowing when each saga finished, without loading the server much.
//!
//! One poller task re-checks the sagas still in flight in rounds, with
//! `GET /orders/{id}` (at most `parallel` at once). The latency it reports
//! hardly depends on how often it polls: a terminal order's `updated_at`
//! is stamped by the group commit that records the terminal step, just
//! before that transaction begins, so POST→terminal is `updated_at − POST
//! sent`, short of the terminal commit's own duration (the report gives
//! the mean commit time, and also the latency to when the poller saw the
//! saga terminal, an upper bound). Same clock: the bench runs on the
//! server's machine; against a remote `--url`, clock skew adds in. Polling
//! only has to be frequent enough for closed-loop clients to learn early
//! that their saga ended, and rare enough not to matter to the server:
//!
//! - the first check of a saga is due at ¾ of the recent mean latency
//!   (an exponentially weighted mean of finished sagas), so most sagas
//!   are found terminal at the first or second look;
//! - then every ¼ of that mean, at least `min_interval`, at most 50 ms.
//!
//! The report gives the GETs per saga and the median delay between the
//! terminal commit and its detection, so the poller's cost is on record.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{Notify, oneshot};
use uuid::Uuid;

use super::load::{Client, OrderView};

const MAX_INTERVAL: Duration = Duration::from_millis(50);
/// Sagas looked at per round at most (the rest stay due for the next round).
const ROUND: usize = 256;
const INITIAL_MEAN_US: f64 = 5_000.0;

#[derive(Debug, Clone, Copy)]
pub struct PollSettings {
    pub min_interval: Duration,
    pub parallel: usize,
}

/// A saga seen terminal.
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: String,
    /// POST sent → terminal step committed (server time), µs.
    pub latency_us: u64,
    /// POST sent → terminal status seen by the poller, µs (an upper bound).
    pub seen_us: u64,
    /// Terminal step committed → seen by the poller, µs.
    pub detect_us: u64,
    /// When the POST was answered (µs since the epoch).
    pub accepted_wall_us: i64,
    /// When the terminal step was committed (µs since the epoch).
    pub terminal_wall_us: i64,
}

struct Watch {
    sent_wall_us: i64,
    accepted_wall_us: i64,
    done: Option<oneshot::Sender<()>>,
}

#[derive(Default)]
struct State {
    watches: HashMap<Uuid, Watch>,
    /// (due, tie-breaker) → saga: the order in which sagas are re-checked.
    schedule: BTreeMap<(Instant, u64), Uuid>,
    seq: u64,
    finished: Vec<Finished>,
    gets: u64,
    errors: u64,
    first_error: Option<String>,
    mean_us: f64,
    closed: bool,
}

/// The sagas a point is waiting for, shared by the load tasks and the poller.
pub struct Tracker {
    state: Mutex<State>,
    wake: Notify,
    settings: PollSettings,
}

/// What the poller saw over one point.
pub struct Seen {
    pub finished: Vec<Finished>,
    /// When each saga never seen terminal was accepted.
    pub unfinished_accepted_wall_us: Vec<i64>,
    pub gets: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Seen {
    /// Most sagas in flight at once, by the server's clock: accepted (POST
    /// answered) and not yet terminal (the terminal step's `updated_at`).
    /// Unlike counting what the poller has not seen yet, this does not
    /// include detection delay.
    pub fn peak_in_flight(&self) -> usize {
        let mut changes: Vec<(i64, i32)> = Vec::with_capacity(2 * self.finished.len() + self.unfinished_accepted_wall_us.len());
        for f in &self.finished {
            // A saga can be recorded terminal before its POST's answer is read.
            changes.push((f.accepted_wall_us.min(f.terminal_wall_us), 1));
            changes.push((f.terminal_wall_us, -1));
        }
        changes.extend(self.unfinished_accepted_wall_us.iter().map(|&t| (t, 1)));
        // At equal times, ends before starts: a saga ending as another starts is not overlap.
        changes.sort_unstable();
        let (mut now, mut peak) = (0i64, 0i64);
        for (_, change) in changes {
            now += i64::from(change);
            peak = peak.max(now);
        }
        peak as usize
    }
}

impl Tracker {
    pub fn new(settings: PollSettings) -> Arc<Tracker> {
        Arc::new(Tracker { state: Mutex::new(State { mean_us: INITIAL_MEAN_US, ..State::default() }), wake: Notify::new(), settings })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Follows an accepted saga; the receiver fires when it is seen terminal.
    pub fn watch(&self, id: Uuid, sent_wall_us: i64, sent: Instant) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut s = self.lock();
        let first = Duration::from_micros((s.mean_us * 0.75) as u64).max(self.settings.min_interval);
        let due = (sent + first).max(Instant::now());
        s.seq += 1;
        let key = (due, s.seq);
        s.schedule.insert(key, id);
        s.watches.insert(id, Watch { sent_wall_us, accepted_wall_us: crate::clock::now_us(), done: Some(tx) });
        drop(s);
        self.wake.notify_one();
        rx
    }

    /// No more sagas will be added: the poller returns once all are seen.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// Takes the results (call after the poller returned or was stopped).
    pub fn take(&self) -> Seen {
        let mut s = self.lock();
        Seen {
            finished: std::mem::take(&mut s.finished),
            unfinished_accepted_wall_us: s.watches.values().map(|w| w.accepted_wall_us).collect(),
            gets: s.gets,
            errors: s.errors,
            first_error: s.first_error.take(),
        }
    }

    /// The poller: runs until closed and every watched saga is terminal.
    pub async fn run(self: Arc<Self>, client: Client) {
        loop {
            let (batch, next) = {
                let mut s = self.lock();
                if s.closed && s.watches.is_empty() {
                    return;
                }
                let now = Instant::now();
                let mut batch = Vec::new();
                while batch.len() < ROUND {
                    match s.schedule.first_key_value() {
                        Some((key, _)) if key.0 <= now => {
                            if let Some((_, id)) = s.schedule.pop_first() {
                                batch.push(id);
                            }
                        }
                        _ => break,
                    }
                }
                (batch, s.schedule.first_key_value().map(|(k, _)| k.0))
            };
            if batch.is_empty() {
                let until = next.unwrap_or_else(|| Instant::now() + MAX_INTERVAL);
                tokio::select! {
                    () = tokio::time::sleep_until(until.into()) => {}
                    () = self.wake.notified() => {}
                }
                continue;
            }
            let client = &client;
            let answers = futures::stream::iter(batch).map(|id| async move { (id, client.order(id).await) });
            let mut answers = std::pin::pin!(answers.buffer_unordered(self.settings.parallel.max(1)));
            while let Some((id, answer)) = answers.next().await {
                self.record(id, answer);
            }
        }
    }

    fn record(&self, id: Uuid, answer: anyhow::Result<OrderView>) {
        let now = Instant::now();
        let now_wall = crate::clock::now_us();
        let mut guard = self.lock();
        let s = &mut *guard;
        s.gets += 1;
        let terminal = match answer {
            Ok(view) if view.is_terminal() => Some(view),
            Ok(_) => None,
            Err(e) => {
                s.errors += 1;
                if s.first_error.is_none() {
                    s.first_error = Some(format!("GET /orders/{id}: {e:#}"));
                }
                None
            }
        };
        match terminal {
            Some(view) => {
                let Some(mut watch) = s.watches.remove(&id) else { return };
                // Without a readable updated_at, the time it was seen is the bound.
                let terminal_wall_us = view.updated_at_us().unwrap_or(now_wall);
                let latency_us = (terminal_wall_us - watch.sent_wall_us).max(0) as u64;
                s.mean_us = 0.9 * s.mean_us + 0.1 * latency_us as f64;
                s.finished.push(Finished {
                    status: view.status,
                    latency_us,
                    seen_us: (now_wall - watch.sent_wall_us).max(0) as u64,
                    detect_us: (now_wall - terminal_wall_us).max(0) as u64,
                    accepted_wall_us: watch.accepted_wall_us,
                    terminal_wall_us,
                });
                if let Some(done) = watch.done.take() {
                    let _ = done.send(());
                }
            }
            None => {
                let interval = Duration::from_micros((s.mean_us / 4.0) as u64).clamp(self.settings.min_interval, MAX_INTERVAL.max(self.settings.min_interval));
                s.seq += 1;
                if s.watches.contains_key(&id) {
                    s.schedule.insert((now + interval, s.seq), id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(accepted: i64, terminal: i64) -> Finished {
        Finished { status: "delivered".into(), latency_us: 0, seen_us: 0, detect_us: 0, accepted_wall_us: accepted, terminal_wall_us: terminal }
    }

    #[test]
    fn peak_in_flight_counts_overlaps_by_server_time() {
        let seen = Seen {
            // [0,10) [5,15) [10,20) [12,13): at most three at once (12..13).
            finished: vec![finished(0, 10), finished(5, 15), finished(10, 20), finished(12, 13)],
            unfinished_accepted_wall_us: vec![],
            gets: 0,
            errors: 0,
            first_error: None,
        };
        assert_eq!(seen.peak_in_flight(), 3);
        let with_stuck = Seen { unfinished_accepted_wall_us: vec![1, 2], ..seen };
        assert_eq!(with_stuck.peak_in_flight(), 5);
    }
}
