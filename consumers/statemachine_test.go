package consumers_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
)

// failFirstOfChain fails attempt 1 of every attempt chain and succeeds on
// attempt 2, recording every call.
func failFirstOfChain(rec *recorder) consumers.Handler {
	return func(_ context.Context, job consumers.Job) (json.RawMessage, error) {
		rec.record(job)
		if job.Attempt == 1 {
			return nil, errors.New("first attempt of the chain fails")
		}
		return json.Marshal(map[string]int{"attempt": job.Attempt})
	}
}

// chainsOf renders job id's runs as "chain.attempt:outcome".
func chainsOf(t *testing.T, e *harness.Env, id string) []string {
	t.Helper()
	var out []string
	for _, r := range getRuns(t, e, id) {
		out = append(out, fmt.Sprintf("%d.%d:%s", r.chain, r.attempt, r.outcome))
	}
	return out
}

func waitChains(t *testing.T, e *harness.Env, id string, want []string) {
	t.Helper()
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		got := chainsOf(t, e, id)
		return slices.Equal(got, want), fmt.Sprintf("runs of %s are %v, want %v", id, got, want)
	})
}

// TestRerunsGetTheirRetries (issue 11, item 1): every way a job reaches
// (T, done) again — a requeue by hand, a replay's rewind, a TRUNCATE and the
// same job_id inserted anew — starts a new attempt chain with the full
// --max-attempts. Numbering attempts over the job's whole history failed the
// second chain's first error at once.
func TestRerunsGetTheirRetries(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	rec := &recorder{}
	startWorker(t, e, consumers.Config{MaxAttempts: 2, RetryBackoff: 10 * time.Millisecond, Handler: failFirstOfChain(rec)})
	const id = "rerun"
	chain := func(n int) []string {
		var out []string
		for i := 1; i <= n; i++ {
			out = append(out, fmt.Sprintf("%d.1:failed", i), fmt.Sprintf("%d.2:done", i))
		}
		return out
	}

	insertJobs(t, e, id)
	waitChains(t, e, id, chain(1))

	// A requeue by hand.
	e.Exec(t, `UPDATE jobs SET current_step = $2, status = 'done' WHERE job_id = $1`, id, trigger)
	waitChains(t, e, id, chain(2))

	// A replay's rewind.
	ok, err := consumers.Rewind(context.Background(), e.Pool(t), id, trigger, step, "done")
	if err != nil || !ok {
		t.Fatalf("rewind: ok=%v err=%v", ok, err)
	}
	waitChains(t, e, id, chain(3))

	// The table emptied and the id used again.
	e.Exec(t, `TRUNCATE jobs`)
	insertJobs(t, e, id)
	waitChains(t, e, id, chain(4))
	waitJob(t, e, id, step, "done", 10*time.Second)
	if got := rec.attempts(id); !slices.Equal(got, []int{1, 2, 1, 2, 1, 2, 1, 2}) {
		t.Errorf("handler was given attempts %v, want 1 2 four times", got)
	}
}

