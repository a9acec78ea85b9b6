package consumers_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
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

	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
)

// TestEmptyResultIsNull: a handler returning (nil, nil), an empty or a
// blank result completes its job with a null result.
func TestEmptyResultIsNull(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	results := map[string]json.RawMessage{"nil-result": nil, "empty-result": {}, "blank-result": json.RawMessage(" \n")}
	w := startWorker(t, e, consumers.Config{Handler: func(_ context.Context, job consumers.Job) (json.RawMessage, error) {
		return results[job.JobID], nil
	}})
	for id := range results {
		insertJobs(t, e, id)
	}
	for id := range results {
		j := waitJob(t, e, id, step, "done", 30*time.Second)
		if got, ok := j.results[step]; !ok || string(got) != "null" {
			t.Errorf("job %s is %s, want a null %s result", id, j, step)
		}
		if runs := getRuns(t, e, id); len(runs) != 1 || runs[0].outcome != "done" {
			t.Errorf("job %s has runs %+v, want one done run", id, runs)
		}
	}
	if s := w.Stats(); s.Failures.Load() != 0 || s.Retries.Load() != 0 {
		t.Errorf("stats %s, want no failure and no retry", stats(w))
	}
}

// TestLeaseKeptThroughRetryBackoff: the backoff before a retry (3s ± 50%)
// is longer than the lease (1s); the run stays held through it, so the
// sweeper never takes a live worker's job: attempt 1 failed, attempt 2 done,
// nothing expired.
func TestLeaseKeptThroughRetryBackoff(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	rec := &recorder{}
	w := startWorker(t, e, consumers.Config{Lease: time.Second, RetryBackoff: 3 * time.Second, MaxAttempts: 2,
		Handler: func(_ context.Context, job consumers.Job) (json.RawMessage, error) {
			rec.record(job)
			if job.Attempt == 1 {
				return nil, errors.New("model server busy")
			}
			return json.Marshal(map[string]int{"attempt": job.Attempt})
		}})
	insertJobs(t, e, "backoff")
	j := waitJob(t, e, "backoff", step, "done", 30*time.Second)
	if got := string(j.results[step]); got != `{"attempt": 2}` {
		t.Errorf("result %s, want attempt 2's", got)
	}
	runs := getRuns(t, e, "backoff")
	if len(runs) != 2 || runs[0].outcome != "failed" || runs[0].err != "model server busy" || runs[1].outcome != "done" {
		t.Errorf("runs %+v, want attempt 1 failed and attempt 2 done, none expired", runs)
	}
	calls := rec.of("backoff")
	if len(calls) != 2 {
		t.Fatalf("handler called %d times, want 2", len(calls))
	}
	t.Logf("backoff between the attempts: %s (lease 1s)", calls[1].at.Sub(calls[0].at).Round(10*time.Millisecond))
	if s := w.Stats(); s.Expired.Load() != 0 || s.Fenced.Load() != 0 || s.Claims.Load() != 1 {
		t.Errorf("stats %s, expired %d; want 1 claim, nothing expired or fenced", stats(w), s.Expired.Load())
	}
}

