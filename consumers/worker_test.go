package consumers_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
)

// step is the step the tests' workers run; its trigger is img_gen in the
// default pipeline.
const (
	step    = "vlm_analyze"
	trigger = "img_gen"
)

// ---- environment ----

// testLogger returns a logger whose output is shown only when t fails (or
// JOBSTREAM_TEST_LOGS is set). It
// registers its cleanup first, so it runs after the components using it stopped.
func testLogger(t testing.TB, name string) *slog.Logger {
	t.Helper()
	sink := &harness.Buffer{}
	t.Cleanup(func() {
		if !t.Failed() && os.Getenv("JOBSTREAM_TEST_LOGS") == "" {
			return
		}
		b := sink.String()
		if len(b) > 8000 {
			b = b[len(b)-8000:]
		}
		t.Logf("--- %s log (tail) ---\n%s", name, b)
	})
	return slog.New(slog.NewTextHandler(sink, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// startReader runs an in-process reader for e until the test ends and
// returns once its slot exists.
func startReader(t testing.TB, e *harness.Env) *cdc.Reader {
	t.Helper()
	return harness.StartReader(t, context.Background(), cdc.Config{DatabaseURL: e.DatabaseURL, Brokers: e.Brokers, Slot: e.Slot,
		TopicPrefix: e.Prefix, Publication: e.Publication, Logger: testLogger(t, "reader")})
}

// startWorker runs an in-process worker of cfg.Step (default vlm_analyze, or cfg.Steps)
// against e until the test ends. Connection fields, the topic prefix, a short
// grace and a logger are filled in.
func startWorker(t *testing.T, e *harness.Env, cfg consumers.Config) *consumers.Worker {
	t.Helper()
	cfg.DatabaseURL = e.DatabaseURL
	cfg.Brokers = e.Brokers
	cfg.TopicPrefix = e.Prefix
	if cfg.Step == "" && len(cfg.Steps) == 0 {
		cfg.Step = step
	}
	if cfg.Grace == 0 {
		cfg.Grace = 2 * time.Second
	}
	if cfg.WorkerID == "" {
		cfg.WorkerID = "test-worker"
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t, "worker "+cfg.WorkerID)
	}
	w, err := consumers.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	harness.Go(t, context.Background(), "worker", w.Run)
	return w
}

// ---- handlers ----

type call struct {
	job consumers.Job
	at  time.Time
}

// recorder remembers every call of a handler.
type recorder struct {
	mu    sync.Mutex
	calls []call
}

func (r *recorder) record(job consumers.Job) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call{job: job, at: time.Now()})
}

func (r *recorder) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

// of returns the calls for jobID, in call order.
func (r *recorder) of(jobID string) []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []call
	for _, c := range r.calls {
		if c.job.JobID == jobID {
			out = append(out, c)
		}
	}
	return out
}

// attempts returns the attempt numbers jobID's handler calls were given.
func (r *recorder) attempts(jobID string) []int {
	var out []int
	for _, c := range r.of(jobID) {
		out = append(out, c.job.Attempt)
	}
	return out
}

// attemptResult is a handler that records the call and returns {"attempt": N}.
func (r *recorder) attemptResult(_ context.Context, job consumers.Job) (json.RawMessage, error) {
	r.record(job)
	return json.Marshal(map[string]int{"attempt": job.Attempt})
}

// ---- database ----

// insertJobs inserts jobs at (img_gen, done), each with a payload and an
// img_gen result, one transaction per job.
func insertJobs(t *testing.T, e *harness.Env, ids ...string) {
	t.Helper()
	for _, id := range ids {
		e.Exec(t, `INSERT INTO jobs (job_id, current_step, status, payload, results)
			VALUES ($1, $2, 'done', jsonb_build_object('prompt', 'a cat ' || $1::text),
			        jsonb_build_object($2::text, jsonb_build_object('url', 's3://img/' || $1::text || '.png')))`, id, trigger)
	}
}

type jobRow struct {
	step, status, err string
	results           map[string]json.RawMessage
}

func (j jobRow) String() string {
	b, _ := json.Marshal(j.results)
	return fmt.Sprintf("(%s, %s) error=%q results=%s", j.step, j.status, j.err, b)
}

func getJob(t *testing.T, e *harness.Env, id string) jobRow {
	t.Helper()
	var j jobRow
	var results string
	err := e.Pool(t).QueryRow(context.Background(), `SELECT coalesce(current_step, ''), status, coalesce(error, ''), results::text
		FROM jobs WHERE job_id = $1`, id).Scan(&j.step, &j.status, &j.err, &results)
	if err != nil {
		t.Fatalf("read job %s: %v", id, err)
	}
	if err := json.Unmarshal([]byte(results), &j.results); err != nil {
		t.Fatalf("job %s results %s: %v", id, results, err)
	}
	return j
}

// waitJob waits until job id is at (wantStep, wantStatus) and returns it.
func waitJob(t *testing.T, e *harness.Env, id, wantStep, wantStatus string, timeout time.Duration) jobRow {
	t.Helper()
	var j jobRow
	harness.Eventually(t, timeout, func() (bool, string) {
		j = getJob(t, e, id)
		return j.step == wantStep && j.status == wantStatus,
			fmt.Sprintf("job %s is %s, want (%s, %s)", id, j, wantStep, wantStatus)
	})
	return j
}

