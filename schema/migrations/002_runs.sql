-- jobstream_runs: one row per attempt of a step. Leases and heartbeats live here,
-- never on jobs, so that a heartbeat never makes a change event.
CREATE TABLE IF NOT EXISTS jobstream_runs (
    run_id           bigserial PRIMARY KEY,
    job_id           text NOT NULL,
    step             text NOT NULL,
    attempt          int NOT NULL,
    worker           text NOT NULL,
    trigger_lsn      text,
    trigger_commit_at timestamptz,
    lease_expires_at timestamptz NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    outcome          text,
    error            text,
    UNIQUE (job_id, step, attempt)
);
CREATE INDEX IF NOT EXISTS jobstream_runs_open ON jobstream_runs (step, lease_expires_at) WHERE finished_at IS NULL;
-- The dead letter a failed run owes, and when the broker took it. A worker
-- that dies between failing a job and writing its dead letter leaves the
-- letter owed; the step's sweeper writes it.
ALTER TABLE jobstream_runs ADD COLUMN IF NOT EXISTS dead_letter text;
ALTER TABLE jobstream_runs ADD COLUMN IF NOT EXISTS dead_lettered_at timestamptz;
CREATE INDEX IF NOT EXISTS jobstream_runs_letters_owed ON jobstream_runs (step, finished_at)
    WHERE dead_letter IS NOT NULL AND dead_lettered_at IS NULL;