// TestPostgresRefusedDataFailsStep: a result Postgres refuses (valid JSON,
// but jsonb rejects \u0000: SQLSTATE 22P05) and an error text it cannot
// store as is (a NUL byte, invalid UTF-8) fail or finish their jobs at once
// instead of being retried forever, and the jobs behind them in the same
// partition go on.
func TestPostgresRefusedDataFailsStep(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	ids := sameKeyPartition("nul-", 4) // bad result, bad error text, then two good jobs
	rec := &recorder{}
	w := startWorker(t, e, consumers.Config{MaxAttempts: 2, RetryBackoff: 50 * time.Millisecond,
		Handler: func(_ context.Context, job consumers.Job) (json.RawMessage, error) {
			rec.record(job)
			switch job.JobID {
			case ids[0]:
				return json.RawMessage(`{"caption": "a\u0000b"}`), nil
			case ids[1]:
				return nil, consumers.Permanent(errors.New("decoder said \x00\xff\xfe and gave up"))
			}
			return json.RawMessage(`{"caption": "a cat"}`), nil
		}})
	insertJobs(t, e, ids...)

	bad := waitJob(t, e, ids[0], step, "failed", 30*time.Second)
	if !strings.Contains(bad.err, "postgres refused the result") || !strings.Contains(bad.err, "22P05") {
		t.Errorf("job %s error %q, want Postgres's refusal of the result", ids[0], bad.err)
	}
	if got := rec.attempts(ids[0]); !slices.Equal(got, []int{1}) {
		t.Errorf("the refused result's handler was given attempts %v, want [1]: a refused result is not retried", got)
	}
	badErr := waitJob(t, e, ids[1], step, "failed", 30*time.Second)
	if want := "decoder said \\0\uFFFD and gave up"; badErr.err != want {
		t.Errorf("job %s error %q, want the error text made storable: %q", ids[1], badErr.err, want)
	}
	for _, id := range ids[2:] {
		waitJob(t, e, id, step, "done", 30*time.Second)
	}
	harness.Eventually(t, 10*time.Second, func() (bool, string) {
		d := deadLetters(t, e)
		return d[ids[0]] != nil && d[ids[1]] != nil, fmt.Sprintf("dead letters %v", d)
	})
	if s := w.Stats(); s.Failures.Load() != 2 || s.Completions.Load() != 2 {
		t.Errorf("stats %s, want 2 failures and 2 completions", stats(w))
	}
}

// TestConstructorsValidate: New refuses an Exec or HTTP handler that cannot
// run, with the reason, at construction rather than at the first job (such
// a handler called directly fails permanently, it does not panic);
// Permanent(nil) is a usable error.
func TestConstructorsValidate(t *testing.T) {
	t.Parallel()
	newWorker := func(h consumers.Handler) error {
		_, err := consumers.New(consumers.Config{DatabaseURL: "postgres://x", Brokers: []string{"x:1"}, Step: step, Handler: h})
		return err
	}
	for _, tc := range []struct {
		name string
		h    consumers.Handler
		says string
	}{
		{"Exec()", consumers.Exec(), "no step command given"},
		{`Exec("")`, consumers.Exec(""), "no step command given"},
		{"Exec(missing file)", consumers.Exec("/no/such/step"), `step command "/no/such/step" cannot be run: no such file or directory`},
		{"Exec(not on PATH)", consumers.Exec("no-such-step-on-path"), "executable file not found"},
		{`HTTP("")`, consumers.HTTP(""), "not an absolute http"},
		{"HTTP(no scheme)", consumers.HTTP("localhost:8080/step"), "not an absolute http"},
		{"HTTP(ftp)", consumers.HTTP("ftp://x/y"), "not an absolute http"},
		{"HTTP(no host)", consumers.HTTP("http:///step"), "not an absolute http"},
		{"nil", nil, "Handler is nil"},
	} {
		if err := newWorker(tc.h); err == nil || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("New with %s: %v, want an error saying %q", tc.name, err, tc.says)
		}
		if tc.h == nil {
			continue
		}
		_, err := tc.h(context.Background(), consumers.Job{JobID: "j"})
		if !consumers.IsPermanent(err) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s called: %v, want a permanent error saying %q", tc.name, err, tc.says)
		}
	}
	for name, h := range map[string]consumers.Handler{
		"Exec(true)": consumers.Exec("true", "--ignored"), "HTTP(http://host/step)": consumers.HTTP("http://localhost:1/step"),
		"a Go func": func(context.Context, consumers.Job) (json.RawMessage, error) { return nil, nil },
	} {
		if err := newWorker(h); err != nil {
			t.Errorf("New with %s: %v", name, err)
		}
	}
	err := consumers.Permanent(nil)
	if err == nil || !consumers.IsPermanent(err) || err.Error() != "permanent failure" {
		t.Errorf("Permanent(nil) = %v (permanent %v)", err, consumers.IsPermanent(err))
	}
}