// TestSweeperContinuesTheChain: a rewind by the lease sweeper (the worker
// died) continues the attempt chain, so a step that kills its worker every
// time still runs out of attempts; a requeue by hand after it starts anew.
func TestSweeperContinuesTheChain(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	rec := &recorder{}
	startWorker(t, e, consumers.Config{MaxAttempts: 3, Lease: time.Second, RetryBackoff: 10 * time.Millisecond, Handler: rec.attemptResult})
	// A run whose worker died: open, its lease long gone, the job running.
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('swept', $1, 'running')`, step)
	e.Exec(t, `INSERT INTO jobstream_runs (job_id, step, chain, attempt, worker, lease_expires_at)
		VALUES ('swept', $1, 1, 1, 'dead-worker', now() - interval '1 minute')`, step)
	waitChains(t, e, "swept", []string{"1.1:expired", "1.2:done"})
	if got := rec.attempts("swept"); !slices.Equal(got, []int{2}) {
		t.Errorf("handler was given attempts %v, want [2]: the sweeper's rewind continues the chain", got)
	}
}

// TestCancelStopsTheRunningStep: a job cancelled while its step runs has
// the step stopped within about a second (its context ended; an exec step's
// process group killed), its run closed as cancelled, no retry and no dead
// letter, and stays as the user left it.
func TestCancelStopsTheRunningStep(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		exec bool
	}{{"go handler", false}, {"exec step", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := streamingEnv(t)
			rec := &recorder{}
			started := make(chan struct{}, 1)
			stopped := make(chan time.Time, 1)
			var handler consumers.Handler = func(ctx context.Context, job consumers.Job) (json.RawMessage, error) {
				rec.record(job)
				started <- struct{}{}
				<-ctx.Done()
				stopped <- time.Now()
				return nil, context.Cause(ctx)
			}
			pidFile := filepath.Join(e.Dir, "pid")
			if tc.exec {
				exe := consumers.Exec(script(t, e.Dir, "step.sh", `cat >/dev/null; sleep 60 & echo $! > `+pidFile+`; wait`))
				handler = func(ctx context.Context, job consumers.Job) (json.RawMessage, error) {
					rec.record(job)
					started <- struct{}{}
					out, err := exe(ctx, job)
					stopped <- time.Now()
					return out, err
				}
			}
			w := startWorker(t, e, consumers.Config{MaxAttempts: 3, RetryBackoff: 10 * time.Millisecond, Handler: handler})
			insertJobs(t, e, "cancel-me")
			select {
			case <-started:
			case <-time.After(30 * time.Second):
				t.Fatal("the step never started")
			}
			var pid int
			if tc.exec {
				harness.Eventually(t, 10*time.Second, func() (bool, string) {
					b, _ := os.ReadFile(pidFile)
					pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
					return pid > 0, "the step's child has not written its pid"
				})
			}
			at := time.Now()
			res, err := consumers.Cancel(context.Background(), e.Pool(t), "cancel-me")
			if err != nil || !res.Found || !res.Cancelled || res.Step != step || res.Status != "running" {
				t.Fatalf("cancel: %+v %v", res, err)
			}
			select {
			case end := <-stopped:
				// The contract is 2 s; a loaded machine gets some slack.
				if d := end.Sub(at); d > 5*time.Second {
					t.Errorf("the step stopped %s after the cancel, want within about 2s", d)
				} else {
					t.Logf("the step stopped %s after the cancel", d.Round(time.Millisecond))
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the step was not stopped")
			}
			waitChains(t, e, "cancel-me", []string{"1.1:cancelled"})
			if tc.exec {
				harness.Eventually(t, 10*time.Second, func() (bool, string) {
					return !alive(pid), fmt.Sprintf("the step's child %d still runs", pid)
				})
			}
			if j := getJob(t, e, "cancel-me"); j.step != step || j.status != "cancelled" {
				t.Errorf("job is %s, want (%s, cancelled) as the user left it", j, step)
			}
			waitAllCommitted(t, e, step, trigger)
			if got := rec.attempts("cancel-me"); len(got) != 1 {
				t.Errorf("handler ran %d times, want once", len(got))
			}
			if _, ok := deadLetters(t, e)["cancel-me"]; ok {
				t.Error("a cancelled job got a dead letter")
			}
			if n := w.Stats().Cancelled.Load(); n != 1 {
				t.Errorf("stats count %d cancelled runs, want 1", n)
			}
			// Cancelling again says so and changes nothing.
			if res, err := consumers.Cancel(context.Background(), e.Pool(t), "cancel-me"); err != nil || res.Cancelled {
				t.Errorf("second cancel: %+v %v, want already cancelled", res, err)
			}
		})
	}
}

// TestFailureOfAJobTheUserChangedIsNotRetried (issue 11, item 4): a step
// fails while the user cancels, deletes or requeues its job; the job gets no
// further attempt and no dead letter, and is left as the user left it.
func TestFailureOfAJobTheUserChangedIsNotRetried(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	rec := &recorder{}
	pool := e.Pool(t)
	startWorker(t, e, consumers.Config{MaxAttempts: 3, RetryBackoff: 10 * time.Millisecond, Concurrency: 3,
		Handler: func(ctx context.Context, job consumers.Job) (json.RawMessage, error) {
			rec.record(job)
			var err error
			switch job.JobID {
			case "cancelled", "cancelled-permanent":
				_, err = pool.Exec(ctx, `UPDATE jobs SET status = 'cancelled' WHERE job_id = $1`, job.JobID)
			case "deleted":
				_, err = pool.Exec(ctx, `DELETE FROM jobs WHERE job_id = $1`, job.JobID)
			}
			if err != nil {
				return nil, err
			}
			if job.JobID == "cancelled-permanent" {
				return nil, consumers.Permanent(errors.New("the image is broken"))
			}
			return nil, errors.New("the model crashed")
		}})
	insertJobs(t, e, "cancelled", "deleted", "cancelled-permanent")
	waitChains(t, e, "cancelled", []string{"1.1:cancelled"})
	waitChains(t, e, "deleted", []string{"1.1:discarded"})
	waitChains(t, e, "cancelled-permanent", []string{"1.1:cancelled"})
	waitAllCommitted(t, e, step, trigger)
	for _, id := range []string{"cancelled", "deleted", "cancelled-permanent"} {
		if got := rec.attempts(id); len(got) != 1 {
			t.Errorf("%s: handler ran attempts %v, want only the first", id, got)
		}
	}
	if j := getJob(t, e, "cancelled"); j.status != "cancelled" {
		t.Errorf("job cancelled is %s, want it left cancelled", j)
	}
	if n := e.Count(t, `SELECT count(*) FROM jobs WHERE job_id = 'deleted'`); n != 0 {
		t.Error("the deleted job came back")
	}
	if n := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE dead_letter IS NOT NULL`); n != 0 {
		t.Errorf("%d runs owe a dead letter, want none", n)
	}
	if got := deadLetters(t, e); len(got) != 0 {
		t.Errorf("dead letters %v, want none", got)
	}
}

