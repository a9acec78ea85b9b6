package consumers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// store holds the step protocol's SQL: every state change of a job and of
// its runs happens here, each in one statement (one round trip, one
// transaction), so a crash between two of them leaves nothing half done.
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

// claim moves the job (T, done) → (S, running) and opens the next attempt
// of the run with a lease, in one statement. ok is false when the job is
// not at (T, done): the event was stale or a duplicate.
func (s *store) claim(ctx context.Context, jobID, worker string, triggerLSN, triggerCommitMs int64) (r run, ok bool, err error) {
	var payload, results string
	err = s.pool.QueryRow(ctx, `WITH j AS (
			UPDATE jobs SET current_step = $2, status = 'running', error = NULL, updated_at = now()
			WHERE job_id = $1 AND current_step = $3 AND status = 'done'
			RETURNING job_id, coalesce(payload, 'null'::jsonb)::text AS payload, coalesce(results, '{}'::jsonb)::text AS results),
		r AS (
			INSERT INTO jobstream_runs (job_id, step, attempt, worker, trigger_lsn, trigger_commit_at, lease_expires_at)
			SELECT job_id, $2, (SELECT coalesce(max(attempt), 0) + 1 FROM jobstream_runs WHERE job_id = $1 AND step = $2),
			       $4, $5, to_timestamp($6::float8 / 1000), now() + make_interval(secs => $7)
			FROM j
			RETURNING run_id, attempt)
		SELECT r.run_id, r.attempt, j.payload, j.results FROM j, r`,
		jobID, s.step, s.trigger, worker, strconv.FormatInt(triggerLSN, 10), triggerCommitMs, s.lease.Seconds()).
		Scan(&r.id, &r.attempt, &payload, &results)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, false, nil
	}
	if err != nil {
		return r, false, fmt.Errorf("claim: %w", err)
	}
	r.job = Job{JobID: jobID, Step: s.step, Attempt: r.attempt, Payload: json.RawMessage(payload), Results: json.RawMessage(results)}
	return r, true, nil
}

// renew extends the run's lease; held is false when the run was closed by
// someone else (the sweeper): the attempt is fenced.
func (s *store) renew(ctx context.Context, runID int64) (held bool, err error) {
	tag, err := s.pool.Exec(ctx, `UPDATE jobstream_runs SET lease_expires_at = now() + make_interval(secs => $2)
		WHERE run_id = $1 AND finished_at IS NULL`, runID, s.lease.Seconds())
	return tag.RowsAffected() == 1, err
}

// complete closes the run and moves the job (S, running) → (S, done) with the
// result merged into results under S, only while this attempt holds the run.
// held is false when the attempt was fenced: its result is discarded. If the
// job left (S, running) while the step ran (someone moved or deleted it), the
// run is closed as discarded and the job kept as it is.
func (s *store) complete(ctx context.Context, r run, result json.RawMessage) (held bool, err error) {
	var outcome string
	err = s.pool.QueryRow(ctx, `WITH r AS (
			SELECT run_id FROM jobstream_runs WHERE run_id = $1 AND finished_at IS NULL FOR UPDATE),
		j AS (
			UPDATE jobs SET status = 'done', updated_at = now(),
				results = coalesce(results, '{}'::jsonb) || jsonb_build_object($3::text, $4::jsonb)
			WHERE job_id = $2 AND current_step = $3 AND status = 'running' AND EXISTS (SELECT FROM r)
			RETURNING job_id),
		u AS (
			UPDATE jobstream_runs SET finished_at = now(),
				outcome = CASE WHEN EXISTS (SELECT FROM j) THEN 'done' ELSE 'discarded' END,
				error = CASE WHEN EXISTS (SELECT FROM j) THEN NULL ELSE 'job left (step, running) while the step ran' END
			WHERE run_id IN (SELECT run_id FROM r)
			RETURNING outcome)
		SELECT coalesce((SELECT outcome FROM u), 'fenced')`,
		r.id, r.job.JobID, s.step, string(result)).Scan(&outcome)
	if err != nil {
		return false, fmt.Errorf("complete: %w", err)
	}
	return outcome == "done", nil
}