// TestStepTimeoutKillsProcessGroup: an exec step that runs over Timeout is
// killed with its whole process group (a grandchild included), each
// attempt recorded, and after MaxAttempts the job fails with the timeout
// as its error and a dead letter.
func TestStepTimeoutKillsProcessGroup(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	dir := t.TempDir()
	hang := script(t, dir, "hang.sh", `cat >/dev/null
sleep 300 &
echo $! >> "`+dir+`/grandchildren"
wait
`)
	h := consumers.Exec(hang)
	startWorker(t, e, consumers.Config{Timeout: time.Second, MaxAttempts: 2, RetryBackoff: 50 * time.Millisecond, Handler: h})
	insertJobs(t, e, "hang")
	j := waitJob(t, e, "hang", step, "failed", 60*time.Second)
	if !strings.Contains(j.err, "step timed out after 1s") {
		t.Errorf("error %q, want the timeout", j.err)
	}
	runs := getRuns(t, e, "hang")
	if len(runs) != 2 || runs[0].outcome != "failed" || runs[1].outcome != "failed" || !strings.Contains(runs[0].err, "timed out") {
		t.Errorf("runs %+v, want two attempts failed by the timeout", runs)
	}
	b, err := os.ReadFile(filepath.Join(dir, "grandchildren"))
	if err != nil {
		t.Fatal(err)
	}
	pids := strings.Fields(string(b))
	if len(pids) != 2 {
		t.Errorf("grandchildren %q, want one per attempt", pids)
	}
	for _, p := range pids {
		pid, _ := strconv.Atoi(p)
		harness.Eventually(t, 10*time.Second, func() (bool, string) {
			return !alive(pid), fmt.Sprintf("grandchild %d outlived its step's timeout", pid)
		})
	}
	harness.Eventually(t, 10*time.Second, func() (bool, string) {
		d := deadLetters(t, e)["hang"]
		return d != nil && d["attempts"] == json.Number("2"), fmt.Sprintf("dead letter of hang: %v", d)
	})
}

