package consumers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jobstream/jobstream/schema"
)

// store is the one writer of jobs and jobstream_runs: claim, complete,
// retry, fail, release, sweep, cancel, rewind for a replay and prune all
// live in this file, each in one statement (one round trip, one
// transaction), so a crash between two of them leaves nothing half done.
// Workers use it through Worker; the admin commands through Cancel, Rewind
// and PruneRuns.
//
// Attempts count per attempt chain. A chain starts each time a job reaches
// (T, done) by a step's success, a replay, a requeue by hand or a new row;
// only a rewind by the sweeper (the worker died) or a release at a stop
// continues the chain. The closing run records the id of the transaction
// that rewound the job (rewind_xid); a claim continues that chain only if
// the job's row is still the version that transaction wrote (its xmin), so
// any later change by someone else starts a new chain with full retries.
type store struct {
	pool    *pgxpool.Pool
	step    string // S
	trigger string // T
	lease   time.Duration
	q       queries
	// numericID: jobs.job_id is an integer, so keys render it as a number.
	numericID bool
}

// queries are the store's statements with jobs.job_id's type cast in.
type queries struct {
	claim, complete, retry, fail, abandon, release, sweep, watch, cancel, rewind, state string
}

// jobIDTypes are the types of jobs.job_id that jobstream supports, by
// pg_type.typname.
var jobIDTypes = map[string]bool{"text": true, "varchar": true, "uuid": true, "int2": true, "int4": true, "int8": true}

// newStore looks up the type of jobs.job_id and prepares the statements.
func newStore(ctx context.Context, pool *pgxpool.Pool, step, trigger string, lease time.Duration) (*store, error) {
	idType, err := JobIDType(ctx, pool)
	if err != nil {
		return nil, err
	}
	s := &store{pool: pool, step: step, trigger: trigger, lease: lease, numericID: schema.IntegerType(idType)}
	s.q = prepareQueries(idType)
	return s, nil
}

// key returns the record key of job id, as the reader writes it by default
// (Debezium's key struct; a number for an integer job_id): the key of the
// letters a sweeper writes without the job's event at hand.
func (s *store) key(id string) []byte { return schema.Key(id, s.numericID) }

// ErrSchema marks an error saying the jobs table or jobstream_runs lacks
// what jobstream needs: retrying cannot help, jobstream migrate can.
var ErrSchema = errors.New("schema")

type schemaError struct{ msg string }

func (e *schemaError) Error() string        { return e.msg }
func (e *schemaError) Is(target error) bool { return target == ErrSchema }

// JobIDType returns the SQL type of jobs.job_id (format_type), or an error
// naming what is wrong with it (a missing table or column, a type jobstream
// does not support).
func JobIDType(ctx context.Context, pool *pgxpool.Pool) (string, error) {
	var formatted, typname string
	err := pool.QueryRow(ctx, `SELECT format_type(a.atttypid, a.atttypmod), t.typname
		FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
		WHERE a.attrelid = to_regclass('jobs') AND a.attname = 'job_id' AND a.attnum > 0 AND NOT a.attisdropped`).Scan(&formatted, &typname)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", &schemaError{"the jobs table or its job_id column does not exist; run jobstream migrate"}
	}
	if err != nil {
		return "", fmt.Errorf("look up the type of jobs.job_id: %w", err)
	}
	if !jobIDTypes[typname] {
		return "", &schemaError{fmt.Sprintf("jobs.job_id is of type %s; jobstream supports text, varchar, uuid, integer and bigint job ids", formatted)}
	}
	return formatted, nil
}

// checkSchema reports, as one sentence naming jobstream migrate, a column
// of jobs or jobstream_runs that the step protocol needs and that is missing.
func checkSchema(ctx context.Context, pool *pgxpool.Pool) error {
	rows, err := pool.Query(ctx, `SELECT c.tbl || '.' || c.col FROM (VALUES
			('jobs', 'job_id'), ('jobs', 'current_step'), ('jobs', 'status'), ('jobs', 'payload'),
			('jobs', 'results'), ('jobs', 'error'), ('jobs', 'updated_at'),
			('jobstream_runs', 'chain'), ('jobstream_runs', 'rewind_xid'), ('jobstream_runs', 'dead_letter')) AS c(tbl, col)
		WHERE NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass(c.tbl) AND attname = c.col AND attnum > 0 AND NOT attisdropped)`)
	if err != nil {
		return fmt.Errorf("check the jobs table: %w", err)
	}
	missing, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("check the jobs table: %w", err)
	}
	if len(missing) > 0 {
		return &schemaError{fmt.Sprintf("the database lacks %s, which the step protocol needs; run jobstream migrate", strings.Join(missing, ", "))}
	}
	return nil
}

