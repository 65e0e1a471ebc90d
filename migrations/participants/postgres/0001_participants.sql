-- Participants' own tables. The command id is the key: a repeated command
-- finds the first answer instead of charging again. IF NOT EXISTS: databases
-- made before the participants had migrations of their own already have
-- these tables (from the store's former 0002_participants).
CREATE TABLE IF NOT EXISTS payments (
    command_id  TEXT   PRIMARY KEY,
    order_id    TEXT   NOT NULL,
    amount      TEXT   NOT NULL,
    outcome     TEXT   NOT NULL,   -- confirmed | declined | voided (refunded before it arrived)
    refunded    BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL,
    refunded_at BIGINT
);

CREATE TABLE IF NOT EXISTS deliveries (
    command_id TEXT   PRIMARY KEY,
    order_id   TEXT   NOT NULL,
    outcome    TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