// TestPostgresOutageKillsNoStep (issue 11, item 2): Postgres goes away for
// three leases while a step runs and comes back; the worker is alive the
// whole time, so its step is not fenced and spends no attempt. Before, the
// worker's own sweeper expired its live run before the renewal landed.
func TestPostgresOutageKillsNoStep(t *testing.T) {
	t.Parallel()
	pg := newOwnPostgres(t)
	e := pg.e

	const lease = 2 * time.Second
	h := &heldStep{honorsCtx: true, started: make(chan struct{}), released: make(chan struct{})}
	t.Cleanup(h.release)
	w := startWorker(t, e, consumers.Config{Lease: lease, MaxAttempts: 3, Handler: h.handle})
	insertJobs(t, e, "outage")
	select {
	case <-h.started:
	case <-time.After(30 * time.Second):
		t.Fatal("the step never started")
	}
	pg.crash(t)
	time.Sleep(3 * lease) // the outage itself
	pg.restart(t)
	// Every sweeper has had its chance to expire the run.
	time.Sleep(2 * lease)
	h.release()
	waitJob(t, e, "outage", step, "done", 30*time.Second)
	waitChains(t, e, "outage", []string{"1.1:done"})
	if h.ctxEnded.Load() {
		t.Error("the step's context was cancelled: the outage killed a healthy step")
	}
	if n := w.Stats().Fenced.Load() + w.Stats().Expired.Load(); n != 0 {
		t.Errorf("%d runs fenced or expired, want none", n)
	}
}

// TestDroppedColumnStopsTheWorker (issue 11, item 10): a column the step
// protocol writes is dropped while the worker runs; the worker stops with
// one sentence naming jobstream migrate instead of retrying claims forever,
// and a worker started on such a table refuses to start with the same.
func TestDroppedColumnStopsTheWorker(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	cfg := consumers.Config{DatabaseURL: e.DatabaseURL, Brokers: e.Brokers, TopicPrefix: e.Prefix, Step: step,
		Grace: time.Second, Handler: (&recorder{}).attemptResult, Logger: testLogger(t, "worker")}
	w, err := consumers.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	select {
	case <-w.Ready():
	case err := <-done:
		t.Fatalf("worker stopped at start: %v", err)
	}
	e.Exec(t, `ALTER TABLE jobs DROP COLUMN error`)
	insertJobs(t, e, "no-error-column")
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "jobstream migrate") || !errors.Is(err, consumers.ErrSchema) {
			t.Fatalf("worker returned %v, want a sentence naming jobstream migrate", err)
		}
		t.Logf("worker: %v", err)
	case <-ctx.Done():
		t.Fatal("the worker kept running on a table without the error column")
	}

	w2, err := consumers.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = w2.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "jobs.error") || !strings.Contains(err.Error(), "jobstream migrate") {
		t.Fatalf("a worker started without jobs.error returned %v, want a sentence naming the column and jobstream migrate", err)
	}
}

