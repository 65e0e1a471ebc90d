//! Wake-ups for requests that wait for a saga to finish
//! (`GET /orders/{id}?wait=5s`), so a client learns the outcome with one
//! request instead of polling.
//!
//! Only a wake-up: the waiting request then reads the order from the store,
//! which stays the one source of truth. A saga finished by another replica
//! wakes this one through NATS (`crate::bus::FINISHED_SUBJECT`); as that can
//! be lost, waiting requests also re-read the store now and then
//! (`Runtime::finish_recheck`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use uuid::Uuid;

/// Reads waiting at once, at most. Each holds a connection and re-reads
/// the store now and then; past this, a read answers at once instead.
pub const MAX_WATCHES: usize = 10_000;

#[derive(Default)]
pub struct Finishes {
    waiting: Mutex<HashMap<Uuid, Waiting>>,
    /// Live watches, of every saga.
    live: AtomicUsize,
}

/// The wake-up for one saga and how many watches share it. Counted under
/// the lock, not read off the `Arc`: two watches dropped at once would each
/// see the other's reference and neither would remove the entry.
struct Waiting {
    notify: Arc<Notify>,
    watches: usize,
}

/// Interest in one saga's finish; dropping it (the client hung up, or the
/// wait ended) forgets the saga once no other request waits for it.
pub struct Watch {
    id: Uuid,
    notify: Arc<Notify>,
    owner: Arc<Finishes>,
}

impl Finishes {
    /// `None` when [`MAX_WATCHES`] reads already wait.
    pub fn watch(self: &Arc<Self>, id: Uuid) -> Option<Watch> {
        self.live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_WATCHES).then_some(n + 1)).ok()?;
        let notify = {
            let mut waiting = self.lock();
            let entry = waiting.entry(id).or_insert_with(|| Waiting { notify: Arc::default(), watches: 0 });
            entry.watches += 1;
            entry.notify.clone()
        };
        metrics::gauge!("eso_http_waiting_requests").increment(1.0);
        Some(Watch { id, notify, owner: self.clone() })
    }

    /// Called once the saga's terminal step is committed.
    pub fn finished(&self, id: Uuid) {
        let finished = self.lock().remove(&id);
        if let Some(waiting) = finished {
            waiting.notify.notify_waiters();
        }
    }

    /// Sagas waited for.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Waiting>> {
        // A panic elsewhere cannot leave the map half-changed: each change is one call.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Watch {
    /// A future that completes at the saga's finish. Take it *before*
    /// reading the store: a finish committed between the read and the
    /// wait then still wakes it.
    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        metrics::gauge!("eso_http_waiting_requests").decrement(1.0);
        self.owner.live.fetch_sub(1, Ordering::AcqRel);
        let mut waiting = self.owner.lock();
        // The entry may be gone (finished) or a newer one (watched again
        // after that): only this watch's own entry is counted down.
        if let Some(entry) = waiting.get_mut(&self.id)
            && Arc::ptr_eq(&entry.notify, &self.notify)
        {
            entry.watches -= 1;
            if entry.watches == 0 {
                waiting.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn watch(finishes: &Arc<Finishes>, id: Uuid) -> Watch {
        finishes.watch(id).unwrap_or_else(|| panic!("no room to watch {id}"))
    }

    #[test]
    fn past_the_cap_a_read_does_not_wait() {
        let finishes = Arc::new(Finishes::default());
        let watches: Vec<Watch> = (0..MAX_WATCHES).map(|_| watch(&finishes, Uuid::new_v4())).collect();
        assert!(finishes.watch(Uuid::new_v4()).is_none());
        drop(watches);
        assert!(finishes.watch(Uuid::new_v4()).is_some());
    }

    #[tokio::test]
    async fn a_finish_wakes_every_watch_taken_before_it() {
        let finishes = Arc::new(Finishes::default());
        let id = Uuid::new_v4();
        let (a, b) = (watch(&finishes, id), watch(&finishes, id));
        let (wake_a, wake_b) = (a.notified(), b.notified());
        // Not polled yet when the finish comes: it must still count.
        finishes.finished(id);
        tokio::time::timeout(Duration::from_secs(1), async { tokio::join!(wake_a, wake_b) }).await.expect("both woken");
    }

    #[tokio::test]
    async fn other_sagas_do_not_wake_it() {
        let finishes = Arc::new(Finishes::default());
        let watching = watch(&finishes, Uuid::new_v4());
        let wake = watching.notified();
        finishes.finished(Uuid::new_v4());
        assert!(tokio::time::timeout(Duration::from_millis(50), wake).await.is_err());
    }

    #[test]
    fn watches_dropped_at_once_on_two_threads_leave_nothing_behind() {
        let finishes = Arc::new(Finishes::default());
        let ids: Vec<Uuid> = (0..20_000).map(|_| Uuid::new_v4()).collect();
        let both_watching = std::sync::Barrier::new(2);
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    for &id in &ids {
                        let watching = watch(&finishes, id);
                        // Both threads hold a watch on `id`, then drop it together.
                        both_watching.wait();
                        drop(watching);
                    }
                });
            }
        });
        assert_eq!(finishes.len(), 0);
    }

    #[test]
    fn the_last_watch_dropped_forgets_the_saga() {
        let finishes = Arc::new(Finishes::default());
        let id = Uuid::new_v4();
        let first = watch(&finishes, id);
        let second = watch(&finishes, id);
        assert_eq!(finishes.len(), 1);
        drop(first);
        assert_eq!(finishes.len(), 1, "another request still waits");
        drop(second);
        assert_eq!(finishes.len(), 0);
    }
}
