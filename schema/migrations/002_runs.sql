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
