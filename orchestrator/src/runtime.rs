//! The saga runtime: load, step, append, send. All decisions are the pure
//! machine's (`sagas::step`); this module only moves data between it, the
//! store and the bus.
//!
//! Durability comes from the order of operations: a step's events and the
//! saga's next deadline are committed before any command leaves, so a crash
//! at any point leaves a saga that its deadline will wake up (on this or
//! another replica) and move on, resending the same command id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use protocol::{CommandMessage, ErrorReply, HEADER_COMMAND_ID, HEADER_SAGA_ID, ReplyMessage};
use sagas::{Cause, Change, Command, Definition, Input, Registry, Saga};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

use crate::admission::{Admission, Ticket};
use crate::bus::{Bus, BusError};
use crate::clock;
use crate::finishes::{Finishes, Watch};
use crate::saga_cache::SagaCache;
use crate::store::{Append, Committed, IdempotencyKey, SagaRow, Store, StoreError};

/// Steps of one saga racing each other resolve by retrying on the newer
/// state; this bounds a pathological race.
const MAX_CONFLICT_RETRIES: usize = 32;
/// How long a claimed timer belongs to a replica before another may take it.
const TIMER_LEASE_MS: i64 = 10_000;
const TIMER_BATCH: i64 = 256;
/// How often expired idempotency keys are deleted (each replica; the
/// delete of one interval's worth is small).
const KEY_SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// How often admission control gives back places held too long and
/// looks at how much it shed (`Admission::tick`).
const ADMISSION_TICK: Duration = Duration::from_secs(1);
/// The causation of a step a saga's deadline took.
const TIMER_CAUSATION: &str = "timer";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no saga definition named `{0}` is loaded")]
    NoDefinition(String),
    #[error("the saga's inputs are not those its definition declares")]
    Inputs(std::collections::BTreeMap<String, Vec<String>>),
    #[error("saga {0} runs on {1}, which is not loaded")]
    DefinitionNotLoaded(Uuid, sagas::DefinitionId),
    #[error("saga {0} kept changing under us; gave up after {MAX_CONFLICT_RETRIES} tries")]
    Contended(Uuid),
    #[error("the step's task ended abnormally: {0}")]
    Aborted(String),
}

/// What an input did to a saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stepped {
    /// The saga moved (or noted the input) to `state`, recording `events`.
    Applied {
        state: String,
        events: Vec<String>,
    },
    /// Not applicable in the saga's state (duplicate, late, unknown event…).
    Ignored(sagas::Ignored),
    UnknownSaga,
}

impl Stepped {
    /// What an operator's action (or a migration) came to, as metrics and
    /// logs name it.
    pub fn outcome(&self) -> &'static str {
        match self {
            Stepped::Applied { .. } => "applied",
            Stepped::Ignored(sagas::Ignored::Repeated(_)) => "repeated",
            Stepped::Ignored(_) => "refused",
            Stepped::UnknownSaga => "unknown",
        }
    }
}

/// What a start did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// A new saga, on this definition version.
    Created(Uuid, sagas::DefinitionId),
    /// The idempotency key names this saga, started for the same request.
    Existing(Uuid),
    /// The idempotency key names this saga, started for another request.
    KeyReused(Uuid),
}

/// A client's idempotency key for a start, with what identifies its request.
#[derive(Debug, Clone)]
pub struct StartKey {
    pub key: String,
    pub fingerprint: String,
}

#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    bus: Bus,
    registry: Registry,
    /// Command round trips in flight, awaited on shutdown.
    tasks: TaskTracker,
    cache: SagaCache,
    /// Requests waiting for a saga of this replica to finish.
    finishes: Arc<Finishes>,
    /// Permits for stepping replies (see [`MAX_REPLY_STEPS`]).
    reply_steps: tokio::sync::Semaphore,
    /// How long an idempotency key names its saga.
    key_lifetime: Duration,
    /// The sagas this replica takes on at once (see `admission.rs`).
    admission: Arc<Admission>,
}

