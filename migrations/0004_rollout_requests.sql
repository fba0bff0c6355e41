-- Operator actions on a rollout (pause, resume, promote, abort) are requests any control plane
-- records; the rollout leader carries them out, so every change of state stays with one writer.
ALTER TABLE rollouts
    ADD COLUMN requested    TEXT NOT NULL DEFAULT ''
        CHECK (requested IN ('', 'pause', 'resume', 'promote', 'abort')),
    ADD COLUMN requested_by TEXT NOT NULL DEFAULT '',
    -- Each data plane's cumulative traffic counters when the current step began, so any control
    -- plane can judge the step on what was served since.
    ADD COLUMN step_baseline JSONB NOT NULL DEFAULT '{}';

-- The strategy an apply uses when it names none; NULL: versions go to every data plane at once.
ALTER TABLE fleets ADD COLUMN default_strategy JSONB;
