package consumers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// store holds the step protocol's SQL: every state change of a job and of
// its runs happens here, each in one transaction.
type store struct {
	pool    *pgxpool.Pool
	step    string // S
	trigger string // T
	lease   time.Duration
}

// run is one attempt of the step on one job, held by this worker.
type run struct {
	id      int64
	attempt int
	job     Job
}

// claim moves the job (T, done) → (S, running) and opens attempt 1+ of the
// run with a lease, in one transaction. ok is false when the job is not at
// (T, done): the event was stale or a duplicate.
func (s *store) claim(ctx context.Context, jobID, worker string, triggerLSN int64, triggerCommitMs int64) (r run, ok bool, err error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return r, false, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	var payload, results []byte
	err = tx.QueryRow(ctx, `UPDATE jobs SET current_step = $2, status = 'running', error = NULL, updated_at = now()
		WHERE job_id = $1 AND current_step = $3 AND status = 'done'
		RETURNING coalesce(payload, 'null'::jsonb)::text, coalesce(results, '{}'::jsonb)::text`,
		jobID, s.step, s.trigger).Scan(&payload, &results)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, false, nil
	}
	if err != nil {
		return r, false, fmt.Errorf("claim: %w", err)
	}
	r.job = Job{JobID: jobID, Step: s.step, Payload: payload, Results: results}
	err = tx.QueryRow(ctx, `INSERT INTO jobstream_runs (job_id, step, attempt, worker, trigger_lsn, trigger_commit_at, lease_expires_at)
		VALUES ($1, $2, (SELECT coalesce(max(attempt), 0) + 1 FROM jobstream_runs WHERE job_id = $1 AND step = $2),
		        $3, $4, to_timestamp($5::float8 / 1000), now() + make_interval(secs => $6))
		RETURNING run_id, attempt`,
		jobID, s.step, worker, fmt.Sprint(triggerLSN), triggerCommitMs, s.lease.Seconds()).Scan(&r.id, &r.attempt)
	if err != nil {
		return r, false, fmt.Errorf("open run: %w", err)
	}
	r.job.Attempt = r.attempt
	return r, true, tx.Commit(ctx)
}

// renew extends the run's lease; held is false when the run was closed by
// someone else (the sweeper): the attempt is fenced.
func (s *store) renew(ctx context.Context, runID int64) (held bool, err error) {
	tag, err := s.pool.Exec(ctx, `UPDATE jobstream_runs SET lease_expires_at = now() + make_interval(secs => $2)
		WHERE run_id = $1 AND finished_at IS NULL`, runID, s.lease.Seconds())
	return tag.RowsAffected() == 1, err
}

// closeRun finishes the run with outcome if this attempt still holds it.
func closeRun(ctx context.Context, tx pgx.Tx, runID int64, outcome, errText string) (held bool, err error) {
	tag, err := tx.Exec(ctx, `UPDATE jobstream_runs SET finished_at = now(), outcome = $2, error = nullif($3, '')
		WHERE run_id = $1 AND finished_at IS NULL`, runID, outcome, errText)
	return tag.RowsAffected() == 1, err
}

// complete closes the run and moves the job (S, running) → (S, done) with the
// result merged into results under S, only while this attempt holds the run.
// held is false when the attempt was fenced: its result is discarded.
func (s *store) complete(ctx context.Context, r run, result json.RawMessage) (held bool, err error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	if held, err = closeRun(ctx, tx, r.id, "done", ""); err != nil || !held {
		return false, err
	}
	tag, err := tx.Exec(ctx, `UPDATE jobs SET status = 'done', updated_at = now(),
		results = coalesce(results, '{}'::jsonb) || jsonb_build_object($2::text, $3::jsonb)
		WHERE job_id = $1 AND current_step = $2 AND status = 'running'`, r.job.JobID, s.step, string(result))
	if err != nil {
		return false, fmt.Errorf("complete: %w", err)
	}
	if tag.RowsAffected() == 0 {
		// The job was moved or deleted under us: record that, keep the job as it is.
		tx.Rollback(ctx) //nolint:errcheck // replaced by the next statement
		_, err := s.pool.Exec(ctx, `UPDATE jobstream_runs SET finished_at = now(), outcome = 'discarded',
			error = 'job left (step, running) while the step ran' WHERE run_id = $1 AND finished_at IS NULL`, r.id)
		return false, err
	}
	return true, tx.Commit(ctx)
}

