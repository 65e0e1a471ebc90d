-- The event store: the source of truth, and the outbox the relay publishes.
-- Ids are UUID text and payloads JSON text so that one set of queries serves
-- both Postgres and the embedded SQLite store (cast with `data::jsonb`).
CREATE TABLE events (
    position     BIGSERIAL PRIMARY KEY,
    event_id     TEXT   NOT NULL UNIQUE,
    stream_id    TEXT   NOT NULL,
    version      BIGINT NOT NULL,
    event_type   TEXT   NOT NULL,
    data         TEXT   NOT NULL,
    metadata     TEXT   NOT NULL,
    recorded_at  BIGINT NOT NULL,           -- Unix microseconds, as every *_at column
    -- The relay reads in (tx_id, position) order, only below the oldest
    -- running transaction: positions can commit out of order, but no row
    -- can appear below that horizon any more, so nothing is skipped.
    tx_id        xid8   NOT NULL DEFAULT pg_current_xact_id(),
    UNIQUE (stream_id, version)
);
CREATE INDEX events_relay ON events (tx_id, position);

-- One row per saga: its folded state (so a step needs no replay), the
-- stream head used for optimistic concurrency, and its next deadline.
CREATE TABLE sagas (
    id               TEXT   PRIMARY KEY,
    definition       TEXT   NOT NULL,
    definition_version BIGINT NOT NULL,
    state            TEXT   NOT NULL,
    status           TEXT   NOT NULL,
    terminal         BIGINT NOT NULL,
    version          BIGINT NOT NULL,
    deadline         BIGINT,
    snapshot         TEXT   NOT NULL,
    trace            TEXT   NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX sagas_due ON sagas (deadline) WHERE terminal = 0;

-- Read model of the order saga, written in the transaction of its events.
CREATE TABLE orders (
    id           TEXT   PRIMARY KEY,
    amount_cents BIGINT NOT NULL,
    user_id      TEXT   NOT NULL,
    payee_id     TEXT   NOT NULL,
    description  TEXT   NOT NULL,
    status       TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

CREATE TABLE idempotency_keys (
    key        TEXT   PRIMARY KEY,
    saga_id    TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);

-- Every definition version a saga has started on, so running sagas keep
-- their version after the file changes, and a changed file must bump it.
CREATE TABLE saga_definitions (
    name       TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    hash       TEXT   NOT NULL,
    source     TEXT   NOT NULL,
    loaded_at  BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE outbox_cursor (
    relay    TEXT   PRIMARY KEY,
    tx       TEXT   NOT NULL DEFAULT '0',  -- xid8 as text; always 0 on SQLite
    position BIGINT NOT NULL
);
