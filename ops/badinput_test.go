package ops_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
)

// badStep misbehaves according to the job id.
const badStep = `#!/bin/sh
cat >/dev/null
case "$JOBSTREAM_JOB_ID" in
  hang) sleep 1000 ;;
  crash) kill -SEGV $$ ;;
  huge) head -c 4000000000 /dev/zero ;;
  garbage) echo 'this is not JSON' ;;
  deleted) sleep 1.5; echo '{"late": true}' ;;
  *) echo '{"ok": true}' ;;
esac
`

// The bad-input catalogue: each kind of bad input, the test that feeds it to
// real processes or a real Postgres and broker, and what it must get.
//
//	malformed and truncated messages    TestBadInputCatalogue (dead letter: not a change-event envelope),
//	in a step topic                     TestPoisonEventsDoNotBlockPartitions (consumers)
//	an event for a job that no longer   TestBadInputCatalogue (job "gone": skipped, the group's lag reaches 0)
//	exists
//	a job deleted mid-step              TestBadInputCatalogue (job "deleted": run discarded)
//	a step name that is no valid topic  TestBadRowsGoToDeadLetterTopic (cdc: dead letter naming the step)
//	an oversized row                    TestBrokerLimitsAreLearnedAndRefusalsDeadLettered (cdc: dead letter)
//	job_id or current_step renamed      TestRenamedRoutingColumnIsSaidSo (cdc: dead letters naming the column,
//	under a running reader              routing again once it is back)
//	a job_id changed by an UPDATE       TestJobIDChangeIsDeleteThenCreate (cdc), TestRenamedJobRunsUnderItsNewID
//	                                    (consumers: runs once, under the new id)
//	an executor that hangs, crashes,    TestBadInputCatalogue (failed with "timed out", "segmentation fault",
//	prints non-JSON or gigabytes        "no JSON", "printed over"; dead letters), TestStepTimeoutKillsProcessGroup
//	an HTTP executor that never answers TestHTTPExecutorNeverAnswers
//	a config file with unknown keys or  TestBadUsage (exit 2, one sentence), TestLoadPipeline (schema)
//	a cycle
//	flags out of range                  TestBadUsage, TestConfigErrorsAreOneSentence (cdc)
//
// Every one of them also checks that the other jobs keep moving.