/// Re-reads of a waiting read (see [`Runtime::finish_recheck`]): rare where
/// replicas announce their finishes, each waiting read costing a query this
/// often; often enough elsewhere that a client barely notices.
const RECHECK_ANNOUNCED: Duration = Duration::from_secs(5);
const RECHECK_UNANNOUNCED: Duration = Duration::from_millis(500);

/// Replies stepped at once. A participant coming back after an outage
/// answers thousands of waiting commands together; stepped all at once,
/// each step holds copies of its saga while it waits for the commit (the
/// memory peak of the backlog). Past two full group commits, more steps
/// at once only queue for the committer.
const MAX_REPLY_STEPS: usize = 2 * crate::store::MAX_BATCH;

impl Runtime {
    pub fn new(store: Store, bus: Bus, registry: Registry, key_lifetime: Duration, admission: Arc<Admission>) -> Self {
        let inner = Inner {
            store,
            bus,
            registry,
            tasks: TaskTracker::new(),
            cache: SagaCache::default(),
            finishes: Arc::default(),
            reply_steps: tokio::sync::Semaphore::new(MAX_REPLY_STEPS),
            key_lifetime,
            admission,
        };
        Runtime { inner: Arc::new(inner) }
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn admission(&self) -> &Admission {
        &self.inner.admission
    }

    /// Wakes when saga `id` finishes on this replica (see [`Finishes`]);
    /// `None` when too many reads wait already.
    pub fn watch(&self, id: Uuid) -> Option<Watch> {
        self.inner.finishes.watch(id)
    }

    /// Wakes the reads waiting here for saga `id`, which another replica
    /// finished (see [`crate::bus::FINISHED_SUBJECT`]).
    pub fn finished_elsewhere(&self, id: Uuid) {
        self.inner.finishes.finished(id);
    }

    /// How often a read waiting for a finish re-reads the store anyway, in
    /// case the finish was not heard: `None` where every finish is heard.
    pub fn finish_recheck(&self) -> Option<Duration> {
        match (&self.inner.bus, self.inner.store.backend()) {
            // One process owns a SQLite file: it stepped every finish.
            (_, db::Backend::Sqlite) => None,
            // Announcements are lost only around a NATS reconnect.
            (Bus::Nats(_), _) => Some(RECHECK_ANNOUNCED),
            // Replicas on one Postgres without NATS: a timer step taken by
            // another replica is heard by no one here.
            (Bus::Local(_), _) => Some(RECHECK_UNANNOUNCED),
        }
    }

    /// Starts a saga of the newest version of definition `name` with
    /// `data` as its inputs. Returns once the start event is committed;
    /// the first command goes out after. The work runs in a task of its
    /// own, so a client that hangs up after the commit cannot stop the
    /// first command from being sent. The saga keeps `ticket`, its place
    /// in flight, until it ends or parks.
    pub async fn start(&self, name: &str, data: Map<String, Value>, key: Option<StartKey>, ticket: Option<Ticket>) -> Result<Started, RuntimeError> {
        let def = self.inner.registry.latest(name).ok_or_else(|| RuntimeError::NoDefinition(name.to_string()))?.clone();
        def.check_inputs(&data).map_err(RuntimeError::Inputs)?;
        let runtime = self.clone();
        let task = self.inner.tasks.spawn(async move { runtime.start_now(def, data, key, ticket).await }.instrument(tracing::Span::current()));
        task.await.map_err(|e| RuntimeError::Aborted(e.to_string()))?
    }

    async fn start_now(&self, def: Arc<Definition>, data: Map<String, Value>, key: Option<StartKey>, ticket: Option<Ticket>) -> Result<Started, RuntimeError> {
        // Time-ordered: a new saga's rows land at the end of each id index
        // instead of on a random page of it (docs/benchmarks.md).
        // With no counter (`NoContext`) the 74 bits after the millisecond
        // are all random, not a per-process sequence: the id is all a client
        // needs to read or signal a saga, so it must not be guessable.
        let id = Uuid::new_v7(uuid::Timestamp::now(uuid::NoContext));
        let span = tracing::Span::current();
        span.record("saga.id", tracing::field::display(id));
        let decision = match sagas::step(&def, None, &Input::Start { id, data }, clock::now()) {
            Ok(d) => d,
            // Inputs were checked above, and a new saga always starts;
            // this is here so nothing can panic.
            Err(ignored) => return Err(RuntimeError::Store(StoreError::Corrupt(ignored.to_string()))),
        };
        let trace = observability::propagation::to_map(&span);
        let key = key.map(|k| IdempotencyKey { scope: def.name.clone(), key: k.key, fingerprint: k.fingerprint, expired_before: self.keys_expired_before() });
        let append = Append {
            saga: decision.saga.clone(),
            expected: 0,
            events: decision.events.clone(),
            trace: trace.clone(),
            causation: "http".into(),
            previous_status: None,
            key,
        };
        match self.append(&def, None, append).await? {
            Committed::KeyTaken { saga, same_request: true } => return Ok(Started::Existing(saga)),
            Committed::KeyTaken { saga, same_request: false } => return Ok(Started::KeyReused(saga)),
            Committed::Conflict => return Err(RuntimeError::Contended(id)),
            Committed::Appended => {}
        }
        let now = clock::now_us();
        self.inner.cache.remember(&decision.saga, &trace, now, now);
        metrics::counter!("eso_sagas_started_total", "definition" => def.name.clone()).increment(1);
        tracing::info!(saga.id = %id, definition = %def.id(), "saga started");
        if let Some(ticket) = ticket {
            self.inner.admission.hold(id, ticket);
            self.settle(&decision.saga, true);
        }
        self.dispatch(decision.commands);
        Ok(Started::Created(id, def.id()))
    }

    /// Feeds `input` to saga `id`: load, step, append (retrying on
    /// conflicts), then send the commands the step decided.
    pub async fn advance(&self, id: Uuid, input: Input, causation: String) -> Result<Stepped, RuntimeError> {
        self.advance_from(id, self.inner.cache.get(id), input, causation).await
    }

    /// [`Runtime::advance`] starting from `known`, a state of the saga
    /// that may be stale: a conflict, or an input ignored on a state that
    /// did not come from the store, makes it read the store and try again.
    async fn advance_from(&self, id: Uuid, known: Option<SagaRow>, input: Input, causation: String) -> Result<Stepped, RuntimeError> {
        let decide = |def: &Definition, saga: &Saga| sagas::step(def, Some(saga), &input, clock::now());
        self.advance_with(id, known, causation, decide).await
    }

    /// Load, `decide` (on the saga and the definition it runs on), append
    /// (retrying on conflicts), send: the one path every step of a started
    /// saga takes, whatever decides it.
    async fn advance_with(
        &self,
        id: Uuid,
        known: Option<SagaRow>,
        causation: String,
        decide: impl Fn(&Definition, &Saga) -> Result<sagas::Decision, sagas::Ignored>,
    ) -> Result<Stepped, RuntimeError> {
        let mut hint = known;
        for _ in 0..MAX_CONFLICT_RETRIES {
            let from_hint = hint.is_some();
            let row = match hint.take() {
                Some(row) => row,
                None => match self.inner.store.load(id).await? {
                    Some(row) => row,
                    None => {
                        tracing::warn!(saga.id = %id, "input for an unknown saga dropped");
                        return Ok(Stepped::UnknownSaga);
                    }
                },
            };
            let saga = row.saga.clone();
            let def = self.inner.registry.get(&saga.definition).ok_or_else(|| RuntimeError::DefinitionNotLoaded(id, saga.definition.clone()))?.clone();
            let started = Instant::now();
            let decision = match decide(&def, &saga) {
                Ok(d) => d,
                Err(_) if from_hint => {
                    self.inner.cache.forget(id);
                    continue;
                }
                Err(ignored) => {
                    tracing::debug!(saga.id = %id, reason = %ignored, "input ignored");
                    metrics::counter!("eso_inputs_ignored_total").increment(1);
                    return Ok(Stepped::Ignored(ignored));
                }
            };
            let span = tracing::info_span!(
                "saga.step",
                otel.name = %format!("{} {} -> {}", def.name, saga.state, decision.saga.state),
                saga.id = %id,
                saga.definition = %def.name,
                saga.version = def.version,
                saga.state.from = %saga.state,
                saga.state.to = %decision.saga.state,
                event.type = %decision.events.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>().join(","),
            );
            let append = Append {
                saga: decision.saga.clone(),
                expected: saga.version,
                events: decision.events.clone(),
                trace: observability::propagation::to_map(&span),
                causation: causation.clone(),
                previous_status: Some(saga.status.clone()),
                key: None,
            };
            match self.append(&def, Some(&saga), append).instrument(span.clone()).await? {
                Committed::Conflict => {
                    metrics::counter!("eso_append_conflicts_total").increment(1);
                    self.inner.cache.forget(id);
                    continue;
                }
                Committed::KeyTaken { .. } | Committed::Appended => {}
            }
            self.inner.cache.remember(&decision.saga, &row.trace, row.created_at, row.updated_at);
            if decision.saga.terminal {
                self.inner.finishes.finished(id);
                self.inner.bus.announce_finished(id).await;
            }
            metrics::histogram!("eso_step_seconds", "definition" => def.name.clone(), "state" => saga.state.clone()).record(started.elapsed().as_secs_f64());
            self.record_outcome(&def, &saga, &decision.saga, &decision.events, row.created_at);
            // A timer's step means a command went unanswered: whatever
            // follows waits on a participant, not on this replica.
            self.settle(&decision.saga, causation != TIMER_CAUSATION);
            let _entered = span.enter();
            self.dispatch(decision.commands);
            let events = decision.events.into_iter().map(|e| e.event_type).collect();
            return Ok(Stepped::Applied { state: decision.saga.state, events });
        }
        Err(RuntimeError::Contended(id))
    }

    /// An operator's action on saga `id`, in the saga's own trace (the
    /// step's span continues the trace its events carry, as a timer's does).
    pub async fn operate(&self, id: Uuid, act: sagas::Act) -> Result<Stepped, RuntimeError> {
        let Some(row) = self.inner.store.load(id).await? else { return Ok(Stepped::UnknownSaga) };
        let span = tracing::info_span!(
            "saga.operator",
            otel.name = %format!("operator {}", act.action.name()),
            saga.id = %id,
            saga.state.from = %row.saga.state,
            operator = %act.operator,
            operator.action = act.action.name(),
        );
        observability::propagation::set_parent_from_map(&span, &row.trace);
        let (action, operator) = (act.action.name(), act.operator.clone());
        let causation = format!("operator:{operator}");
        let stepped = self.advance_from(id, Some(row), Input::Operator(act), causation).instrument(span).await?;
        let outcome = stepped.outcome();
        metrics::counter!("eso_operator_actions_total", "action" => action, "outcome" => outcome).increment(1);
        tracing::info!(saga.id = %id, action, %operator, outcome, "operator action");
        Ok(stepped)
    }

    /// Moves saga `id` from `old` onto `new` (`sagas::migration::migrate`),
    /// in the saga's own trace, as an operator's action is.
    pub async fn migrate(&self, id: Uuid, old: &Definition, new: &Definition, act: sagas::Act) -> Result<Stepped, RuntimeError> {
        let Some(row) = self.inner.store.load(id).await? else { return Ok(Stepped::UnknownSaga) };
        let span = tracing::info_span!(
            "saga.migrate",
            otel.name = %format!("migrate {} v{} -> v{}", new.name, old.version, new.version),
            saga.id = %id,
            saga.state.from = %row.saga.state,
            operator = %act.operator,
        );
        observability::propagation::set_parent_from_map(&span, &row.trace);
        let causation = format!("operator:{}", act.operator);
        let decide = |_: &Definition, saga: &Saga| sagas::migration::migrate(old, new, saga, &act, clock::now());
        // A saga already moved runs on `new`, which the registry finds: the
        // decision above still refuses it (as repeated or already on `new`).
        let stepped = self.advance_with(id, Some(row), causation, decide).instrument(span).await?;
        let outcome = stepped.outcome();
        metrics::counter!("eso_sagas_migrated_total", "definition" => new.name.clone(), "outcome" => outcome).increment(1);
        Ok(stepped)
    }

    /// Gives back the place in flight of `saga` if it was admitted here and
    /// now ends or parks, or waits on a participant (`!learn`: then its
    /// time is not a sample of this replica's). See `admission.rs`.
    fn settle(&self, saga: &Saga, learn: bool) {
        if saga.terminal || saga.pending.is_none() || !learn {
            self.inner.admission.settle(saga.id, learn);
        }
    }

    async fn append(&self, def: &Definition, before: Option<&Saga>, append: Append) -> Result<Committed, RuntimeError> {
        let span = tracing::info_span!(
            "event_store.append",
            otel.kind = "client",
            db.system = match self.inner.store.backend() { db::Backend::Postgres => "postgresql", db::Backend::Sqlite => "sqlite" },
            db.operation.name = "INSERT",
            db.collection.name = "events",
            saga.id = %append.saga.id,
            saga.definition = %def.name,
            saga.state.from = before.map_or("", |s| s.state.as_str()),
            saga.state.to = %append.saga.state,
            event.type = %append.events.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>().join(","),
        );
        Ok(self.inner.store.append(append).instrument(span).await?)
    }

    fn record_outcome(&self, def: &Definition, before: &Saga, after: &Saga, events: &[sagas::Event], created_at_us: i64) {
        for event in events {
            match &event.change {
                Change::AttemptTimedOut { .. } => {
                    metrics::counter!("eso_command_timeouts_total", "state" => before.state.clone()).increment(1);
                }
                Change::Retried { .. } => {
                    metrics::counter!("eso_command_retries_total", "state" => before.state.clone()).increment(1);
                }
                Change::Moved { cause: Cause::Timeout { .. }, .. } => {
                    metrics::counter!("eso_command_timeouts_total", "state" => before.state.clone()).increment(1);
                    metrics::counter!("eso_steps_given_up_total", "state" => before.state.clone()).increment(1);
                }
                _ => {}
            }
        }
        if after.terminal && !before.terminal {
            let seconds = (clock::now_us() - created_at_us).max(0) as f64 / 1e6;
            metrics::counter!("eso_sagas_finished_total", "definition" => def.name.clone(), "outcome" => after.state.clone()).increment(1);
            metrics::histogram!("eso_saga_duration_seconds", "definition" => def.name.clone(), "outcome" => after.state.clone()).record(seconds);
            tracing::info!(saga.id = %after.id, state = %after.state, status = %after.status, "saga finished");
        }
    }

    /// Sends each command in its own task (its reply steps the saga). The
    /// request span is a child of the current span in the trace (one trace
    /// per saga), but not in memory: see [`observability::propagation::follow`].
    fn dispatch(&self, commands: Vec<Command>) {
        let parent = tracing::Span::current();
        for command in commands {
            let span = tracing::info_span!(
                parent: None,
                "command.send",
                otel.name = %format!("{} request", command.subject),
                otel.kind = "client",
                messaging.system = self.inner.bus.system(),
                messaging.operation.type = "send",
                messaging.destination.name = %command.subject,
                command.id = %command.id,
                command.attempt = command.attempt,
                saga.id = %command.saga_id,
                outcome = tracing::field::Empty,
            );
            observability::propagation::follow(&span, &parent);
            let runtime = self.clone();
            self.inner.tasks.spawn(async move { runtime.send(command).await }.instrument(span));
        }
    }

    async fn send(&self, command: Command) {
        let span = tracing::Span::current();
        let Command { id, saga_id, subject, payload, attempt, timeout_ms } = command;
        let mut headers = HeaderMap::new();
        observability::propagation::inject_nats(&span, &mut headers);
        headers.insert(HEADER_COMMAND_ID, id.to_string().as_str());
        headers.insert(HEADER_SAGA_ID, saga_id.to_string().as_str());
        // The payload is serialised and dropped here, not kept while the
        // task waits for its reply: thousands of commands can be waiting.
        let body = match serde_json::to_vec(&CommandMessage { command_id: id, saga_id, attempt, payload }) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                // Not sent empty: the saga's deadline tries again, and the
                // count says why it never gets an answer.
                tracing::error!(error = %e, "the command does not serialise; not sent");
                metrics::counter!("eso_serialization_errors_total", "what" => "command").increment(1);
                return;
            }
        };
        let timeout = Duration::from_millis(timeout_ms);
        let reply = match self.inner.bus.request(&subject, headers, body, timeout).await {
            Ok(reply) => reply,
            Err(e) => {
                // The saga's deadline retries it; until then it waits on a
                // participant (or on no one), not on this replica.
                self.inner.admission.settle(saga_id, false);
                let level_is_normal = matches!(e, BusError::Timeout(_) | BusError::NoResponders(_));
                if level_is_normal {
                    tracing::info!(error = %e, "no reply; the saga's deadline will retry");
                } else {
                    tracing::warn!(error = %e, "request failed; the saga's deadline will retry");
                }
                return;
            }
        };
        // Waits with the reply still in bytes. Never closed, so this cannot
        // fail; without a permit, step anyway.
        let _permit = self.inner.reply_steps.acquire().await.ok();
        let reply: ReplyMessage = match serde_json::from_slice(&reply) {
            Ok(r) => r,
            Err(_) => {
                let why = serde_json::from_slice::<ErrorReply>(&reply).map_or_else(|_| "unreadable reply".to_string(), |e| e.error);
                tracing::warn!(error = %why, "participant could not answer; the saga's deadline will retry");
                self.inner.admission.settle(saga_id, false);
                return;
            }
        };
        span.record("outcome", reply.outcome.as_str());
        let input = Input::Reply { command_id: id, outcome: reply.outcome, data: reply.data };
        // Boxed: a task waits on its request far longer than it steps, and
        // inline, the step's state would size every waiting task's future.
        let step = Box::pin(self.advance(saga_id, input, format!("reply:{id}")));
        if let Err(e) = step.await {
            tracing::warn!(error = %e, "reply not recorded; the saga's deadline will retry");
        }
    }

    /// Wakes sagas whose deadline passed, until `shutdown`; now and then
    /// forgets idempotency keys past their lifetime.
    pub async fn run_timers(self, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep = Instant::now();
        let mut last_admission_tick = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            if last_admission_tick.elapsed() >= ADMISSION_TICK {
                last_admission_tick = Instant::now();
                self.inner.admission.tick();
            }
            if last_sweep.elapsed() >= KEY_SWEEP_INTERVAL {
                last_sweep = Instant::now();
                match self.inner.store.forget_keys(self.keys_expired_before()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(keys = n, "expired idempotency keys forgotten"),
                    Err(e) => tracing::warn!(error = %e, "cannot forget expired idempotency keys"),
                }
            }
            loop {
                let now = clock::now();
                let due = match self.inner.store.claim_due(now.0, TIMER_LEASE_MS, TIMER_BATCH).await {
                    Ok(due) => due,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot claim due timers");
                        break;
                    }
                };
                let count = due.len();
                let steps = due.into_iter().map(|row| {
                    let span = tracing::info_span!("saga.timer", otel.name = "saga timer", saga.id = %row.saga.id, saga.state.from = %row.saga.state);
                    observability::propagation::set_parent_from_map(&span, &row.trace);
                    let runtime = self.clone();
                    async move {
                        let id = row.saga.id;
                        // The claimed row is fresher than any cache entry.
                        if let Err(e) = runtime.advance_from(id, Some(row), Input::Deadline, TIMER_CAUSATION.into()).await {
                            tracing::warn!(error = %e, "timer step failed; it will fire again after its lease");
                        }
                    }
                    .instrument(span)
                });
                futures::future::join_all(steps).await;
                if (count as i64) < TIMER_BATCH {
                    break;
                }
            }
        }
    }

    /// Idempotency keys recorded before this time (Unix microseconds) are
    /// past their lifetime.
    fn keys_expired_before(&self) -> i64 {
        clock::now_us().saturating_sub(i64::try_from(self.inner.key_lifetime.as_micros()).unwrap_or(i64::MAX))
    }

    /// Waits for command round trips in flight (bounded by their timeouts).
    pub async fn drain(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}