// TestPoisonEventsDoNotBlockPartitions: a message that is not an envelope
// in every partition, ahead of the jobs, is dead-lettered and skipped; the
// jobs behind it complete.
func TestPoisonEventsDoNotBlockPartitions(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	// The worker creates the topic; poison every partition before it reads.
	rec := &recorder{}
	w0 := startWorker(t, e, consumers.Config{WorkerID: "creator", Handler: rec.attemptResult})
	select {
	case <-w0.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("worker not ready")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for p := range schema.DefaultPartitions {
		conn, err := kafka.DialLeader(ctx, "tcp", e.Brokers[0], e.Topic(trigger), p)
		if err != nil {
			t.Fatal(err)
		}
		_, err = conn.WriteMessages(kafka.Message{Key: []byte(fmt.Sprintf("poison-%d", p)), Value: []byte(`{"op": "u", "after": [1, 2`)})
		conn.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	var ids []string
	for i := range 24 {
		ids = append(ids, fmt.Sprintf("after-poison-%d", i))
	}
	insertJobs(t, e, ids...)
	for _, id := range ids {
		waitJob(t, e, id, step, "done", 30*time.Second)
	}
	harness.Eventually(t, 10*time.Second, func() (bool, string) {
		d := deadLetters(t, e)
		n := 0
		for k, v := range d {
			if strings.HasPrefix(k, "poison-") && strings.HasPrefix(fmt.Sprint(v["reason"]), "event is not a change-event envelope") {
				n++
			}
		}
		return n == schema.DefaultPartitions, fmt.Sprintf("%d poison messages dead-lettered, want %d", n, schema.DefaultPartitions)
	})
	waitAllCommitted(t, e, step, trigger)
}

// TestLongStepKeepsLeaseWithoutChangeEvents: a step running 4 leases long
// keeps its run (renewed, never swept); the renewals write only to
// jobstream_runs, so the job's topic shows exactly its claim and its
// completion.
func TestLongStepKeepsLeaseWithoutChangeEvents(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	var leaseSeen atomic.Int64
	pool := e.Pool(t) // here: the handler runs where t.Fatal must not
	w := startWorker(t, e, consumers.Config{Lease: time.Second, Handler: func(ctx context.Context, job consumers.Job) (json.RawMessage, error) {
		select {
		case <-time.After(4 * time.Second):
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
		var ahead float64
		pool.QueryRow(ctx, `SELECT extract(epoch FROM lease_expires_at - started_at) FROM jobstream_runs WHERE job_id = $1`, job.JobID).Scan(&ahead)
		leaseSeen.Store(int64(ahead * 1000))
		return json.RawMessage(`{"long": true}`), nil
	}})
	insertJobs(t, e, "long-step")
	waitJob(t, e, "long-step", step, "done", 60*time.Second)
	if ms := leaseSeen.Load(); ms < 3000 {
		t.Errorf("after 4s the lease reached %dms past the start; it was not renewed", ms)
	}
	if runs := getRuns(t, e, "long-step"); len(runs) != 1 || runs[0].outcome != "done" {
		t.Errorf("runs %+v, want the one attempt done", runs)
	}
	harness.Eventually(t, 10*time.Second, func() (bool, string) {
		got := transitions(t, e, step)["long-step"]
		return slices.Equal(got, []string{step + "/running", step + "/done"}), fmt.Sprintf("events of long-step on %s: %v", e.Topic(step), got)
	})
	if s := w.Stats(); s.Expired.Load() != 0 || s.Fenced.Load() != 0 {
		t.Errorf("stats %s, expired %d; want nothing expired or fenced", stats(w), s.Expired.Load())
	}
}

// TestConcurrencyRunsPartitionsInParallel: with Concurrency 3, one member
// runs up to three steps at once, from different partitions, and never more.
func TestConcurrencyRunsPartitionsInParallel(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	var ids []string
	for i := range 24 {
		ids = append(ids, fmt.Sprintf("par-%d", i))
	}
	insertJobs(t, e, ids...) // a backlog in (almost) every partition
	var c concurrency
	startWorker(t, e, consumers.Config{Concurrency: 3, Handler: func(ctx context.Context, job consumers.Job) (json.RawMessage, error) {
		c.enter()
		defer c.leave()
		time.Sleep(200 * time.Millisecond)
		return json.RawMessage(`{}`), nil
	}})
	for _, id := range ids {
		waitJob(t, e, id, step, "done", 60*time.Second)
	}
	t.Logf("at most %d steps ran at once", c.peak())
	if p := c.peak(); p > 3 || p < 2 {
		t.Errorf("at most %d steps ran at once, want 2 or 3 (Concurrency 3)", p)
	}
}

// TestHTTPHandler: the http executor's answers: 2xx is the result (empty is
// null), 4xx permanent (408 and 429 retried), 5xx, a timeout, a refused
// connection and a 2xx without JSON retried.
func TestHTTPHandler(t *testing.T) {
	t.Parallel()
	var got atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var job consumers.Job
		json.NewDecoder(r.Body).Decode(&job)
		got.Store(r.Header.Clone())
		switch job.JobID {
		case "ok":
			fmt.Fprintf(w, `{"seen": %q, "gpu": %q}`, job.JobID, job.GPU)
		case "empty":
			w.WriteHeader(http.StatusNoContent)
		case "html":
			fmt.Fprint(w, "<html>ok</html>")
		case "slow":
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		default:
			code, _ := strconv.Atoi(job.JobID)
			http.Error(w, "said "+job.JobID, code)
		}
	}))
	t.Cleanup(srv.Close)
	h := consumers.HTTP(srv.URL + "/step")
	call := func(ctx context.Context, id string) (json.RawMessage, error) {
		return h(ctx, consumers.Job{JobID: id, Step: "s", Attempt: 2, GPU: "1", Payload: json.RawMessage(`{}`), Results: json.RawMessage(`{}`)})
	}

	out, err := call(context.Background(), "ok")
	if err != nil || string(out) != `{"seen": "ok", "gpu": "1"}` {
		t.Errorf("200: %s, %v", out, err)
	}
	hdr := got.Load().(http.Header)
	if hdr.Get("Idempotency-Key") != "ok/s/2" || hdr.Get("X-Jobstream-Attempt") != "2" || hdr.Get("X-Jobstream-Gpu") != "1" {
		t.Errorf("headers %v", hdr)
	}
	if out, err := call(context.Background(), "empty"); err != nil || string(out) != "null" {
		t.Errorf("204: %s, %v; want null", out, err)
	}
	for _, tc := range []struct {
		id        string
		permanent bool
		says      string
	}{
		{"400", true, "400 Bad Request: said 400"},
		{"404", true, "404 Not Found"},
		{"422", true, "said 422"},
		{"408", false, "408"},
		{"429", false, "429"},
		{"500", false, "500 Internal Server Error: said 500"},
		{"503", false, "503"},
		{"html", false, "no JSON"},
	} {
		_, err := call(context.Background(), tc.id)
		if err == nil || consumers.IsPermanent(err) != tc.permanent || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: err %v (permanent %v), want permanent=%v saying %q", tc.id, err, consumers.IsPermanent(err), tc.permanent, tc.says)
		}
	}
	ctx, cancel := context.WithTimeoutCause(context.Background(), 200*time.Millisecond, errors.New("step timed out after 200ms"))
	defer cancel()
	if _, err := call(ctx, "slow"); err == nil || consumers.IsPermanent(err) || !strings.Contains(err.Error(), "timed out") {
		t.Errorf("timeout: err %v, want a retriable timeout", err)
	}
	// A port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	down := consumers.HTTP("http://" + addr + "/step")
	if _, err := down(context.Background(), consumers.Job{JobID: "x"}); err == nil || consumers.IsPermanent(err) || !strings.Contains(err.Error(), "refused") {
		t.Errorf("connection refused: err %v, want a retriable error", err)
	}
}

