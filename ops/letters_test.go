package ops_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/ops/broker"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
)

// TestOwedDeadLetterSurvivesWorkerCrash: a worker fails a job in Postgres,
// cannot write the dead letter because the broker refuses produces, and is
// killed with SIGKILL. The letter is not lost: the run still owes it, and the
// next worker of the step writes it, once.
func TestOwedDeadLetterSurvivesWorkerCrash(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	// A broker of its own: its faults must not slow the other tests.
	b := harness.StartBroker(t, broker.Config{})
	brokers := []string{b.Addr()}
	e.Brokers = brokers // for ReadTopic
	script := filepath.Join(e.Dir, "step.sh")
	if err := os.WriteFile(script, []byte(`#!/bin/sh
cat >/dev/null
case "$JOBSTREAM_JOB_ID" in
  doomed) sleep 1; echo 'refused: the model cannot read this image' >&2; exit 65 ;;
  *) echo '{}' ;;
esac
`), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	harness.StartReader(t, ctx, cdc.Config{DatabaseURL: e.DatabaseURL, Brokers: brokers, Slot: e.Slot, TopicPrefix: e.Prefix})
	worker := func(name string) *harness.Process {
		return e.StartProcess(t, name, nil, "worker", "--step", "vlm_analyze", "--lease", "2s", "--", script)
	}
	first := worker("worker-1")
	jobAt := func(job, step, status string) func() (bool, string) {
		return func() (bool, string) {
			n := e.Count(t, `SELECT count(*) FROM jobs WHERE job_id = $1 AND current_step = $2 AND status = $3`, job, step, status)
			return n == 1, fmt.Sprintf("%s is not at (%s, %s)", job, step, status)
		}
	}
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('warm', 'img_gen', 'done')`)
	harness.Eventually(t, 60*time.Second, jobAt("warm", "vlm_analyze", "done"))

	// The step of "doomed" starts; the broker then refuses every produce, so
	// the failure reaches Postgres but its dead letter cannot be written.
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('doomed', 'img_gen', 'done')`)
	harness.Eventually(t, 30*time.Second, jobAt("doomed", "vlm_analyze", "running"))
	stopFault := b.FailProduceAndFetch(time.Minute)
	defer stopFault()
	harness.Eventually(t, 30*time.Second, jobAt("doomed", "vlm_analyze", "failed"))
	if n := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE job_id = 'doomed' AND dead_letter IS NOT NULL AND dead_lettered_at IS NULL`); n != 1 {
		t.Fatalf("the failed run owes %d dead letters, want 1", n)
	}
	// The worker is now past the failure, in the dead letter's produce
	// retries: killed there, it leaves the letter owed.
	first.Signal(t, syscall.SIGKILL)
	first.Wait(t, 30*time.Second)
	stopFault()
	if owed := lettersOwed(t, e); owed != 1 {
		t.Errorf("status says %d dead letters owed, want 1", owed)
	}

	// The next worker of the step owes nothing itself, yet writes the letter.
	worker("worker-2")
	var letters []string
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		letters = letters[:0]
		for _, m := range e.ReadTopic(t, e.Topics().DLQ()) {
			if schema.JobIDFromKey(m.Key) == "doomed" {
				letters = append(letters, string(m.Value))
			}
		}
		return len(letters) > 0, "no dead letter for the failed job"
	})
	var l struct {
		Reason, Error, Step string
		Attempts            int
	}
	if err := json.Unmarshal([]byte(letters[0]), &l); err != nil {
		t.Fatal(err)
	}
	if l.Reason != "step failed" || l.Step != "vlm_analyze" || l.Attempts != 1 || !strings.Contains(l.Error, "cannot read this image") {
		t.Errorf("dead letter %s", letters[0])
	}
	harness.Eventually(t, 10*time.Second, func() (bool, string) {
		n := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE job_id = 'doomed' AND dead_lettered_at IS NOT NULL`)
		return n == 1, "the written dead letter is not recorded"
	})
	if owed := lettersOwed(t, e); owed != 0 {
		t.Errorf("status says %d dead letters owed after the letter was written, want 0", owed)
	}
	// Recorded, it is owed no more (the sweeper only writes letters still
	// owed), and it was written once.
	n := 0
	for _, m := range e.ReadTopic(t, e.Topics().DLQ()) {
		if schema.JobIDFromKey(m.Key) == "doomed" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d dead letters for the failed job, want 1", n)
	}
}

// lettersOwed returns the dead letters owed, as `jobstream status --json` reports them.
func lettersOwed(t *testing.T, e *harness.Env) int64 {
	t.Helper()
	var rep struct {
		Owed *int64 `json:"dead_letters_owed"`
	}
	if statusJSON(t, e, &rep); rep.Owed == nil {
		t.Fatal("status --json has no dead_letters_owed")
	}
	return *rep.Owed
}