// TestBadInputCatalogue: executors that hang, crash, print garbage or
// gigabytes; a job deleted mid-step; an event for a job that no longer
// exists; malformed and truncated messages in the step topic. Each gets a
// clear error or a dead letter with the reason, and every other job keeps
// moving.
func TestBadInputCatalogue(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	script := filepath.Join(e.Dir, "bad.sh")
	if err := os.WriteFile(script, []byte(badStep), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	harness.StartReader(t, ctx, cdc.Config{DatabaseURL: e.DatabaseURL, Brokers: e.Brokers, Slot: e.Slot, TopicPrefix: e.Prefix})
	w, err := consumers.New(consumers.Config{DatabaseURL: e.DatabaseURL, Brokers: e.Brokers, Step: "vlm_analyze", TopicPrefix: e.Prefix,
		Concurrency: 3, Timeout: 3 * time.Second, MaxAttempts: 2, Lease: 5 * time.Second, Handler: consumers.Exec(script)})
	if err != nil {
		t.Fatal(err)
	}
	go w.Run(ctx)

	// "gone" is done at img_gen and deleted before any worker can claim it:
	// its trigger event names a job that no longer exists.
	e.Exec(t, `BEGIN; INSERT INTO jobs (job_id, current_step, status) VALUES ('gone', 'img_gen', 'done'); DELETE FROM jobs WHERE job_id = 'gone'; COMMIT`)
	jobs := []string{"hang", "crash", "huge", "garbage", "deleted", "n1", "n2", "n3", "n4", "n5"}
	for _, j := range jobs {
		e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ($1, 'img_gen', 'done')`, j)
	}
	// Malformed and truncated messages in the step's trigger topic.
	kw := &kafka.Writer{Addr: kafka.TCP(e.Brokers...), Topic: e.Topic("img_gen"), Balancer: &kafka.Murmur2Balancer{}, BatchTimeout: time.Millisecond, RequiredAcks: kafka.RequireAll}
	defer kw.Close()
	if err := kw.WriteMessages(ctx,
		kafka.Message{Key: []byte("junk"), Value: []byte("\x00\x01 not json")},
		kafka.Message{Key: []byte("cut"), Value: []byte(`{"before":null,"after":{"job_id":"cut","current_step":"img_ge`)},
	); err != nil {
		t.Fatal(err)
	}
	// Delete "deleted" while its step runs.
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		n := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE job_id = 'deleted' AND finished_at IS NULL`)
		return n == 1, "the step of 'deleted' has not started"
	})
	e.Exec(t, `DELETE FROM jobs WHERE job_id = 'deleted'`)

	harness.Eventually(t, 90*time.Second, func() (bool, string) {
		done := e.Count(t, `SELECT count(*) FROM jobs WHERE job_id LIKE 'n%' AND current_step = 'vlm_analyze' AND status = 'done'`)
		failed := e.Count(t, `SELECT count(*) FROM jobs WHERE status = 'failed'`)
		return done == 5 && failed == 4, fmt.Sprintf("%d of 5 good jobs done, %d of 4 bad jobs failed", done, failed)
	})
	for job, want := range map[string]string{
		"hang": "timed out", "crash": "segmentation fault", "huge": "printed over", "garbage": "no JSON on stdout",
	} {
		var errText string
		e.Pool(t).QueryRow(ctx, `SELECT coalesce(error, '') FROM jobs WHERE job_id = $1`, job).Scan(&errText)
		if !strings.Contains(errText, want) {
			t.Errorf("job %s failed with %q, want it to say %q", job, errText, want)
		}
	}
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		n := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE job_id = 'deleted' AND outcome = 'discarded'`)
		return n == 1, "the run of the deleted job was not discarded"
	})

	// Dead letters: the four failed jobs and the two unreadable messages, with reasons.
	reasons := map[string]string{}
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		for _, m := range e.ReadTopic(t, e.Topics().DLQ()) {
			var v struct {
				Reason string `json:"reason"`
				Error  string `json:"error"`
			}
			json.Unmarshal(m.Value, &v)
			reasons[schema.JobIDFromKey(m.Key)] = v.Reason + ": " + v.Error
		}
		for _, k := range []string{"hang", "crash", "huge", "garbage", "junk", "cut"} {
			if reasons[k] == "" {
				return false, fmt.Sprintf("no dead letter for %s yet: %v", k, reasons)
			}
		}
		return true, ""
	})
	for _, k := range []string{"junk", "cut"} {
		if !strings.Contains(reasons[k], "not a change-event envelope") {
			t.Errorf("dead letter of %s: %q", k, reasons[k])
		}
	}

	// The event of "gone" was read and passed over: no run, no dead letter,
	// and the step's group has consumed every event in its topic.
	if reasons["gone"] != "" || e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE job_id = 'gone'`) != 0 {
		t.Errorf("the job that no longer exists was run or dead-lettered: %q", reasons["gone"])
	}
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		lag := stepLag(t, e, "vlm_analyze")
		return lag == 0, fmt.Sprintf("vlm_analyze still has %d events to consume", lag)
	})
}

// TestHTTPExecutorNeverAnswers: a step service that accepts the connection
// and then says nothing. Each attempt ends at --timeout, the job fails with
// that reason and a dead letter, and the jobs the service does answer move on.
func TestHTTPExecutorNeverAnswers(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	var held sync.WaitGroup
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Jobstream-Job-Id") == "silent" {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			held.Add(1)
			go func() { defer held.Done(); <-release; conn.Close() }()
			return
		}
		io.WriteString(w, `{"ok": true}`)
	}))
	defer func() { close(release); held.Wait(); srv.Close() }()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	harness.StartReader(t, ctx, cdc.Config{DatabaseURL: e.DatabaseURL, Brokers: e.Brokers, Slot: e.Slot, TopicPrefix: e.Prefix})
	w, err := consumers.New(consumers.Config{DatabaseURL: e.DatabaseURL, Brokers: e.Brokers, Step: "vlm_analyze", TopicPrefix: e.Prefix,
		Concurrency: 2, Timeout: time.Second, MaxAttempts: 2, RetryBackoff: 100 * time.Millisecond, MaxRetryBackoff: 200 * time.Millisecond,
		Lease: 5 * time.Second, Handler: consumers.HTTP(srv.URL + "/step")})
	if err != nil {
		t.Fatal(err)
	}
	go w.Run(ctx)

	for _, j := range []string{"silent", "a1", "a2", "a3", "a4"} {
		e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ($1, 'img_gen', 'done')`, j)
	}
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		done := e.Count(t, `SELECT count(*) FROM jobs WHERE job_id LIKE 'a%' AND current_step = 'vlm_analyze' AND status = 'done'`)
		failed := e.Count(t, `SELECT count(*) FROM jobs WHERE job_id = 'silent' AND status = 'failed'`)
		return done == 4 && failed == 1, fmt.Sprintf("%d of 4 answered jobs done, silent job failed: %v", done, failed == 1)
	})
	var errText string
	e.Pool(t).QueryRow(ctx, `SELECT coalesce(error, '') FROM jobs WHERE job_id = 'silent'`).Scan(&errText)
	attempts := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE job_id = 'silent' AND step = 'vlm_analyze'`)
	if !strings.Contains(errText, "timed out after 1s") || attempts != 2 {
		t.Errorf("silent job: %d attempts, error %q; want 2 attempts that timed out after 1s", attempts, errText)
	}
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		for _, m := range e.ReadTopic(t, e.Topics().DLQ()) {
			if schema.JobIDFromKey(m.Key) == "silent" && strings.Contains(string(m.Value), "timed out") {
				return true, ""
			}
		}
		return false, "no dead letter for the silent job"
	})
}