// TestHTTPJobIDHeaders: with the http executor a job id that is no valid
// header value (a newline, non-ASCII) still completes: X-Jobstream-Job-Id
// and Idempotency-Key carry it percent-encoded, and url.PathUnescape of the
// header gives back the id of the body. A plain id goes as it is; an id
// holding '%' is encoded, so that no two ids share a header value.
func TestHTTPJobIDHeaders(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	type seen struct{ id, key string }
	var mu sync.Mutex
	got := map[string][]seen{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var job consumers.Job
		if err := json.NewDecoder(r.Body).Decode(&job); err != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		mu.Lock()
		got[job.JobID] = append(got[job.JobID], seen{r.Header.Get("X-Jobstream-Job-Id"), r.Header.Get("Idempotency-Key")})
		mu.Unlock()
		fmt.Fprint(w, `{"ok": true}`)
	}))
	t.Cleanup(srv.Close)
	startWorker(t, e, consumers.Config{Handler: consumers.HTTP(srv.URL + "/step")})

	want := map[string]string{ // job id → X-Jobstream-Job-Id
		"a\nb":          "a%0Ab",
		"café-画像":       "caf%C3%A9-%E7%94%BB%E5%83%8F",
		"tab\tand\x7f":  "tab%09and%7F",
		" padded ":      "%20padded%20",
		"50%":           "50%25",
		"a%0Ab":         "a%250Ab",
		"plain id/1-ok": "plain id/1-ok",
	}
	var ids []string
	for id := range want {
		ids = append(ids, id)
	}
	insertJobs(t, e, ids...)
	for _, id := range ids {
		waitJob(t, e, id, step, "done", 60*time.Second)
	}
	mu.Lock()
	for _, id := range ids {
		calls := got[id]
		if len(calls) != 1 {
			t.Errorf("job %q was POSTed %d times, want once: %q", id, len(calls), calls)
			continue
		}
		c := calls[0]
		if c.id != want[id] || c.key != want[id]+"/"+step+"/1" {
			t.Errorf("job %q: X-Jobstream-Job-Id %q, Idempotency-Key %q; want %q and %q", id, c.id, c.key, want[id], want[id]+"/"+step+"/1")
		}
		if dec, err := url.PathUnescape(c.id); err != nil || dec != id {
			t.Errorf("job %q: url.PathUnescape(%q) = %q, %v; want the id", id, c.id, dec, err)
		}
	}
	mu.Unlock()
	checkOneCompletion(t, e, ids...)
}