// retry closes a failed attempt and opens the next one, keeping the job at
// (S, running), in one statement. held is false when the attempt was fenced.
func (s *store) retry(ctx context.Context, r run, worker string, cause error) (next run, held bool, err error) {
	next = r
	err = s.pool.QueryRow(ctx, `WITH c AS (
			UPDATE jobstream_runs SET finished_at = now(), outcome = 'failed', error = $2
			WHERE run_id = $1 AND finished_at IS NULL
			RETURNING job_id, step, attempt, trigger_lsn, trigger_commit_at)
		INSERT INTO jobstream_runs (job_id, step, attempt, worker, trigger_lsn, trigger_commit_at, lease_expires_at)
		SELECT job_id, step, attempt + 1, $3, trigger_lsn, trigger_commit_at, now() + make_interval(secs => $4) FROM c
		RETURNING run_id, attempt`, r.id, errorText(cause), worker, s.lease.Seconds()).Scan(&next.id, &next.attempt)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, false, nil
	}
	if err != nil {
		return r, false, fmt.Errorf("open retry run: %w", err)
	}
	next.job.Attempt = next.attempt
	return next, true, nil
}

// fail closes the last attempt and moves the job to (S, failed) with the
// error, in one statement. held is false when the attempt was fenced.
func (s *store) fail(ctx context.Context, r run, cause error) (held bool, err error) {
	var closed bool
	err = s.pool.QueryRow(ctx, `WITH c AS (
			UPDATE jobstream_runs SET finished_at = now(), outcome = 'failed', error = $4, dead_letter = $5
			WHERE run_id = $1 AND finished_at IS NULL
			RETURNING run_id),
		j AS (
			UPDATE jobs SET status = 'failed', error = $4, updated_at = now()
			WHERE job_id = $2 AND current_step = $3 AND status = 'running' AND EXISTS (SELECT FROM c))
		SELECT EXISTS (SELECT FROM c)`, r.id, r.job.JobID, s.step, errorText(cause), reasonStepFailed).Scan(&closed)
	if err != nil {
		return false, fmt.Errorf("fail job: %w", err)
	}
	return closed, nil
}

// release gives a run back at once (shutdown past the grace period): the
// run is closed and the job rewound to (T, done), which re-delivers it.
func (s *store) release(ctx context.Context, r run) error {
	_, err := s.pool.Exec(ctx, `WITH c AS (
			UPDATE jobstream_runs SET finished_at = now(), outcome = 'released',
				error = 'worker shut down before the step finished'
			WHERE run_id = $1 AND finished_at IS NULL
			RETURNING run_id)
		UPDATE jobs SET current_step = $4, status = 'done', updated_at = now()
		WHERE job_id = $2 AND current_step = $3 AND status = 'running' AND EXISTS (SELECT FROM c)`,
		r.id, r.job.JobID, s.step, s.trigger)
	if err != nil {
		return fmt.Errorf("release run: %w", err)
	}
	return nil
}

// swept is a run the sweeper closed because its lease expired.
type swept struct {
	runID   int64
	jobID   string
	attempt int
	worker  string
	failed  bool   // the job's attempts are spent: it is now (S, failed)
	rewound bool   // the job is back at (T, done) and will be delivered again
	errText string // the job's error when failed
	trigger string // the trigger event's LSN
}