// TestEmptyJobIDIsDeadLettered (issue 11, item 7): a row at (T, done) with an
// empty job_id can never be claimed; it is a dead letter with the reason, not
// skipped in silence.
func TestEmptyJobIDIsDeadLettered(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	startWorker(t, e, consumers.Config{Handler: (&recorder{}).attemptResult})
	insertJobs(t, e, "")
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		d, ok := deadLetters(t, e)[""]
		return ok && strings.Contains(fmt.Sprint(d["reason"]), "job_id"), fmt.Sprintf("dead letters %v", deadLetters(t, e))
	})
}

// TestNonTextJobIDs (issue 11, item 6): jobs tables keyed by uuid, bigint,
// integer or varchar work end to end: claim, retry, complete, the sweeper's
// rewind, cancel and replay's rewind. Before, every claim failed with
// "operator does not exist: text = uuid", retried forever.
func TestNonTextJobIDs(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		typ string
		ids []string
	}{
		{"uuid", []string{"0b6f0a52-5a4e-4c43-9a0e-6f1d3c1e2a01", "0b6f0a52-5a4e-4c43-9a0e-6f1d3c1e2a02", "0b6f0a52-5a4e-4c43-9a0e-6f1d3c1e2a03", "0b6f0a52-5a4e-4c43-9a0e-6f1d3c1e2a04"}},
		{"bigint", []string{"9007199254740993", "2", "3", "4"}},
		{"integer", []string{"11", "12", "13", "14"}},
		{"varchar(64)", []string{"v-1", "v-2", "v-3", "v-4"}},
	} {
		t.Run(tc.typ, func(t *testing.T) {
			t.Parallel()
			e := harness.New(t)
			e.Exec(t, `DROP TABLE jobs`)
			e.Exec(t, `CREATE TABLE jobs (job_id `+tc.typ+` PRIMARY KEY, current_step text, status text NOT NULL DEFAULT 'pending',
				payload jsonb NOT NULL DEFAULT '{}', results jsonb NOT NULL DEFAULT '{}', error text, updated_at timestamptz NOT NULL DEFAULT now())`)
			harness.Migrate(t, e.DatabaseURL)
			startReader(t, e)
			rec := &recorder{}
			startWorker(t, e, consumers.Config{MaxAttempts: 3, Lease: time.Second, RetryBackoff: 10 * time.Millisecond,
				Handler: func(ctx context.Context, job consumers.Job) (json.RawMessage, error) {
					rec.record(job)
					if job.JobID == tc.ids[3] {
						<-ctx.Done() // held until cancelled
						return nil, context.Cause(ctx)
					}
					return failFirstOfChain(&recorder{})(ctx, job)
				}})
			state := func(id string) string {
				var s string
				if err := e.Pool(t).QueryRow(context.Background(), `SELECT current_step || ',' || status FROM jobs WHERE job_id::text = $1`, id).Scan(&s); err != nil {
					return err.Error()
				}
				return s
			}
			waitState := func(id, want string) {
				t.Helper()
				harness.Eventually(t, 30*time.Second, func() (bool, string) {
					got := state(id)
					return got == want, fmt.Sprintf("job %s is %s, want %s", id, got, want)
				})
			}
			for _, id := range tc.ids[:3] {
				e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ($1::text::`+tc.typ+`, $2, 'done')`, id, trigger)
			}
			// A run whose worker died, for the sweeper.
			e.Exec(t, `UPDATE jobs SET current_step = $2, status = 'running' WHERE job_id = $1::text::`+tc.typ, tc.ids[2], step)
			e.Exec(t, `INSERT INTO jobstream_runs (job_id, step, chain, attempt, worker, lease_expires_at)
				VALUES ($1, $2, 1, 1, 'dead-worker', now() - interval '1 minute')`, tc.ids[2], step)
			for _, id := range tc.ids[:3] {
				waitState(id, step+",done")
			}
			if got := chainsOf(t, e, tc.ids[0]); !slices.Equal(got, []string{"1.1:failed", "1.2:done"}) {
				t.Errorf("runs of %s: %v", tc.ids[0], got)
			}
			if got := chainsOf(t, e, tc.ids[2]); !slices.Equal(got, []string{"1.1:expired", "1.2:done"}) {
				t.Errorf("runs of %s (swept): %v", tc.ids[2], got)
			}
			// Replay's rewind, then cancel of a running step.
			ok, err := consumers.Rewind(context.Background(), e.Pool(t), tc.ids[0], trigger, step, "done")
			if err != nil || !ok {
				t.Fatalf("rewind: %v %v", ok, err)
			}
			waitChains(t, e, tc.ids[0], []string{"1.1:failed", "1.2:done", "2.1:failed", "2.2:done"})
			e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ($1::text::`+tc.typ+`, $2, 'done')`, tc.ids[3], trigger)
			waitState(tc.ids[3], step+",running")
			if res, err := consumers.Cancel(context.Background(), e.Pool(t), tc.ids[3]); err != nil || !res.Cancelled {
				t.Fatalf("cancel: %+v %v", res, err)
			}
			waitChains(t, e, tc.ids[3], []string{"1.1:cancelled"})
			// The events are keyed by the id's text form.
			keys := map[string]bool{}
			for _, m := range e.ReadTopic(t, e.Topic(step)) {
				keys[schema.JobIDFromKey(m.Key)] = true
			}
			for _, id := range tc.ids[:3] {
				if !keys[id] {
					t.Errorf("no event keyed %q in %s (keys %v)", id, e.Topic(step), keys)
				}
			}
		})
	}
}

