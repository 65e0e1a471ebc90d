-- Retiring a definition version (`POST /definitions/{name}/versions/{v}/retire`,
-- `eso saga retire`): allowed once no saga is live on it and a newer version
-- takes new sagas. A retired version is no longer loaded at start-up (nor
-- recorded again from a file still in SAGAS_DIR); its history stays here.
ALTER TABLE saga_definitions ADD COLUMN retired_at BIGINT;
