-- Participants' own tables. The command id is the key: a repeated command
-- finds the first answer instead of charging again.
CREATE TABLE payments (
    command_id  TEXT   PRIMARY KEY,
    order_id    TEXT   NOT NULL,
    amount      TEXT   NOT NULL,
    outcome     TEXT   NOT NULL,   -- confirmed | declined | voided (refunded before it arrived)
    refunded    BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL,
    refunded_at BIGINT
);

CREATE TABLE deliveries (
    command_id TEXT   PRIMARY KEY,
    order_id   TEXT   NOT NULL,
    outcome    TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
