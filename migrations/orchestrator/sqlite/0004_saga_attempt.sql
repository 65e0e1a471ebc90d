-- GET /sagas?min_attempt=: the attempt of the command a saga waits on
-- (NULL when it waits on none), written with every step like the other
-- columns the list reads. No index: the list reaches rows through
-- sagas_by_status, and a live status's part of it is small (see
-- orchestrator/src/store/list.rs).
ALTER TABLE sagas ADD COLUMN attempt BIGINT;
-- Only a live saga waits on a command; finished rows keep NULL.
UPDATE sagas SET attempt = json_extract(snapshot, '$.pending.attempt') WHERE terminal = 0;