// sweep closes the step's runs whose lease expired (their worker died) and
// rewinds each job to (T, done) so it is delivered again, or fails it when
// its attempts are spent. It returns the runs it closed.
func (s *store) sweep(ctx context.Context, maxAttempts int) ([]swept, error) {
	rows, err := s.pool.Query(ctx, `WITH expired AS (
			UPDATE jobstream_runs r SET finished_at = now(), outcome = 'expired',
				error = 'lease expired: worker ' || worker || ' stopped renewing it',
				dead_letter = CASE WHEN attempt >= $3 AND EXISTS (SELECT FROM jobs
					WHERE job_id = r.job_id AND current_step = $1 AND status = 'running') THEN $4 END
			WHERE step = $1 AND finished_at IS NULL AND lease_expires_at < now()
			RETURNING run_id, job_id, attempt, worker, coalesce(trigger_lsn, '') AS trigger_lsn),
		moved AS (
			UPDATE jobs j SET
				current_step = CASE WHEN e.attempt >= $3 THEN j.current_step ELSE $2 END,
				status = CASE WHEN e.attempt >= $3 THEN 'failed' ELSE 'done' END,
				error = CASE WHEN e.attempt >= $3 THEN 'lease expired on attempt ' || e.attempt || ' of ' || $3 ELSE j.error END,
				updated_at = now()
			FROM expired e WHERE j.job_id = e.job_id AND j.current_step = $1 AND j.status = 'running'
			RETURNING j.job_id, j.status, coalesce(j.error, '') AS error)
		SELECT e.run_id, e.job_id, e.attempt, e.worker, e.trigger_lsn, coalesce(m.status, ''), coalesce(m.error, '')
		FROM expired e LEFT JOIN moved m USING (job_id)`,
		s.step, s.trigger, maxAttempts, reasonLeaseExpired)
	if err != nil {
		return nil, fmt.Errorf("sweep: %w", err)
	}
	var out []swept
	for rows.Next() {
		var sw swept
		var status string
		if err := rows.Scan(&sw.runID, &sw.jobID, &sw.attempt, &sw.worker, &sw.trigger, &status, &sw.errText); err != nil {
			rows.Close()
			return nil, fmt.Errorf("sweep: %w", err)
		}
		sw.failed, sw.rewound = status == "failed", status == "done"
		out = append(out, sw)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sweep: %w", err)
	}
	return out, nil
}

// visible reports whether transaction xid (32 bits, as an event's
// source.txId carries it) is visible to a new snapshot: committed and no
// longer in progress. Postgres writes a commit to the WAL, where logical
// decoding reads it, a moment before the committing backend makes it
// visible to other sessions; a claim in that moment would not see the
// event's change.
func (s *store) visible(ctx context.Context, xid uint32) (bool, error) {
	var snap string
	if err := s.pool.QueryRow(ctx, `SELECT pg_current_snapshot()::text`).Scan(&snap); err != nil {
		return false, fmt.Errorf("read snapshot: %w", err)
	}
	return visibleIn(xid, snap), nil
}

// visibleIn reports whether xid precedes the snapshot's xmax and is not in
// its in-progress list. snap is "xmin:xmax:xip,..." with 64-bit ids; ids
// compare modulo 2^32, as Postgres compares them.
func visibleIn(xid uint32, snap string) bool {
	parts := strings.SplitN(snap, ":", 3)
	if len(parts) != 3 {
		return true // unparsable: do not hold the event
	}
	xmax, err := strconv.ParseUint(parts[1], 10, 64)
	if err != nil {
		return true
	}
	if int32(xid-uint32(xmax)) >= 0 {
		return false
	}
	for _, f := range strings.Split(parts[2], ",") {
		if x, err := strconv.ParseUint(f, 10, 64); err == nil && uint32(x) == xid {
			return false
		}
	}
	return true
}

// isDataError reports whether err is Postgres refusing the data itself
// (SQLSTATE classes 22 data exception, 23 integrity constraint violation,
// 54 program limit exceeded): asking again cannot succeed.
func isDataError(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || len(pe.Code) < 2 {
		return false
	}
	switch pe.Code[:2] {
	case "22", "23", "54":
		return true
	}
	return false
}

// maxErrorText bounds an error stored in jobs.error and jobstream_runs.error.
const maxErrorText = 8 << 10

