//! Knowing when each saga finished, without loading the server much.
//!
//! One poller task asks about each accepted saga with a long poll,
//! `GET /orders/{id}?wait=…`: the server answers when the saga finishes (or
//! the wait is up, and the poller asks again), so a saga costs about one
//! GET and its finish is seen as soon as it is committed. At most
//! `parallel` GETs are out at once (each holds a connection); sagas beyond
//! that queue in the order they were accepted.
//!
//! The latency reported does not depend on the poller: a terminal order's
//! `updated_at` is stamped by the group commit that records the terminal
//! step, just before that transaction begins, so POST→terminal is
//! `updated_at − POST sent`, short of the terminal commit's own duration
//! (the report gives the mean commit time, and also the latency to when the
//! poller saw the saga terminal, an upper bound). Same clock: the bench
//! runs on the server's machine; against a remote `--url`, clock skew adds
//! in. The report gives the GETs per saga and the median delay between the
//! terminal commit and its detection, so the poller's cost is on record.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{Notify, oneshot};
use uuid::Uuid;

use crate::load::{Client, OrderView};

/// How long the poller sleeps with nothing to do (a new saga wakes it sooner).
const IDLE: Duration = Duration::from_millis(50);
/// Before asking again about a saga whose GET failed.
const ERROR_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy)]
pub struct PollSettings {
    /// How long the server may hold each GET (`?wait=`).
    pub wait: Duration,
    /// Between a GET that found the saga running and the next one.
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
        Arc::new(Tracker { state: Mutex::new(State::default()), wake: Notify::new(), settings })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Follows an accepted saga; the receiver fires when it is seen terminal.
    pub fn watch(&self, id: Uuid, sent_wall_us: i64) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut s = self.lock();
        s.seq += 1;
        let key = (Instant::now(), s.seq);
        s.schedule.insert(key, id);
        s.watches.insert(id, Watch { sent_wall_us, accepted_wall_us: orchestrator::clock::now_us(), done: Some(tx) });
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
        let parallel = self.settings.parallel.max(1);
        let client = &client;
        let wait = self.settings.wait;
        let mut out = FuturesUnordered::new();
        loop {
            let next_due = {
                let mut s = self.lock();
                if s.closed && s.watches.is_empty() && out.is_empty() {
                    return;
                }
                let now = Instant::now();
                while out.len() < parallel {
                    match s.schedule.first_key_value() {
                        Some((key, _)) if key.0 <= now => {
                            if let Some((_, id)) = s.schedule.pop_first() {
                                out.push(async move { (id, client.order(id, wait).await) });
                            }
                        }
                        _ => break,
                    }
                }
                s.schedule.first_key_value().map(|(k, _)| k.0)
            };
            let until = next_due.unwrap_or_else(|| Instant::now() + IDLE);
            tokio::select! {
                Some((id, answer)) = out.next(), if !out.is_empty() => self.record(id, answer),
                () = tokio::time::sleep_until(until.into()), if out.len() < parallel => {}
                () = self.wake.notified() => {}
            }
        }
    }

    fn record(&self, id: Uuid, answer: anyhow::Result<OrderView>) {
        let now = Instant::now();
        let now_wall = orchestrator::clock::now_us();
        let mut guard = self.lock();
        let s = &mut *guard;
        s.gets += 1;
        let failed = answer.is_err();
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
                // A failed GET (or a server that answers without waiting)
                // must not turn into a tight loop of retries.
                let after = if failed { ERROR_BACKOFF } else { self.settings.min_interval };
                s.seq += 1;
                if s.watches.contains_key(&id) {
                    s.schedule.insert((now + after, s.seq), id);
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