// isSchemaError reports whether Postgres refused a statement because a
// table or column it names does not exist (someone dropped it while the
// worker ran): no retry can fix that.
func isSchemaError(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "42703" || pe.Code == "42P01")
}

// schemaFailure turns a refused statement into the sentence naming the fix.
func schemaFailure(err error) error {
	var pe *pgconn.PgError
	errors.As(err, &pe)
	return &schemaError{fmt.Sprintf("postgres refused the step protocol's statement (%s): the jobs table or jobstream_runs lacks what jobstream needs; run jobstream migrate", pe.Message)}
}

var (
	goneToken  = regexp.MustCompile(`gone\(([^()]*)\)`)
	jobIDToken = regexp.MustCompile(`jobid\(([^()]*)\)`)
)

// prepareQueries renders the statements for a job_id of SQL type idType:
// jobid(x) becomes x cast to that type, so the primary key's index serves
// every lookup whatever its type.
func prepareQueries(idType string) queries {
	cast := func(sql string) string {
		sql = goneToken.ReplaceAllString(sql, "CASE WHEN EXISTS (SELECT FROM jobs WHERE job_id = jobid($1) AND status = 'cancelled') THEN 'cancelled' ELSE 'discarded' END")
		return jobIDToken.ReplaceAllString(sql, "CAST(($1)::text AS "+idType+")")
	}
	return queries{
		claim:    cast(sqlClaim),
		complete: cast(sqlComplete),
		retry:    cast(sqlRetry),
		fail:     cast(sqlFail),
		abandon:  cast(sqlAbandon),
		release:  cast(sqlRelease),
		sweep:    cast(sqlSweep),
		watch:    cast(sqlWatch),
		cancel:   cast(sqlCancel),
		state:    cast(sqlState),
		rewind:   cast(sqlRewind),
	}
}

// run is one attempt of the step on one job, held by this worker.
type run struct {
	id      int64
	chain   int
	attempt int
	job     Job
}

// claim moves the job (T, done) → (S, running) and opens an attempt of the
// run with a lease, in one statement: the next attempt of the chain when the
// sweeper or a release rewound the job, else attempt 1 of a new chain. ok is
// false when the job is not at (T, done): the event was stale or a duplicate.
func (s *store) claim(ctx context.Context, jobID, worker string, triggerLSN, triggerCommitMs int64) (r run, ok bool, err error) {
	var id, payload, results string
	err = s.pool.QueryRow(ctx, s.q.claim,
		jobID, s.step, s.trigger, worker, strconv.FormatInt(triggerLSN, 10), triggerCommitMs, s.lease.Seconds()).
		Scan(&r.id, &r.chain, &r.attempt, &id, &payload, &results)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, false, nil
	}
	if err != nil {
		return r, false, fmt.Errorf("claim: %w", err)
	}
	r.job = Job{JobID: id, Step: s.step, Attempt: r.attempt, Payload: json.RawMessage(payload), Results: json.RawMessage(results)}
	return r, true, nil
}

// renew extends the run's lease; held is false when the run was closed by
// someone else (the sweeper, a replay): the attempt is fenced.
func (s *store) renew(ctx context.Context, runID int64) (held bool, err error) {
	tag, err := s.pool.Exec(ctx, `UPDATE jobstream_runs SET lease_expires_at = now() + make_interval(secs => $2)
		WHERE run_id = $1 AND finished_at IS NULL`, runID, s.lease.Seconds())
	return tag.RowsAffected() == 1, err
}

// The outcomes of closing a run, as complete, retry and fail report them.
const (
	outcomeDone      = "done"
	outcomeRetried   = "retried"   // closed as failed, the next attempt opened
	outcomeFailed    = "failed"    // the job is now (S, failed) and owes a dead letter
	outcomeFenced    = "fenced"    // someone else closed the run first
	outcomeCancelled = "cancelled" // the user cancelled the job: no retry, no letter
	outcomeDiscarded = "discarded" // the job moved or was deleted: no retry, no letter
)

// complete closes the run and moves the job (S, running) → (S, done) with the
// result merged into results under S, only while this attempt holds the run.
// If the job left (S, running) while the step ran (the user cancelled,
// moved or deleted it), the run is closed as cancelled or discarded and the
// job kept as it is.
func (s *store) complete(ctx context.Context, r run, result json.RawMessage) (outcome string, err error) {
	err = s.pool.QueryRow(ctx, s.q.complete, r.id, r.job.JobID, s.step, string(result)).Scan(&outcome)
	if err != nil {
		return "", fmt.Errorf("complete: %w", err)
	}
	return outcome, nil
}

