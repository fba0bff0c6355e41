-- Progressive rollouts. A rollout walks one version of a fleet through its strategy's steps; at
-- most one per fleet is unfinished. Every change of a rollout is an update fenced by the leader's
-- term and by the state it expects, and is audited in the same transaction.

CREATE TABLE rollouts (
    id               BIGSERIAL PRIMARY KEY,
    fleet            TEXT NOT NULL,
    version          BIGINT NOT NULL,
    -- What the fleet served before: the baseline, and the content a rollback publishes again.
    from_version     BIGINT NOT NULL,
    strategy         JSONB NOT NULL,
    state            TEXT NOT NULL CHECK (state IN
                         ('pending', 'progressing', 'paused', 'rolling_back', 'succeeded', 'failed', 'aborted')),
    step             INT NOT NULL DEFAULT 0,
    step_started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    reason           TEXT NOT NULL DEFAULT '',
    -- The version a rollback published, if one did.
    rollback_version BIGINT,
    -- The leader term that made the latest change.
    term             BIGINT NOT NULL DEFAULT 0,
    created_by       TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX rollouts_one_unfinished ON rollouts (fleet)
    WHERE state IN ('pending', 'progressing', 'paused', 'rolling_back');

-- The data planes a rollout has moved onto its version, and at which step: a node keeps its
-- cohort across reconnects and control-plane restarts, and a rollback knows whom to move back.
CREATE TABLE rollout_nodes (
    rollout_id BIGINT NOT NULL REFERENCES rollouts (id),
    node_id    TEXT NOT NULL,
    step       INT NOT NULL,
    PRIMARY KEY (rollout_id, node_id)
);

-- Which control plane drives rollouts. The driver holds a session advisory lock; whoever takes it
-- raises `term`, and every rollout write checks the term it was given against this one, so a
-- deposed leader that has not noticed yet cannot write.
CREATE TABLE rollout_leader (
    id     INT PRIMARY KEY CHECK (id = 1),
    term   BIGINT NOT NULL,
    holder TEXT NOT NULL,
    since  TIMESTAMPTZ NOT NULL
);
INSERT INTO rollout_leader (id, term, holder, since) VALUES (1, 0, '', now());
