-- Any saga, not only orders: idempotency keys per definition with the
-- request they were given for, and the index the saga list walks.

-- A key is unique per definition (`scope`); `fingerprint` identifies the
-- request body, so a key reused for another request is refused. The keys
-- of earlier releases (all the order saga's, without fingerprints) are
-- copied; their table stays for one release, so pods of the previous
-- release keep working through a rolling update (their new keys are not
-- seen by this release's pods meanwhile).
CREATE TABLE saga_keys (
    scope       TEXT   NOT NULL,
    key         TEXT   NOT NULL,
    saga_id     TEXT   NOT NULL,
    fingerprint TEXT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
INSERT INTO saga_keys (scope, key, saga_id, fingerprint, created_at)
    SELECT 'order', key, saga_id, NULL, created_at FROM idempotency_keys;
-- Expired keys are deleted by age.
CREATE INDEX saga_keys_age ON saga_keys (created_at);

-- GET /sagas: newest first within one status of one definition. A list
-- of several statuses (or of a whole definition, whose statuses the loaded
-- definitions name) walks this backwards from its cursor once per status
-- and merges; one index instead of one per filter, since every index costs
-- each step of every saga a write.
CREATE INDEX sagas_by_status ON sagas (definition, status, created_at, id);

-- Nothing looks an event up by its id, and the unique (stream_id, version)
-- index is what keeps the log consistent; ids are UUIDv7 with 74 random
-- bits after their millisecond. So the id's own index goes: each event
-- costs one index write fewer, which pays for the list index above.
-- SQLite cannot drop a column's UNIQUE, so the table is rebuilt without
-- it: positions are copied as they are (the relay's cursor names them),
-- and AUTOINCREMENT goes on from the highest position ever given.
CREATE TABLE events_v3 (
    position     INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     TEXT   NOT NULL,
    stream_id    TEXT   NOT NULL,
    version      BIGINT NOT NULL,
    event_type   TEXT   NOT NULL,
    data         TEXT   NOT NULL,
    metadata     TEXT   NOT NULL,
    recorded_at  BIGINT NOT NULL,           -- Unix microseconds, as every *_at column
    UNIQUE (stream_id, version)
);
INSERT INTO events_v3 (position, event_id, stream_id, version, event_type, data, metadata, recorded_at)
    SELECT position, event_id, stream_id, version, event_type, data, metadata, recorded_at FROM events ORDER BY position;
-- Even a position whose event is gone is never given again.
DELETE FROM sqlite_sequence WHERE name = 'events_v3';
INSERT INTO sqlite_sequence (name, seq) SELECT 'events_v3', seq FROM sqlite_sequence WHERE name = 'events';
DROP TABLE events;
ALTER TABLE events_v3 RENAME TO events;
