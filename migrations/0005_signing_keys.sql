-- Signing keys agreed by every control plane on the database, and signatures added to versions
-- after they were stored (a key rotation signs the versions still in use with the new key).
--
-- Only public halves live here: every replica holds the private keys as files. A replica signs
-- with exactly the active keys listed here, so replicas never disagree mid-rotation.

CREATE TABLE signing_keys (
    key_id     TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('active', 'retired')),
    added_by   TEXT NOT NULL,
    added_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    retired_by TEXT NOT NULL DEFAULT '',
    retired_at TIMESTAMPTZ
);

-- Add-only: a version's signatures are its row's `signatures` plus these. Payload bytes never change.
CREATE TABLE version_signatures (
    fleet     TEXT NOT NULL,
    version   BIGINT NOT NULL,
    key_id    TEXT NOT NULL,
    signature BYTEA NOT NULL,
    added_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (fleet, version, key_id),
    FOREIGN KEY (fleet, version) REFERENCES versions (fleet, version)
);

CREATE TRIGGER version_signatures_add_only BEFORE UPDATE OR DELETE ON version_signatures
    FOR EACH ROW EXECUTE FUNCTION sluice_refuse_change();

-- When the freshness statement of a data plane's active version lapses, as it last reported
-- (0: unknown, or a data plane of an earlier build).
ALTER TABLE data_planes ADD COLUMN freshness_expires_at BIGINT NOT NULL DEFAULT 0;