// TestPruneRuns: finished runs older than the retention are deleted, by
// `jobstream prune` (PruneRuns) and by a worker's sweeper; open runs, recent
// runs and runs that still owe a dead letter are kept.
func TestPruneRuns(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	old := func(n int, prefix string) {
		e.Exec(t, `INSERT INTO jobstream_runs (job_id, step, attempt, worker, lease_expires_at, started_at, finished_at, outcome)
			SELECT $2 || i, 'vlm_analyze', 1, 'w', now(), now() - interval '10 days', now() - interval '10 days', 'done'
			FROM generate_series(1, $1) i`, n, prefix)
	}
	old(2500, "old-")
	e.Exec(t, `INSERT INTO jobstream_runs (job_id, step, attempt, worker, lease_expires_at, started_at, finished_at, outcome, dead_letter)
		VALUES ('owes', 'vlm_analyze', 1, 'w', now(), now() - interval '10 days', now() - interval '10 days', 'failed', 'step failed'),
		       ('recent', 'vlm_analyze', 1, 'w', now(), now(), now(), 'done', NULL),
		       ('open', 'vlm_analyze', 1, 'w', now() + interval '1 hour', now() - interval '10 days', NULL, NULL, NULL)`)
	ctx := context.Background()
	if n, err := consumers.CountPrunable(ctx, e.Pool(t), 7*24*time.Hour); err != nil || n != 2500 {
		t.Fatalf("CountPrunable = %d, %v; want 2500", n, err)
	}
	var batches []int64
	n, err := consumers.PruneRuns(ctx, e.Pool(t), 7*24*time.Hour, func(total int64) { batches = append(batches, total) })
	if err != nil || n != 2500 {
		t.Fatalf("PruneRuns = %d, %v; want 2500", n, err)
	}
	if !slices.Equal(batches, []int64{1000, 2000, 2500}) {
		t.Errorf("progress %v, want batches of %d", batches, consumers.PruneBatch)
	}
	left := e.Dump(t, `SELECT job_id FROM jobstream_runs ORDER BY job_id`)
	if n := e.Count(t, `SELECT count(*) FROM jobstream_runs`); n != 3 {
		t.Errorf("runs left: %s, want owes, recent and open", left)
	}

	// The worker's sweeper does it on its own.
	old(10, "later-")
	startReader(t, e)
	w := startWorker(t, e, consumers.Config{RunsRetention: 24 * time.Hour, Handler: (&recorder{}).attemptResult})
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		n := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE job_id LIKE 'later-%'`)
		return n == 0, fmt.Sprintf("%d old runs left", n)
	})
	if n := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE job_id IN ('recent', 'open')`); n != 2 {
		t.Error("the worker pruned a run it must keep")
	}
	// The run that owed a letter goes only once its letter is written.
	owes := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE job_id = 'owes'`)
	if _, lettered := deadLetters(t, e)["owes"]; owes == 0 && !lettered {
		t.Error("the run that owed a dead letter was pruned before its letter was written")
	}
	if got := w.Stats().Pruned.Load(); got != int64(10+1-owes) {
		t.Errorf("worker counted %d pruned runs, want %d", got, 10+1-owes)
	}
}