type runRow struct {
	chain, attempt        int
	worker, outcome, err  string
	finished, hasTriggerT bool
}

// getRuns returns job id's runs of the step, in the order they were opened.
func getRuns(t *testing.T, e *harness.Env, id string) []runRow {
	t.Helper()
	rows, err := e.Pool(t).Query(context.Background(), `SELECT chain, attempt, worker, coalesce(outcome, ''), coalesce(error, ''),
		finished_at IS NOT NULL, trigger_commit_at IS NOT NULL
		FROM jobstream_runs WHERE job_id = $1 AND step = $2 ORDER BY run_id`, id, step)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []runRow
	for rows.Next() {
		var r runRow
		if err := rows.Scan(&r.chain, &r.attempt, &r.worker, &r.outcome, &r.err, &r.finished, &r.hasTriggerT); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// rewind does what the sweeper does to a run whose lease expired: it closes
// job id's open run as expired and moves the job back to (img_gen, done).
func rewind(t *testing.T, e *harness.Env, id string) {
	t.Helper()
	ctx := context.Background()
	tx, err := e.Pool(t).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit
	// As the sweeper does: the rewinding transaction's id continues the chain.
	tag, err := tx.Exec(ctx, `UPDATE jobstream_runs SET finished_at = now(), outcome = 'expired', error = 'closed by the test',
			rewind_xid = pg_current_xact_id()::text::bigint % 4294967296
		WHERE job_id = $1 AND step = $2 AND finished_at IS NULL`, id, step)
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("close the open run of %s: %v (%d rows)", id, err, tag.RowsAffected())
	}
	tag, err = tx.Exec(ctx, `UPDATE jobs SET current_step = $3, status = 'done', updated_at = now()
		WHERE job_id = $1 AND current_step = $2 AND status = 'running'`, id, step, trigger)
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("rewind %s: %v (%d rows)", id, err, tag.RowsAffected())
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// heldStep is a handler that records every call and holds attempt 1 until
// released or, if it honors its context, until that context ends.
type heldStep struct {
	recorder
	honorsCtx              bool
	started, released      chan struct{}
	startOnce, releaseOnce sync.Once
	ctxEnded               atomic.Bool // attempt 1 returned because its context ended
}

func (h *heldStep) handle(ctx context.Context, job consumers.Job) (json.RawMessage, error) {
	h.record(job)
	if job.Attempt == 1 {
		h.startOnce.Do(func() { close(h.started) })
		if h.honorsCtx {
			select {
			case <-ctx.Done():
				h.ctxEnded.Store(true)
				return nil, context.Cause(ctx)
			case <-h.released:
			}
		} else {
			<-h.released
		}
	}
	return json.Marshal(map[string]int{"attempt": job.Attempt})
}

// release lets attempt 1 return.
func (h *heldStep) release() { h.releaseOnce.Do(func() { close(h.released) }) }

// loseFirstAttempt starts a worker (lease 1s) whose heldStep holds attempt 1
// of job id, inserts the job, and once that attempt runs takes its run away
// as the sweeper does when a lease expires (see rewind).
func loseFirstAttempt(t *testing.T, e *harness.Env, id string, honorsCtx bool) (*heldStep, *consumers.Worker) {
	t.Helper()
	h := &heldStep{honorsCtx: honorsCtx, started: make(chan struct{}), released: make(chan struct{})}
	w := startWorker(t, e, consumers.Config{Lease: time.Second, Handler: h.handle})
	// Runs before the worker's cleanup: a handler never blocks its stop.
	t.Cleanup(h.release)
	insertJobs(t, e, id)
	select {
	case <-h.started:
	case <-time.After(30 * time.Second):
		t.Fatalf("handler never started; %s", stats(w))
	}
	rewind(t, e, id)
	return h, w
}

// decodeEvent parses a change event, keeping numbers exact.
func decodeEvent(t *testing.T, b []byte) map[string]any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("event %s: %v", b, err)
	}
	return m
}

func stats(w *consumers.Worker) string {
	s := w.Stats()
	return fmt.Sprintf("claims=%d completions=%d failures=%d retries=%d fenced=%d skipped=%d inflight=%d",
		s.Claims.Load(), s.Completions.Load(), s.Failures.Load(), s.Retries.Load(), s.Fenced.Load(), s.Skipped.Load(), s.InFlight.Load())
}

// ---- tests ----

