-- Fleets, their signed versions, the data planes that serve them, and the audit trail.

CREATE TABLE fleets (
    name         TEXT PRIMARY KEY,
    head_version BIGINT NOT NULL DEFAULT 0,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per version: the exact signed bytes and who made them. Never updated or deleted.
CREATE TABLE versions (
    fleet          TEXT NOT NULL REFERENCES fleets (name),
    version        BIGINT NOT NULL CHECK (version > 0),
    payload        BYTEA NOT NULL,
    signatures     JSONB NOT NULL,
    sha256         TEXT NOT NULL,
    parent_version BIGINT NOT NULL DEFAULT 0,
    author         TEXT NOT NULL,
    message        TEXT NOT NULL,
    origin         TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (fleet, version)
);

CREATE TABLE data_planes (
    fleet             TEXT NOT NULL,
    node_id           TEXT NOT NULL,
    labels            JSONB NOT NULL DEFAULT '{}',
    build             TEXT NOT NULL DEFAULT '',
    active_version    BIGINT NOT NULL DEFAULT 0,
    last_ack_version  BIGINT NOT NULL DEFAULT 0,
    last_nack_version BIGINT NOT NULL DEFAULT 0,
    last_nack_reason  TEXT NOT NULL DEFAULT '',
    last_nack_details JSONB NOT NULL DEFAULT '[]',
    connected         BOOLEAN NOT NULL DEFAULT false,
    last_seen         TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (fleet, node_id)
);

-- Append-only, hash-chained: each row's hash covers its fields and the previous row's hash, so
-- an edited or removed row breaks the chain.
CREATE TABLE audit_events (
    id        BIGSERIAL PRIMARY KEY,
    at        BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    fleet     TEXT NOT NULL,
    version   BIGINT,
    detail    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX audit_events_fleet_at ON audit_events (fleet, at);

CREATE FUNCTION sluice_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are immutable', TG_TABLE_NAME;
END;
$$;

CREATE TRIGGER versions_immutable BEFORE UPDATE OR DELETE ON versions
    FOR EACH ROW EXECUTE FUNCTION sluice_refuse_change();
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION sluice_refuse_change();
