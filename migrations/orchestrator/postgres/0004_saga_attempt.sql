-- GET /sagas?min_attempt=: the attempt of the command a saga waits on
-- (NULL when it waits on none), written with every step like the other
-- columns the list reads. No index: the list reaches rows through
-- sagas_by_status, and a live status's part of it is small (see
-- orchestrator/src/store/list.rs).
ALTER TABLE sagas ADD COLUMN attempt BIGINT;
-- Only a live saga waits on a command; finished rows keep NULL, so the
-- millions of them are not rewritten. Sagas stepped by pods of the previous
-- release during a rolling update keep the attempt they had here until
-- their next step on this release (`eso replay` sets it at once).
UPDATE sagas SET attempt = (snapshot::jsonb #>> '{pending,attempt}')::bigint WHERE terminal = 0;
