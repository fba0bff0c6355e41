-- The latest traffic report of each data plane, as it sent it (an encoded `sluice.v1.Report`).
-- One row per node, replaced by the node's next report, so the table grows with the fleet and
-- not with time. Whether the node is connected, and since when it is silent, is `data_planes`'.

CREATE TABLE reports (
    fleet          TEXT NOT NULL,
    node_id        TEXT NOT NULL,
    -- Unix seconds, by the data plane's clock.
    at             BIGINT NOT NULL,
    active_version BIGINT NOT NULL,
    report         BYTEA NOT NULL,
    received_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (fleet, node_id)
);