// retry closes a failed attempt and opens the next one, keeping the job at
// (S, running). held is false when the attempt was fenced.
func (s *store) retry(ctx context.Context, r run, worker string, cause error) (next run, held bool, err error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return next, false, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	if held, err = closeRun(ctx, tx, r.id, "failed", cause.Error()); err != nil || !held {
		return next, false, err
	}
	next = r
	err = tx.QueryRow(ctx, `INSERT INTO jobstream_runs (job_id, step, attempt, worker, trigger_lsn, trigger_commit_at, lease_expires_at)
		SELECT job_id, step, attempt + 1, $2, trigger_lsn, trigger_commit_at, now() + make_interval(secs => $3) FROM jobstream_runs WHERE run_id = $1
		RETURNING run_id, attempt`, r.id, worker, s.lease.Seconds()).Scan(&next.id, &next.attempt)
	if err != nil {
		return next, false, fmt.Errorf("open retry run: %w", err)
	}
	next.job.Attempt = next.attempt
	return next, true, tx.Commit(ctx)
}

// fail closes the last attempt and moves the job to (S, failed) with the error.
func (s *store) fail(ctx context.Context, r run, cause error) (held bool, err error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return false, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	if held, err = closeRun(ctx, tx, r.id, "failed", cause.Error()); err != nil || !held {
		return false, err
	}
	if _, err := tx.Exec(ctx, `UPDATE jobs SET status = 'failed', error = $3, updated_at = now()
		WHERE job_id = $1 AND current_step = $2 AND status = 'running'`, r.job.JobID, s.step, cause.Error()); err != nil {
		return false, fmt.Errorf("fail job: %w", err)
	}
	return true, tx.Commit(ctx)
}

// release gives a run back at once (graceful shutdown past the grace): the
// run is closed and the job rewound to (T, done), which re-delivers it.
func (s *store) release(ctx context.Context, r run) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	if held, err := closeRun(ctx, tx, r.id, "released", "worker shut down before the step finished"); err != nil || !held {
		return err
	}
	if _, err := tx.Exec(ctx, `UPDATE jobs SET current_step = $3, status = 'done', updated_at = now()
		WHERE job_id = $1 AND current_step = $2 AND status = 'running'`, r.job.JobID, s.step, s.trigger); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// sweep closes the step's runs whose lease expired (their worker died) and
// rewinds each job to (T, done) so it is delivered again, or fails it when
// its attempts are spent. It returns how many jobs it rewound or failed.
func (s *store) sweep(ctx context.Context, maxAttempts int) (int64, error) {
	tag, err := s.pool.Exec(ctx, `WITH expired AS (
		UPDATE jobstream_runs SET finished_at = now(), outcome = 'expired',
			error = 'lease expired: worker ' || worker || ' stopped renewing it'
		WHERE step = $1 AND finished_at IS NULL AND lease_expires_at < now()
		RETURNING job_id, attempt)
	UPDATE jobs j SET
		current_step = CASE WHEN e.attempt >= $3 THEN j.current_step ELSE $2 END,
		status = CASE WHEN e.attempt >= $3 THEN 'failed' ELSE 'done' END,
		error = CASE WHEN e.attempt >= $3 THEN 'lease expired on attempt ' || e.attempt || ' of ' || $3 ELSE j.error END,
		updated_at = now()
	FROM expired e WHERE j.job_id = e.job_id AND j.current_step = $1 AND j.status = 'running'`,
		s.step, s.trigger, maxAttempts)
	return tag.RowsAffected(), err
}
