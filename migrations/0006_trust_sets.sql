-- Trusted-key sets signed offline by root keys, pushed to data planes. Never updated or deleted.
CREATE TABLE trust_sets (
    version    BIGINT PRIMARY KEY CHECK (version > 0),
    statement  BYTEA NOT NULL,
    signatures JSONB NOT NULL,
    created_by TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TRIGGER trust_sets_immutable BEFORE UPDATE OR DELETE ON trust_sets
    FOR EACH ROW EXECUTE FUNCTION sluice_refuse_change();

-- The trust set version each data plane last reported in force (0: its trusted-keys file).
ALTER TABLE data_planes ADD COLUMN trust_version BIGINT NOT NULL DEFAULT 0;

-- The keys whose signatures each data plane's active bundle carries, comma-separated, as it
-- last reported: a rotation waits for the new key to reach every cache before retiring the old.
ALTER TABLE data_planes ADD COLUMN signature_key_ids TEXT NOT NULL DEFAULT '';