// retry closes a failed attempt and opens the next one of its chain,
// keeping the job at (S, running), in one statement. A job that left (S,
// running) gets no next attempt (outcome cancelled or discarded).
func (s *store) retry(ctx context.Context, r run, worker string, cause error) (next run, outcome string, err error) {
	next = r
	err = s.pool.QueryRow(ctx, s.q.retry, r.id, errorText(cause), worker, s.lease.Seconds(), r.job.JobID, s.step).
		Scan(&outcome, &next.id, &next.attempt)
	if err != nil {
		return r, "", fmt.Errorf("open retry run: %w", err)
	}
	if outcome != outcomeRetried {
		return r, outcome, nil
	}
	next.job.Attempt = next.attempt
	return next, outcome, nil
}

// fail closes the last attempt and moves the job to (S, failed) with the
// error, in one statement; the run then owes a dead letter. A job that left
// (S, running) is kept as it is and owes none (outcome cancelled or
// discarded).
func (s *store) fail(ctx context.Context, r run, cause error) (outcome string, err error) {
	err = s.pool.QueryRow(ctx, s.q.fail, r.id, r.job.JobID, s.step, errorText(cause), reasonStepFailed).Scan(&outcome)
	if err != nil {
		return "", fmt.Errorf("fail job: %w", err)
	}
	return outcome, nil
}

// abandon closes a run whose job left (S, running) while its step ran: the
// step was stopped, and the run is closed as cancelled or discarded.
func (s *store) abandon(ctx context.Context, r run) (outcome string, err error) {
	err = s.pool.QueryRow(ctx, s.q.abandon, r.id, r.job.JobID).Scan(&outcome)
	if errors.Is(err, pgx.ErrNoRows) {
		return outcomeFenced, nil
	}
	if err != nil {
		return "", fmt.Errorf("close run: %w", err)
	}
	return outcome, nil
}

// release gives a run back at once (shutdown past the grace period): the
// run is closed and the job rewound to (T, done), which re-delivers it; the
// next claim continues the attempt chain.
func (s *store) release(ctx context.Context, r run, why string) error {
	if _, err := s.pool.Exec(ctx, s.q.release, r.id, r.job.JobID, s.step, s.trigger, why); err != nil {
		return fmt.Errorf("release run: %w", err)
	}
	return nil
}

// left is a run in hand whose job left (S, running), or that someone else closed.
type left struct {
	runID  int64
	closed bool   // someone else closed the run: the attempt is fenced
	status string // the job's status now ("" when deleted)
}