// errorText renders err for a text column: valid UTF-8 without NUL bytes
// (Postgres refuses both), at most maxErrorText bytes.
func errorText(err error) string {
	if err == nil {
		return ""
	}
	s := strings.ToValidUTF8(err.Error(), "\uFFFD")
	s = strings.ReplaceAll(s, "\x00", "\\0")
	if len(s) > maxErrorText {
		s = strings.ToValidUTF8(s[:maxErrorText], "") + "..."
	}
	return s
}

// ClaimAndComplete moves one job through step with the very statements a
// worker runs, claim then complete with result, and no executor or Kafka in
// between. It is for tools that must measure or script the step protocol
// itself, such as the benchmark's database-alone baseline. It fails when the
// job is not at (trigger, done) or the run was fenced.
func ClaimAndComplete(ctx context.Context, pool *pgxpool.Pool, jobID, step, trigger, worker string, result json.RawMessage) error {
	s := &store{pool: pool, step: step, trigger: trigger, lease: 30 * time.Second}
	r, ok, err := s.claim(ctx, jobID, worker, 0, time.Now().UnixMilli())
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("claim: job %s is not at (%s, done)", jobID, trigger)
	}
	held, err := s.complete(ctx, r, result)
	if err != nil {
		return err
	}
	if !held {
		return fmt.Errorf("complete: the run of job %s at %s was fenced", jobID, step)
	}
	return nil
}

// The reasons of the dead letters a failed run owes.
const (
	reasonStepFailed   = "step failed"
	reasonLeaseExpired = "lease expired"
)

// owedLetter is a dead letter a failed run owes.
type owedLetter struct {
	runID   int64
	jobID   string
	attempt int
	reason  string
	errText string
	trigger string
}

// deadLettered records that the broker took the dead letter run owed.
func (s *store) deadLettered(ctx context.Context, runID int64) error {
	_, err := s.pool.Exec(ctx, `UPDATE jobstream_runs SET dead_lettered_at = now() WHERE run_id = $1`, runID)
	if err != nil {
		return fmt.Errorf("record dead letter: %w", err)
	}
	return nil
}

// payOwedLetters finds the step's runs that failed over grace ago and still
// owe their dead letter (their worker died before writing it), calls send
// for each, and records the ones send wrote. The rows stay locked while send
// runs, so two members never send the same letter, and a member that dies
// meanwhile leaves them owed.
func (s *store) payOwedLetters(ctx context.Context, grace time.Duration, send func(owedLetter) bool) (int, error) {
	// Nearly always none: one round trip on the partial index, no transaction.
	var due bool
	if err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM jobstream_runs
		WHERE step = $1 AND dead_letter IS NOT NULL AND dead_lettered_at IS NULL AND finished_at < now() - make_interval(secs => $2))`,
		s.step, grace.Seconds()).Scan(&due); err != nil || !due {
		return 0, err
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("owed dead letters: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after commit
	rows, err := tx.Query(ctx, `SELECT run_id, job_id, attempt, dead_letter, coalesce(error, ''), coalesce(trigger_lsn, '')
		FROM jobstream_runs
		WHERE step = $1 AND dead_letter IS NOT NULL AND dead_lettered_at IS NULL AND finished_at < now() - make_interval(secs => $2)
		ORDER BY finished_at LIMIT 100 FOR UPDATE SKIP LOCKED`, s.step, grace.Seconds())
	if err != nil {
		return 0, fmt.Errorf("owed dead letters: %w", err)
	}
	owed, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (o owedLetter, err error) {
		err = row.Scan(&o.runID, &o.jobID, &o.attempt, &o.reason, &o.errText, &o.trigger)
		return o, err
	})
	if err != nil || len(owed) == 0 {
		return 0, err
	}
	var paid []int64
	for _, o := range owed {
		if send(o) {
			paid = append(paid, o.runID)
		}
	}
	if _, err := tx.Exec(ctx, `UPDATE jobstream_runs SET dead_lettered_at = now() WHERE run_id = ANY($1)`, paid); err != nil {
		return 0, fmt.Errorf("record owed dead letters: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("record owed dead letters: %w", err)
	}
	return len(paid), nil
}