// TestStepProtocolHappyPath: 50 jobs entering at (img_gen, done) are each
// claimed once, given their payload and the results before them, and end at
// (vlm_analyze, done) with the handler's result merged under vlm_analyze;
// jobstream_runs holds one finished run per job.
func TestStepProtocolHappyPath(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	rec := &recorder{}
	w := startWorker(t, e, consumers.Config{Concurrency: 3, Handler: func(_ context.Context, job consumers.Job) (json.RawMessage, error) {
		rec.record(job)
		var payload struct {
			N int `json:"n"`
		}
		if err := json.Unmarshal(job.Payload, &payload); err != nil {
			return nil, consumers.Permanent(fmt.Errorf("payload: %w", err))
		}
		var before struct {
			ImgGen struct {
				URL string `json:"url"`
			} `json:"img_gen"`
		}
		if err := json.Unmarshal(job.Results, &before); err != nil {
			return nil, consumers.Permanent(fmt.Errorf("results: %w", err))
		}
		return json.Marshal(map[string]any{"job": job.JobID, "step": job.Step, "attempt": job.Attempt,
			"n": payload.N, "caption": "seen " + before.ImgGen.URL})
	}})

	const n = 50
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status, payload, results)
		SELECT 'j' || i, $2, 'done', jsonb_build_object('n', i),
		       jsonb_build_object($2::text, jsonb_build_object('url', 's3://img/j' || i || '.png'))
		FROM generate_series(1, $1) i`, n, trigger)

	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		done := e.Count(t, `SELECT count(*) FROM jobs WHERE current_step = $1 AND status = 'done'`, step)
		return done == n, fmt.Sprintf("%d of %d jobs at (%s, done); %s", done, n, step, stats(w))
	})

	// Each result is what the handler returned for that job, merged next to img_gen's.
	good := e.Count(t, `SELECT count(*) FROM jobs
		WHERE results->$1::text = jsonb_build_object('job', job_id, 'step', $1::text, 'attempt', 1,
		                                       'n', (payload->>'n')::int, 'caption', 'seen ' || (results->$2::text->>'url'))
		  AND results->$2::text->>'url' = 's3://img/' || job_id || '.png'`, step, trigger)
	if good != n {
		t.Errorf("%d of %d jobs hold the handler's result next to img_gen's; j7 is %s", good, n, getJob(t, e, "j7"))
	}
	if j := getJob(t, e, "j7"); string(j.results[step]) == "" || j.err != "" {
		t.Errorf("j7 is %s", j)
	}

	// One finished run per job: attempt 1, done, with the trigger's commit time.
	if runs := e.Count(t, `SELECT count(*) FROM jobstream_runs`); runs != n {
		t.Errorf("jobstream_runs holds %d runs, want %d", runs, n)
	}
	ok := e.Count(t, `SELECT count(DISTINCT job_id) FROM jobstream_runs
		WHERE step = $1 AND attempt = 1 AND outcome = 'done' AND error IS NULL AND worker LIKE 'test-worker/%'
		  AND finished_at IS NOT NULL AND finished_at >= started_at AND trigger_lsn IS NOT NULL
		  AND trigger_commit_at IS NOT NULL AND trigger_commit_at > now() - interval '5 minutes'
		  AND trigger_commit_at <= started_at + interval '1 second'`, step)
	if ok != n {
		rows, _ := e.Pool(t).Query(context.Background(), `SELECT row_to_json(r)::text FROM jobstream_runs r ORDER BY run_id LIMIT 3`)
		var sample []string
		for rows.Next() {
			var s string
			rows.Scan(&s)
			sample = append(sample, s)
		}
		rows.Close()
		t.Errorf("%d of %d jobs have one well-formed done run at attempt 1; first runs:\n%s", ok, n, strings.Join(sample, "\n"))
	}

	// The handler ran once per job, with the job's identity.
	if got := rec.total(); got != n {
		t.Errorf("handler called %d times, want %d", got, n)
	}
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("j%d", i)
		calls := rec.of(id)
		if len(calls) != 1 {
			t.Errorf("handler called %d times for %s", len(calls), id)
			continue
		}
		if j := calls[0].job; j.Step != step || j.Attempt != 1 || j.GPU != "" {
			t.Errorf("handler of %s was given step %q attempt %d gpu %q", id, j.Step, j.Attempt, j.GPU)
		}
	}
	s := w.Stats()
	harness.Eventually(t, 5*time.Second, func() (bool, string) { return s.InFlight.Load() == 0, stats(w) })
	if s.Claims.Load() != n || s.Completions.Load() != n || s.Failures.Load() != 0 || s.Retries.Load() != 0 || s.Fenced.Load() != 0 {
		t.Errorf("stats %s, want %d claims and completions and nothing else", stats(w), n)
	}

	// The step's topic shows each job's claim and its one completion, in
	// that order; and every trigger event's offset is committed.
	var ids []string
	for i := 1; i <= n; i++ {
		ids = append(ids, fmt.Sprintf("j%d", i))
	}
	events := settledTransitions(t, e, ids)
	for _, id := range ids {
		if got := events[id]; !slices.Equal(got, []string{step + "/running", step + "/done"}) {
			t.Errorf("job %s's events on %s: %v, want running then done", id, e.Topic(step), got)
		}
	}
	waitAllCommitted(t, e, step, trigger)
}

// TestDuplicateAndStaleEventsAreSkipped: once the jobs completed, trigger
// events delivered again (exact copies, as after a crash before the offset
// commit), an event of a job that does not exist, an event that is not a
// trigger and a message that is not an envelope (dead-lettered) are skipped:
// the handler does not run again and the jobs keep their single run.
func TestDuplicateAndStaleEventsAreSkipped(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	rec := &recorder{}
	w := startWorker(t, e, consumers.Config{Handler: rec.attemptResult})

	ids := []string{"dup-1", "dup-2", "dup-3"}
	insertJobs(t, e, ids...)
	for _, id := range ids {
		waitJob(t, e, id, step, "done", 30*time.Second)
	}

	// The trigger events the worker consumed.
	var orig []kafka.Message
	for _, m := range e.ReadTopic(t, e.Topic(trigger)) {
		env, err := schema.DecodeEnvelope(m.Value)
		if err != nil {
			t.Fatalf("event on %s: %v", e.Topic(trigger), err)
		}
		if row, ok := schema.Row(env.After); ok && row.CurrentStep == trigger && row.Status == "done" {
			orig = append(orig, m)
		}
	}
	if len(orig) != len(ids) {
		t.Fatalf("%s holds %d trigger events, want %d", e.Topic(trigger), len(orig), len(ids))
	}

	var replay []kafka.Message
	for _, m := range orig {
		replay = append(replay, kafka.Message{Key: m.Key, Value: m.Value})
	}
	// A well-formed trigger of a job that is not in the table.
	ghost := decodeEvent(t, orig[0].Value)
	ghost["after"].(map[string]any)["job_id"] = "ghost"
	gv, _ := json.Marshal(ghost)
	replay = append(replay, kafka.Message{Key: []byte("ghost"), Value: gv})
	// An event of a job still running its trigger step: not a trigger.
	running := decodeEvent(t, orig[1].Value)
	running["after"].(map[string]any)["status"] = "running"
	rv, _ := json.Marshal(running)
	replay = append(replay, kafka.Message{Key: orig[1].Key, Value: rv})
	// A poison message: skipped, and dead-lettered.
	replay = append(replay, kafka.Message{Key: []byte("poison"), Value: []byte("not an envelope")})

	skipped := w.Stats().Skipped.Load()
	claims := w.Stats().Claims.Load()
	wr := &kafka.Writer{Addr: kafka.TCP(e.Brokers...), Topic: e.Topic(trigger), Balancer: &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// kafka-go's shared metadata cache may not know the topic yet.
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		err := wr.WriteMessages(ctx, replay...)
		return err == nil, fmt.Sprint("produce copies: ", err)
	})
	if err := wr.Close(); err != nil {
		t.Fatal(err)
	}

	// Each event is either skipped or claimed, one at a time per partition.
	want := int64(len(replay))
	harness.Eventually(t, 20*time.Second, func() (bool, string) {
		got := w.Stats().Skipped.Load() - skipped
		return got >= want, fmt.Sprintf("%d of %d re-delivered events skipped; handler called %d times; %s", got, want, rec.total(), stats(w))
	})
	if got := w.Stats().Skipped.Load() - skipped; got != want {
		t.Errorf("skipped grew by %d, want %d", got, want)
	}
	if got := w.Stats().Claims.Load() - claims; got != 0 {
		t.Errorf("%d re-delivered events were claimed", got)
	}
	if got := rec.total(); got != len(ids) {
		t.Errorf("handler called %d times, want %d (once per job)", got, len(ids))
	}
	for _, id := range ids {
		j := getJob(t, e, id)
		if j.step != step || j.status != "done" || string(j.results[step]) != `{"attempt": 1}` {
			t.Errorf("job %s is %s, want (%s, done) with attempt 1's result", id, j, step)
		}
		if runs := getRuns(t, e, id); len(runs) != 1 || runs[0].outcome != "done" {
			t.Errorf("job %s has runs %+v, want one done run", id, runs)
		}
	}
	if n := e.Count(t, `SELECT count(*) FROM jobs WHERE job_id = 'ghost'`); n != 0 {
		t.Errorf("the ghost job was created")
	}
	// Skipped events are committed like the others.
	waitAllCommitted(t, e, step, trigger)
	harness.Eventually(t, 10*time.Second, func() (bool, string) {
		var keys []string
		for _, m := range e.ReadTopic(t, e.Topics().DLQ()) {
			keys = append(keys, schema.JobIDFromKey(m.Key))
			d := decodeEvent(t, m.Value)
			if schema.JobIDFromKey(m.Key) == "poison" && strings.HasPrefix(fmt.Sprint(d["reason"]), "event is not a change-event envelope") &&
				d["event"] == "not an envelope" && d["step"] == step {
				return true, ""
			}
		}
		return false, fmt.Sprintf("no dead letter for the poison message; dead letters keyed %v", keys)
	})
}

// TestRenamedJobRunsUnderItsNewID: a job whose job_id an operator changes
// (the reader writes a delete and tombstone of the old id, then a create of
// the new) runs once, under its new id. The old id's trigger finds no row
// and is skipped, as are its delete and tombstone: no run, no dead letter.
func TestRenamedJobRunsUnderItsNewID(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	rec := &recorder{}
	// Inserted and renamed in one transaction: the worker sees the old id's
	// trigger when there is no such row any more.
	e.Exec(t, `BEGIN;
		INSERT INTO jobs (job_id, current_step, status, payload) VALUES ('old-id', 'img_gen', 'done', '{"n": 1}');
		UPDATE jobs SET job_id = 'new-id' WHERE job_id = 'old-id';
		COMMIT`)
	w := startWorker(t, e, consumers.Config{Handler: rec.attemptResult})
	waitJob(t, e, "new-id", step, "done", 30*time.Second)
	// The old id's create, delete and tombstone may sit on another partition.
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		return w.Stats().Skipped.Load() >= 3, "the old id's three events not skipped yet; " + stats(w)
	})
	if got := len(rec.of("old-id")); got != 0 {
		t.Errorf("the old id ran %d times, want 0", got)
	}
	if got := len(rec.of("new-id")); got != 1 {
		t.Errorf("the new id ran %d times, want 1", got)
	}
	if runs := getRuns(t, e, "old-id"); len(runs) != 0 {
		t.Errorf("the old id has runs %+v", runs)
	}
	if letters := deadLetters(t, e); len(letters) != 0 {
		t.Errorf("dead letters %v, want none", letters)
	}
	if s := w.Stats(); s.Failures.Load() != 0 || s.Claims.Load() != 1 {
		t.Errorf("stats %s, want 1 claim and no failure", stats(w))
	}
}

// TestRetriesThenFailsWithDeadLetter: a handler that always fails is retried,
// with backoff, until MaxAttempts; then the job is (vlm_analyze, failed) with
// the last error, every attempt is a failed run, and a dead letter keyed by
// job_id says why.
func TestRetriesThenFailsWithDeadLetter(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	rec := &recorder{}
	w := startWorker(t, e, consumers.Config{MaxAttempts: 3, Handler: func(_ context.Context, job consumers.Job) (json.RawMessage, error) {
		rec.record(job)
		return nil, fmt.Errorf("model server unavailable (attempt %d)", job.Attempt)
	}})

	const id = "flaky"
	insertJobs(t, e, id)
	j := waitJob(t, e, id, step, "failed", 30*time.Second)
	const lastErr = "model server unavailable (attempt 3)"
	if j.err != lastErr {
		t.Errorf("jobs.error = %q, want %q", j.err, lastErr)
	}
	if _, ok := j.results[step]; ok {
		t.Errorf("a failed job has a %s result: %s", step, j)
	}

	runs := getRuns(t, e, id)
	if len(runs) != 3 {
		t.Fatalf("runs %+v, want 3", runs)
	}
	for i, r := range runs {
		wantErr := fmt.Sprintf("model server unavailable (attempt %d)", i+1)
		if r.attempt != i+1 || r.outcome != "failed" || !r.finished || r.err != wantErr || !r.hasTriggerT {
			t.Errorf("run %d is %+v, want attempt %d failed with %q", i, r, i+1, wantErr)
		}
	}
	if got := rec.attempts(id); !slices.Equal(got, []int{1, 2, 3}) {
		t.Errorf("handler was given attempts %v, want [1 2 3]", got)
	}
	// Retries back off (500ms ± 50%, growing).
	calls := rec.of(id)
	for i := 1; i < len(calls); i++ {
		if gap := calls[i].at.Sub(calls[i-1].at); gap < 200*time.Millisecond {
			t.Errorf("attempt %d started %s after attempt %d; want a backoff", i+1, gap, i)
		}
	}

	var dead map[string]any
	var headers []kafka.Header
	harness.Eventually(t, 10*time.Second, func() (bool, string) {
		var keys []string
		for _, m := range e.ReadTopic(t, e.Topics().DLQ()) {
			keys = append(keys, schema.JobIDFromKey(m.Key))
			if schema.JobIDFromKey(m.Key) == id {
				dead, headers = decodeEvent(t, m.Value), m.Headers
				return true, ""
			}
		}
		return false, fmt.Sprintf("no dead letter keyed %s; keys %v", id, keys)
	})
	if dead["reason"] != "step failed" || dead["step"] != step || dead["job_id"] != id ||
		dead["attempts"] != json.Number("3") || dead["error"] != lastErr {
		t.Errorf("dead letter %v", dead)
	}
	if ev, ok := dead["event"].(map[string]any); !ok {
		t.Errorf("dead letter holds no event: %v", dead)
	} else if after, _ := ev["after"].(map[string]any); after["job_id"] != id || after["current_step"] != trigger {
		t.Errorf("dead letter's event is not the trigger: %v", ev)
	}
	if !slices.ContainsFunc(headers, func(h kafka.Header) bool { return h.Key == schema.HeaderReason && string(h.Value) == "step failed" }) {
		t.Errorf("dead letter headers %v lack jobstream.reason", headers)
	}
	s := w.Stats()
	if s.Claims.Load() != 1 || s.Retries.Load() != 2 || s.Failures.Load() != 1 || s.Completions.Load() != 0 {
		t.Errorf("stats %s, want 1 claim, 2 retries, 1 failure", stats(w))
	}
}

// TestPermanentFailureIsNotRetried: an error marked by Permanent, bare or
// wrapped, fails the job on its first attempt.
func TestPermanentFailureIsNotRetried(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	rec := &recorder{}
	w := startWorker(t, e, consumers.Config{MaxAttempts: 5, Handler: func(_ context.Context, job consumers.Job) (json.RawMessage, error) {
		rec.record(job)
		err := consumers.Permanent(errors.New("image is not decodable"))
		if job.JobID == "perm-wrapped" {
			return nil, fmt.Errorf("analyze %s: %w", job.JobID, err)
		}
		return nil, err
	}})

	want := map[string]string{
		"perm-bare":    "image is not decodable",
		"perm-wrapped": "analyze perm-wrapped: image is not decodable",
	}
	for id := range want {
		insertJobs(t, e, id)
	}
	for id, wantErr := range want {
		j := waitJob(t, e, id, step, "failed", 30*time.Second)
		if j.err != wantErr {
			t.Errorf("job %s error %q, want %q", id, j.err, wantErr)
		}
		if runs := getRuns(t, e, id); len(runs) != 1 || runs[0].outcome != "failed" || runs[0].err != wantErr {
			t.Errorf("job %s has runs %+v, want one failed run", id, runs)
		}
		if got := rec.attempts(id); !slices.Equal(got, []int{1}) {
			t.Errorf("handler of %s was given attempts %v, want [1]", id, got)
		}
	}
	harness.Eventually(t, 10*time.Second, func() (bool, string) {
		got := map[string]string{}
		for _, m := range e.ReadTopic(t, e.Topics().DLQ()) {
			d := decodeEvent(t, m.Value)
			got[schema.JobIDFromKey(m.Key)] = fmt.Sprint(d["attempts"], " ", d["error"])
		}
		return got["perm-bare"] == "1 "+want["perm-bare"] && got["perm-wrapped"] == "1 "+want["perm-wrapped"],
			fmt.Sprintf("dead letters %v", got)
	})
	s := w.Stats()
	if s.Retries.Load() != 0 || s.Failures.Load() != 2 {
		t.Errorf("stats %s, want no retry and 2 failures", stats(w))
	}
}

// TestFencedResultIsDiscarded: while attempt 1 runs, its run is closed and
// the job rewound from outside (what the sweeper does when a lease expires).
// The attempt is fenced — its handler is cancelled, or its late result is
// refused — and the job, re-delivered by the rewind, completes with attempt
// 2's result; attempt 1 stays expired.
func TestFencedResultIsDiscarded(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		honorsCtx bool // the handler returns when its ctx ends; else only when released
	}{
		{"handler cancelled by the renewer", true},
		{"late result refused at completion", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := streamingEnv(t)
			const id = "fenced"
			h, w := loseFirstAttempt(t, e, id, tc.honorsCtx)
			if !tc.honorsCtx {
				h.release()
			}

			j := waitJob(t, e, id, step, "done", 20*time.Second)
			if got := string(j.results[step]); got != `{"attempt": 2}` {
				t.Errorf("result %s, want attempt 2's", got)
			}
			runs := getRuns(t, e, id)
			if len(runs) != 2 || runs[0].outcome != "expired" || runs[0].err != "closed by the test" || runs[1].outcome != "done" {
				t.Errorf("runs %+v, want attempt 1 expired (as the test closed it) and attempt 2 done", runs)
			}
			if n := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE job_id = $1 AND outcome = 'done'`, id); n != 1 {
				t.Errorf("%d done runs, want 1", n)
			}
			if got := h.attempts(id); !slices.Equal(got, []int{1, 2}) {
				t.Errorf("handler was given attempts %v, want [1 2]", got)
			}
			if tc.honorsCtx && !h.ctxEnded.Load() {
				t.Errorf("attempt 1's handler was not cancelled when its run was lost")
			}
			// The counters move just after the completion commits.
			harness.Eventually(t, 10*time.Second, func() (bool, string) {
				s := w.Stats()
				return s.Fenced.Load() >= 1 && s.Completions.Load() == 1 && s.Claims.Load() == 2,
					fmt.Sprintf("stats %s, want fenced >= 1, 2 claims, 1 completion", stats(w))
			})
		})
	}
}

