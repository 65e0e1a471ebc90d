-- Any saga, not only orders: idempotency keys per definition with the
-- request they were given for, and the indexes the saga list walks.

-- A key is unique per definition (`scope`); `fingerprint` identifies the
-- request body, so a key reused for another request is refused. Keys of
-- earlier versions were all the order saga's and have no fingerprint.
CREATE TABLE idempotency_keys_v2 (
    scope       TEXT   NOT NULL,
    key         TEXT   NOT NULL,
    saga_id     TEXT   NOT NULL,
    fingerprint TEXT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
INSERT INTO idempotency_keys_v2 (scope, key, saga_id, fingerprint, created_at)
    SELECT 'order', key, saga_id, NULL, created_at FROM idempotency_keys;
DROP TABLE idempotency_keys;
ALTER TABLE idempotency_keys_v2 RENAME TO idempotency_keys;
-- Expired keys are deleted by age.
CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);

-- GET /sagas: newest first within one status of one definition. A list
-- of several statuses (or of a whole definition, whose statuses the loaded
-- definitions name) walks this backwards from its cursor once per status
-- and merges; one index instead of one per filter, since every index costs
-- each step of every saga a write.
CREATE INDEX sagas_by_status ON sagas (definition, status, created_at, id);