// watch returns the runs among runIDs that must stop: their job was
// cancelled, moved or deleted, or their run was closed by someone else.
func (s *store) watch(ctx context.Context, runIDs []int64) ([]left, error) {
	rows, err := s.pool.Query(ctx, s.q.watch, runIDs, s.step)
	if err != nil {
		return nil, fmt.Errorf("watch runs: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (l left, err error) {
		err = row.Scan(&l.runID, &l.closed, &l.status)
		return l, err
	})
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
// its chain's attempts are spent. Runs in held (this process renews them)
// are never closed, and for one lease after a Postgres restart none is, so
// that live workers renew theirs first. It returns the runs it closed.
func (s *store) sweep(ctx context.Context, maxAttempts int, held []int64) ([]swept, error) {
	if held == nil {
		held = []int64{}
	}
	rows, err := s.pool.Query(ctx, s.q.sweep, s.step, s.trigger, maxAttempts, reasonLeaseExpired, held, s.lease.Seconds())
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

// prune deletes up to batch finished runs that finished over olderThan ago
// and owe no dead letter, and returns how many it deleted.
func prune(ctx context.Context, pool *pgxpool.Pool, olderThan time.Duration, batch int) (int64, error) {
	tag, err := pool.Exec(ctx, `DELETE FROM jobstream_runs WHERE run_id IN (
			SELECT run_id FROM jobstream_runs
			WHERE finished_at < now() - make_interval(secs => $1) AND (dead_letter IS NULL OR dead_lettered_at IS NOT NULL)
			LIMIT $2)`, olderThan.Seconds(), batch)
	if err != nil {
		return 0, fmt.Errorf("prune runs: %w", err)
	}
	return tag.RowsAffected(), nil
}

// snapshot reads the current snapshot, for schema.WaitVisible.
func (s *store) snapshot(ctx context.Context) (string, error) {
	var snap string
	if err := s.pool.QueryRow(ctx, schema.SnapshotQuery).Scan(&snap); err != nil {
		return "", fmt.Errorf("read snapshot: %w", err)
	}
	return snap, nil
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
	s, err := adminStore(ctx, pool, step, trigger)
	if err != nil {
		return err
	}
	r, ok, err := s.claim(ctx, jobID, worker, 0, time.Now().UnixMilli())
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("claim: job %s is not at (%s, done)", jobID, trigger)
	}
	outcome, err := s.complete(ctx, r, result)
	if err != nil {
		return err
	}
	if outcome != outcomeDone {
		return fmt.Errorf("complete: the run of job %s at %s was %s", jobID, step, outcome)
	}
	return nil
}

// poolQueries caches the statements per pool for the admin functions.
var poolQueries sync.Map // *pgxpool.Pool → *queries

// adminStore returns a store on pool for the admin functions, looking up
// the type of jobs.job_id once per pool.
func adminStore(ctx context.Context, pool *pgxpool.Pool, step, trigger string) (*store, error) {
	q, ok := poolQueries.Load(pool)
	if !ok {
		idType, err := JobIDType(ctx, pool)
		if err != nil {
			return nil, err
		}
		prepared := prepareQueries(idType)
		q, _ = poolQueries.LoadOrStore(pool, &prepared)
	}
	return &store{pool: pool, step: step, trigger: trigger, lease: 30 * time.Second, q: *q.(*queries)}, nil
}

// CancelResult says what Cancel did to one job.
type CancelResult struct {
	// Found is false when no job has the id.
	Found bool
	// Cancelled is true when the job was set to cancelled by this call;
	// false when it was already cancelled.
	Cancelled bool
	// Step and Status are the job's state before the call.
	Step, Status string
}

// Cancel sets a job's status to cancelled, as a user may by hand: a step
// running on it is stopped within about a second (its run closed as
// cancelled), it is not retried and owes no dead letter, and no later step
// takes it. A job already cancelled is left as it is.
func Cancel(ctx context.Context, pool *pgxpool.Pool, jobID string) (CancelResult, error) {
	s, err := adminStore(ctx, pool, "", "")
	if err != nil {
		return CancelResult{}, err
	}
	var res CancelResult
	err = pool.QueryRow(ctx, s.q.cancel, jobID).Scan(&res.Step, &res.Status, &res.Cancelled)
	if errors.Is(err, pgx.ErrNoRows) {
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("cancel job %s: %w", jobID, err)
	}
	res.Found = true
	return res, nil
}

// JobState returns a job's current step and status; found is false when no
// job has the id.
func JobState(ctx context.Context, pool *pgxpool.Pool, jobID string) (step, status string, found bool, err error) {
	s, err := adminStore(ctx, pool, "", "")
	if err != nil {
		return "", "", false, err
	}
	err = pool.QueryRow(ctx, s.q.state, jobID).Scan(&step, &status)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", "", false, nil
	}
	if err != nil {
		return "", "", false, fmt.Errorf("look up job %s: %w", jobID, err)
	}
	return step, status, true, nil
}

// Rewind moves a job from (fromStep, fromStatus) back to (trigger, done),
// closing any run still open on it as replayed (its attempt is fenced), in
// one statement: the job reaches (trigger, done) again, which starts a new
// attempt chain of the step after trigger. ok is false when the job was no
// longer at (fromStep, fromStatus).
func Rewind(ctx context.Context, pool *pgxpool.Pool, jobID, trigger, fromStep, fromStatus string) (ok bool, err error) {
	s, err := adminStore(ctx, pool, "", trigger)
	if err != nil {
		return false, err
	}
	if err := pool.QueryRow(ctx, s.q.rewind, jobID, trigger, fromStep, fromStatus).Scan(&ok); err != nil {
		return false, fmt.Errorf("rewind job %s: %w", jobID, err)
	}
	return ok, nil
}

// PruneBatch is how many runs one prune statement deletes at most, so that
// pruning never holds long locks or makes a large transaction.
const PruneBatch = 1000

// PruneRuns deletes the runs in jobstream_runs that finished over olderThan
// ago, PruneBatch at a time, keeping those that still owe a dead letter. It
// calls progress (if not nil) after each batch with the total so far, and
// returns how many it deleted.
func PruneRuns(ctx context.Context, pool *pgxpool.Pool, olderThan time.Duration, progress func(deleted int64)) (int64, error) {
	var total int64
	for {
		n, err := prune(ctx, pool, olderThan, PruneBatch)
		total += n
		if err != nil {
			return total, err
		}
		if n > 0 && progress != nil {
			progress(total)
		}
		if n < PruneBatch {
			return total, nil
		}
	}
}

// CountPrunable returns how many runs PruneRuns would delete.
func CountPrunable(ctx context.Context, pool *pgxpool.Pool, olderThan time.Duration) (n int64, err error) {
	err = pool.QueryRow(ctx, `SELECT count(*) FROM jobstream_runs
		WHERE finished_at < now() - make_interval(secs => $1) AND (dead_letter IS NULL OR dead_lettered_at IS NOT NULL)`, olderThan.Seconds()).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count prunable runs: %w", err)
	}
	return n, nil
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
