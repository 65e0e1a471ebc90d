-- The index on `position` goes: nothing looks an event up by its position
-- alone. The relay reads in (tx_id, position) order through its own index
-- (`events_relay`), the outbox lag reads the position sequence, and every
-- read of a stream goes through the unique (stream_id, version), which
-- every append maintains anyway and which now also identifies a row to
-- logical replication. An index fewer is a b-tree insert fewer for each of
-- a saga's 3 or 4 events (docs/benchmarks.md, "What a saga costs").
-- Positions stay unique: only the sequence gives them. Dropping an index
-- takes no time and rewrites nothing.
ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE events REPLICA IDENTITY USING INDEX events_stream_id_version_key;
