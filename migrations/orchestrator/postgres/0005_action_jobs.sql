-- Bulk operator actions (`POST /actions`): a job runs one action on every
-- saga a list filter matched when it was created, at a bounded rate, on
-- whichever replica holds its lease, and resumes after a crash where it
-- stopped. Each saga takes the action once: the job's key is recorded in
-- the saga's own events (see sagas::Act), so a saga acted on just before a
-- crash, and not yet marked here, is not acted on again.
CREATE TABLE action_jobs (
    id          TEXT   PRIMARY KEY,
    action      TEXT   NOT NULL,            -- sagas::Action as JSON
    reason      TEXT   NOT NULL,
    operator    TEXT   NOT NULL,
    filter      TEXT   NOT NULL,            -- the list filter, as given
    rate        BIGINT NOT NULL,            -- sagas per second
    status      TEXT   NOT NULL,            -- running | finished
    matched     BIGINT NOT NULL,
    done        BIGINT NOT NULL DEFAULT 0,
    refused     BIGINT NOT NULL DEFAULT 0,
    failed      BIGINT NOT NULL DEFAULT 0,
    lease_until BIGINT NOT NULL DEFAULT 0,  -- Unix ms; the holder works on it until then
    holder      TEXT,                       -- the replica holding the lease
    request_key TEXT   UNIQUE,              -- the request's Idempotency-Key, if it gave one
    fingerprint TEXT,                       -- of the request's body, to tell a retry from a reuse
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX action_jobs_running ON action_jobs (status, lease_until);

-- The sagas a job matched; `result` NULL until the action was taken
-- (`done`) or the saga's state refused it (`refused`, with why).
CREATE TABLE action_job_sagas (
    job      TEXT NOT NULL,
    saga_id  TEXT NOT NULL,
    result   TEXT,
    detail   TEXT,
    PRIMARY KEY (job, saga_id)
);