// TestLateResultDoesNotOverwriteNewerAttempt: attempt 1 loses its run and,
// before it returns, another worker has already claimed the job again
// (attempt 2 running, as after a rebalance). Attempt 1's late result must
// change nothing: the job stays (vlm_analyze, running) under attempt 2, and
// the rewind's trigger event finds nothing to claim.
func TestLateResultDoesNotOverwriteNewerAttempt(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	const id = "taken-over"
	h, w := loseFirstAttempt(t, e, id, false) // a step that cannot be interrupted
	// Another worker claims the rewound job: attempt 2, open, with a long lease.
	e.Exec(t, `WITH claimed AS (UPDATE jobs SET current_step = $2, status = 'running', updated_at = now()
			WHERE job_id = $1 AND current_step = $3 AND status = 'done' RETURNING job_id)
		INSERT INTO jobstream_runs (job_id, step, attempt, worker, lease_expires_at)
		SELECT job_id, $2, 2, 'other', now() + interval '1 hour' FROM claimed`, id, step, trigger)
	skipped := w.Stats().Skipped.Load()
	h.release()

	// Attempt 1 is fenced, then the rewind's event is consumed and skipped.
	harness.Eventually(t, 20*time.Second, func() (bool, string) {
		s := w.Stats()
		return s.Fenced.Load() >= 1 && s.Skipped.Load() > skipped && s.InFlight.Load() == 0, stats(w)
	})
	j := getJob(t, e, id)
	if j.step != step || j.status != "running" || j.results[step] != nil {
		t.Errorf("job is %s, want (%s, running) with no result: attempt 2 holds it", j, step)
	}
	runs := getRuns(t, e, id)
	if len(runs) != 2 || runs[0].outcome != "expired" || runs[0].err != "closed by the test" ||
		runs[1].worker != "other" || runs[1].finished {
		t.Errorf("runs %+v, want attempt 1 expired as the test closed it and attempt 2 open", runs)
	}
	if got := h.attempts(id); !slices.Equal(got, []int{1}) {
		t.Errorf("handler was given attempts %v, want [1]", got)
	}
	if s := w.Stats(); s.Completions.Load() != 0 || s.Claims.Load() != 1 {
		t.Errorf("stats %s, want 1 claim and no completion", stats(w))
	}
}