// TestClaimWaitsForEventTransaction: an event can reach the worker before
// its transaction is visible to other sessions (Postgres writes the commit
// to the WAL a moment before it makes it visible). Here the trigger event
// of a job inserted by a transaction still open is produced by hand; the
// claim must not take "nothing to claim" for an answer until the
// transaction is visible, then claim the job.
func TestClaimWaitsForEventTransaction(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	sink := &harness.Buffer{}
	t.Cleanup(func() { // after the worker stopped
		if t.Failed() {
			t.Logf("--- worker log ---\n%s", sink.String())
		}
	})
	rec := &recorder{}
	w, err := consumers.New(consumers.Config{DatabaseURL: e.DatabaseURL, Brokers: e.Brokers, TopicPrefix: e.Prefix,
		Step: step, Handler: rec.attemptResult, WorkerID: "test-worker",
		Logger: slog.New(slog.NewTextHandler(sink, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	harness.Go(t, context.Background(), "worker", w.Run).WaitReady(t, w.Ready())

	tx, err := e.Pool(t).Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // committed below
	var xid int64
	if err := tx.QueryRow(context.Background(), `INSERT INTO jobs (job_id, current_step, status) VALUES ('early', $1, 'done')
		RETURNING txid_current()`, trigger).Scan(&xid); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UnixMilli()
	ev := fmt.Sprintf(`{"before": null, "after": {"job_id": "early", "current_step": %q, "status": "done"},
		"source": {"version": "test", "connector": "postgresql", "snapshot": "false", "txId": %d, "lsn": 1, "ts_ms": %d},
		"op": "c", "ts_ms": %d}`, trigger, uint32(xid), now, now)
	wr := &kafka.Writer{Addr: kafka.TCP(e.Brokers...), Topic: e.Topic(trigger), Balancer: &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	// kafka-go's shared metadata cache may not know the new topic yet.
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		err := wr.WriteMessages(context.Background(), kafka.Message{Key: []byte("early"), Value: []byte(ev)})
		return err == nil, fmt.Sprint("produce the event: ", err)
	})
	wr.Close()
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		return strings.Contains(sink.String(), "not visible yet"), "the worker has not met the event yet"
	})
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitJob(t, e, "early", step, "done", 30*time.Second)
	if got := rec.attempts("early"); !slices.Equal(got, []int{1}) {
		t.Errorf("handler was given attempts %v, want [1]", got)
	}
}

// TestStopWhileStarting: a worker stopped before it reached the broker and
// Postgres returns nil, as any deliberate stop.
func TestStopWhileStarting(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	for _, after := range []time.Duration{0, time.Millisecond, 5 * time.Millisecond, 20 * time.Millisecond} {
		w, err := consumers.New(consumers.Config{DatabaseURL: e.DatabaseURL, Brokers: e.Brokers, TopicPrefix: e.Prefix, Step: step,
			Handler: (&recorder{}).attemptResult, Logger: testLogger(t, "worker")})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(after, cancel)
		err = w.Run(ctx)
		cancel()
		if err != nil {
			t.Errorf("stopped %s after the start: Run = %v, want nil", after, err)
		}
	}
}

// TestExecStdoutIsTheResult: a step's stdout is its JSON result alone; a
// log line printed there fails the attempt with an error that quotes what
// was printed and says logs belong on stderr, where they do no harm.
func TestExecStdoutIsTheResult(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	steps := map[string]string{
		"log-then-json": script(t, dir, "log-then-json.sh", "cat >/dev/null; echo 'loading model...'; echo '{\"boxes\": []}'\n"),
		"log-only":      script(t, dir, "log-only.sh", "cat >/dev/null; echo 'loading model...'\n"),
		"log-on-stderr": script(t, dir, "log-on-stderr.sh", "cat >/dev/null; echo 'loading model...' >&2; echo '{\"boxes\": []}'\n"),
	}
	for _, tc := range []struct {
		name   string
		result string   // on success
		says   []string // in the error otherwise
	}{
		{"log-then-json", "", []string{"log-then-json.sh printed text before its JSON result on stdout", `(starts "loading model...\n{\"boxes\": []}")`, "write logs to stderr"}},
		{"log-only", "", []string{"log-only.sh printed no JSON on stdout", `(starts "loading model...")`, "write logs to stderr"}},
		{"log-on-stderr", `{"boxes": []}`, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := consumers.Exec(steps[tc.name])(context.Background(), consumers.Job{JobID: "j1", Step: "s", Attempt: 1})
			if tc.says == nil {
				if err != nil || string(out) != tc.result {
					t.Errorf("got %s, %v; want %s", out, err, tc.result)
				}
				return
			}
			if err == nil {
				t.Fatalf("got %s, want an error", out)
			}
			for _, s := range tc.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
		})
	}
}
