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
    error            text
);
CREATE INDEX IF NOT EXISTS jobstream_runs_open ON jobstream_runs (step, lease_expires_at) WHERE finished_at IS NULL;
-- The dead letter a failed run owes, and when the broker took it. A worker
-- that dies between failing a job and writing its dead letter leaves the
-- letter owed; the step's sweeper writes it.
ALTER TABLE jobstream_runs ADD COLUMN IF NOT EXISTS dead_letter text;
ALTER TABLE jobstream_runs ADD COLUMN IF NOT EXISTS dead_lettered_at timestamptz;
CREATE INDEX IF NOT EXISTS jobstream_runs_letters_owed ON jobstream_runs (step, finished_at)
    WHERE dead_letter IS NOT NULL AND dead_lettered_at IS NULL;
-- Attempts count per attempt chain: a chain starts each time the job reaches
-- (T, done) by a step's success, a replay, a requeue by hand or a new row, so a
-- rerun gets its full retries. Only a rewind by the sweeper or a release at a
-- stop continues a chain; the closing run records the rewinding transaction's
-- id (rewind_xid), and a claim continues the chain only while the job's row is
-- the version that transaction wrote.
ALTER TABLE jobstream_runs ADD COLUMN IF NOT EXISTS chain int NOT NULL DEFAULT 1;
ALTER TABLE jobstream_runs ADD COLUMN IF NOT EXISTS rewind_xid bigint;
ALTER TABLE jobstream_runs DROP CONSTRAINT IF EXISTS jobstream_runs_job_id_step_attempt_key;
CREATE UNIQUE INDEX IF NOT EXISTS jobstream_runs_chain_attempt ON jobstream_runs (job_id, step, chain, attempt);
-- Retention: finished runs older than the configured age are pruned.
CREATE INDEX IF NOT EXISTS jobstream_runs_finished ON jobstream_runs (finished_at) WHERE finished_at IS NOT NULL;