// TestSweeperRescuesExpiredLease: a job left (vlm_analyze, running) by a
// dead worker whose lease expired is rewound by a live worker's sweeper and
// re-delivered: it completes at attempt 2 and attempt 1 is closed as expired.
// A run with attempts spent fails the job; a run whose lease is still valid
// is left alone.
func TestSweeperRescuesExpiredLease(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	rec := &recorder{}
	w := startWorker(t, e, consumers.Config{Lease: time.Second, MaxAttempts: 3, Handler: rec.attemptResult})

	orphan := func(id string, attempt int, lease string) {
		e.Exec(t, `INSERT INTO jobs (job_id, current_step, status, results)
			VALUES ($1, $2, 'running', '{"img_gen": {"url": "s3://img/x.png"}}')`, id, step)
		e.Exec(t, `INSERT INTO jobstream_runs (job_id, step, attempt, worker, trigger_lsn, trigger_commit_at, lease_expires_at, started_at)
			VALUES ($1, $2, $3, 'dead', '0', now() - interval '10 minutes', now() + $4::interval, now() - interval '5 minutes')`,
			id, step, attempt, lease)
	}
	orphan("orphan", 1, "-1 minute")
	orphan("spent", 3, "-1 minute")
	orphan("alive", 1, "1 hour")

	j := waitJob(t, e, "orphan", step, "done", 20*time.Second)
	if got := string(j.results[step]); got != `{"attempt": 2}` || j.results[trigger] == nil {
		t.Errorf("orphan is %s, want attempt 2's result next to img_gen's", j)
	}
	runs := getRuns(t, e, "orphan")
	if len(runs) != 2 ||
		runs[0].outcome != "expired" || runs[0].worker != "dead" || !strings.Contains(runs[0].err, "dead") ||
		runs[1].outcome != "done" || !strings.HasPrefix(runs[1].worker, "test-worker/") {
		t.Errorf("orphan's runs %+v, want attempt 1 expired (worker dead) and attempt 2 done by test-worker", runs)
	}
	if got := rec.attempts("orphan"); !slices.Equal(got, []int{2}) {
		t.Errorf("handler was given attempts %v for orphan, want [2]", got)
	}

	j = waitJob(t, e, "spent", step, "failed", 10*time.Second)
	if j.err != "lease expired on attempt 3 of 3" {
		t.Errorf("spent job error %q", j.err)
	}
	if runs := getRuns(t, e, "spent"); len(runs) != 1 || runs[0].outcome != "expired" {
		t.Errorf("spent job's runs %+v, want its one run expired", runs)
	}
	if n := len(rec.of("spent")); n != 0 {
		t.Errorf("handler ran %d times for a job whose attempts were spent", n)
	}

	// Several sweeps have passed (every 500ms) since the orphan was rewound.
	if j := getJob(t, e, "alive"); j.step != step || j.status != "running" {
		t.Errorf("a job whose lease is valid was swept: %s", j)
	}
	if runs := getRuns(t, e, "alive"); len(runs) != 1 || runs[0].finished {
		t.Errorf("alive job's runs %+v, want its run still open", runs)
	}
	// The counters move just after the completion commits.
	harness.Eventually(t, 10*time.Second, func() (bool, string) {
		s := w.Stats()
		return s.Claims.Load() == 1 && s.Completions.Load() == 1 && s.Failures.Load() == 1 && s.Expired.Load() == 2,
			fmt.Sprintf("stats %s, expired %d; want 1 claim, 1 completion, 1 failure, 2 expired", stats(w), s.Expired.Load())
	})
	// The job the sweeper failed is dead-lettered like any failed job.
	harness.Eventually(t, 10*time.Second, func() (bool, string) {
		d := deadLetters(t, e)["spent"]
		return d != nil && d["reason"] == "lease expired" && d["attempts"] == json.Number("3") &&
				d["error"] == "lease expired on attempt 3 of 3" && d["step"] == step && d["trigger_lsn"] == "0",
			fmt.Sprintf("dead letter of the spent job: %v", d)
	})
	if d := deadLetters(t, e); d["orphan"] != nil || d["alive"] != nil {
		t.Errorf("dead letters for jobs that did not fail: %v", d)
	}
}

