-- The trip agency's bookings (the trip saga's participant). As for
-- payments, the command id is the key: a repeated command finds the first
-- answer; a cancellation that arrives before its booking records it
-- `voided`, so the late booking is answered `full`.
CREATE TABLE IF NOT EXISTS trip_bookings (
    command_id TEXT   PRIMARY KEY,
    trip_id    TEXT   NOT NULL,
    kind       TEXT   NOT NULL,   -- flight | hotel
    outcome    TEXT   NOT NULL,   -- booked | full | voided
    cancelled  BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