// TestExecHandler runs real step programs (no shell in between): the job on
// stdin, its identity in the environment, JSON on stdout; exit codes and
// stderr become errors; a stop kills the step's whole process group.
func TestExecHandler(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// All scripts are written before any runs: a fork while a script is open
	// for writing would make exec fail with "text file busy".
	script := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	echo := script("echo.sh", `in=$(cat)
printf '{"job_id":"%s","step":"%s","attempt":%s,"gpu":"%s","stdin":%s}\n' \
  "$JOBSTREAM_JOB_ID" "$JOBSTREAM_STEP" "$JOBSTREAM_ATTEMPT" "$CUDA_VISIBLE_DEVICES" "$in"
`)
	permanent := script("permanent.sh", "cat >/dev/null\necho 'unsupported image format' >&2\nexit 65\n")
	transient := script("transient.sh", "cat >/dev/null\necho 'noise on stdout'\necho 'CUDA out of memory' >&2\nexit 1\n")
	notJSON := script("notjson.sh", "cat >/dev/null\necho 'caption: a cat'\n")
	silent := script("silent.sh", "cat >/dev/null\n")
	pidFile := filepath.Join(dir, "child.pid")
	sleeper := script("sleep.sh", "cat >/dev/null\nsleep 30 &\necho $! > '"+pidFile+"'\nwait\n")

	job := consumers.Job{JobID: "j1", Step: "s", Attempt: 2, GPU: "3",
		Payload: json.RawMessage(`{}`), Results: json.RawMessage(`{}`)}
	run := func(ctx context.Context, path string) (json.RawMessage, error) {
		return consumers.Exec(path)(ctx, job)
	}

	t.Run("result", func(t *testing.T) {
		t.Parallel()
		out, err := run(context.Background(), echo)
		if err != nil {
			t.Fatal(err)
		}
		var got struct {
			JobID   string `json:"job_id"`
			Step    string `json:"step"`
			Attempt int    `json:"attempt"`
			GPU     string `json:"gpu"`
			Stdin   struct {
				JobID   string          `json:"job_id"`
				Step    string          `json:"step"`
				Attempt int             `json:"attempt"`
				GPU     string          `json:"gpu"`
				Payload json.RawMessage `json:"payload"`
				Results json.RawMessage `json:"results"`
			} `json:"stdin"`
		}
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("result %s: %v", out, err)
		}
		if got.JobID != "j1" || got.Step != "s" || got.Attempt != 2 || got.GPU != "3" {
			t.Errorf("environment seen by the step: %s", out)
		}
		in := got.Stdin
		if in.JobID != "j1" || in.Step != "s" || in.Attempt != 2 || in.GPU != "3" || string(in.Payload) != "{}" || string(in.Results) != "{}" {
			t.Errorf("stdin seen by the step: %s", out)
		}
	})
	t.Run("exit 65 is permanent", func(t *testing.T) {
		t.Parallel()
		_, err := run(context.Background(), permanent)
		if !consumers.IsPermanent(err) || !strings.Contains(fmt.Sprint(err), "unsupported image format") {
			t.Errorf("err = %v (permanent %v), want a permanent error with the stderr text", err, consumers.IsPermanent(err))
		}
	})
	t.Run("exit 1 is retriable with stderr", func(t *testing.T) {
		t.Parallel()
		_, err := run(context.Background(), transient)
		if err == nil || consumers.IsPermanent(err) || !strings.Contains(err.Error(), "CUDA out of memory") {
			t.Errorf("err = %v (permanent %v), want a retriable error with the stderr text", err, consumers.IsPermanent(err))
		}
	})
	t.Run("stdout not JSON", func(t *testing.T) {
		t.Parallel()
		out, err := run(context.Background(), notJSON)
		if err == nil || !strings.Contains(err.Error(), "caption: a cat") {
			t.Errorf("result %s, err %v; want an error quoting the output", out, err)
		}
	})
	t.Run("empty stdout is null", func(t *testing.T) {
		t.Parallel()
		out, err := run(context.Background(), silent)
		if err != nil || string(out) != "null" {
			t.Errorf("result %q, err %v; want null", out, err)
		}
	})
	t.Run("stop kills the process group", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := run(ctx, sleeper)
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("the step returned %s after its deadline", took)
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v, want the deadline", err)
		}
		// The grandchild (sleep 30) died with its group.
		b, err := os.ReadFile(pidFile)
		if err != nil {
			t.Fatalf("the step wrote no child pid: %v", err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		harness.Eventually(t, 5*time.Second, func() (bool, string) {
			st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if err != nil {
				return true, "" // gone
			}
			// The state follows the parenthesized command name; Z is a zombie.
			f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+1:]))
			return len(f) > 0 && f[0] == "Z", fmt.Sprintf("child %d still running: %s", pid, st)
		})
	})
}
