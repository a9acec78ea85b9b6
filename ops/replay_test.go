package ops_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
)

// pipeline runs a reader and one in-process worker per step for e, counting
// handler calls per step and job. stop ends them all: it waits for the
// workers, and the test's end for the reader (see harness.StartReader).
type pipeline struct {
	mu    sync.Mutex
	calls map[string]int // "step/job" → calls
	stop  func()
}

func (p *pipeline) count(step, job string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls[step+"/"+job]
}

func startPipeline(t *testing.T, e *harness.Env) *pipeline {
	t.Helper()
	pl := &pipeline{calls: map[string]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	harness.StartReader(t, ctx, cdc.Config{DatabaseURL: e.DatabaseURL, Brokers: e.Brokers, Slot: e.Slot, TopicPrefix: e.Prefix})
	for _, step := range schema.DefaultSteps[1:] {
		w, err := consumers.New(consumers.Config{DatabaseURL: e.DatabaseURL, Brokers: e.Brokers, Step: step, TopicPrefix: e.Prefix,
			WorkerID: "test-" + step,
			Handler: func(_ context.Context, j consumers.Job) (json.RawMessage, error) {
				pl.mu.Lock()
				pl.calls[step+"/"+j.JobID]++
				pl.mu.Unlock()
				return json.RawMessage(fmt.Sprintf(`{"attempt": %d}`, j.Attempt)), nil
			}})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); w.Run(ctx) }()
	}
	var once sync.Once
	pl.stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(pl.stop)
	return pl
}

func waitAllDone(t *testing.T, e *harness.Env, n int) {
	t.Helper()
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		done := e.Count(t, `SELECT count(*) FROM jobs WHERE current_step = 'overlay' AND status = 'done'`)
		return done == n, fmt.Sprintf("%d of %d jobs at (overlay, done)", done, n)
	})
}

type auditOut struct {
	History []struct {
		Kind    string          `json:"kind"`
		Step    string          `json:"step"`
		Status  string          `json:"status"`
		Op      string          `json:"op"`
		LSN     int64           `json:"lsn"`
		Attempt int             `json:"attempt"`
		Worker  string          `json:"worker"`
		Detail  json.RawMessage `json:"detail"`
	} `json:"history"`
}

func audit(t *testing.T, e *harness.Env, job string) auditOut {
	t.Helper()
	code, out, stderr := runMain(t, "audit", job, "--json", "--database-url", e.DatabaseURL, "--brokers", e.Brokers[0], "--topic-prefix", e.Prefix)
	if code != 0 {
		t.Fatalf("audit: exit %d: %s", code, stderr)
	}
	var a auditOut
	if err := json.Unmarshal([]byte(out), &a); err != nil {
		t.Fatalf("audit --json: %v: %s", err, out)
	}
	return a
}

func TestReplayAndAudit(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	pl := startPipeline(t, e)
	for i := 1; i <= 5; i++ {
		e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ($1, 'img_gen', 'done')`, fmt.Sprintf("j%d", i))
	}
	waitAllDone(t, e, 5)
	flags := []string{"--database-url", e.DatabaseURL, "--brokers", e.Brokers[0], "--topic-prefix", e.Prefix}

	// The audit: every transition of j1, in LSN order, with attempt and worker.
	// The last events reach the topics just after Postgres has them.
	var a auditOut
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		a = audit(t, e, "j1")
		return len(a.History) >= 9, fmt.Sprintf("%d entries", len(a.History))
	})
	var seq []string
	var last int64
	for _, h := range a.History {
		if h.Kind != "change" {
			continue
		}
		if h.LSN <= last {
			t.Fatalf("audit not in LSN order: %+v", a.History)
		}
		last = h.LSN
		seq = append(seq, h.Step+":"+h.Status)
		if h.Step != "img_gen" && (h.Attempt != 1 || h.Worker == "") {
			t.Errorf("audit entry without attempt/worker: %+v", h)
		}
	}
	want := "img_gen:done vlm_analyze:running vlm_analyze:done yolo_detect:running yolo_detect:done planner:running planner:done overlay:running overlay:done"
	if strings.Join(seq, " ") != want {
		t.Fatalf("audit of j1:\n got %s\nwant %s", strings.Join(seq, " "), want)
	}

	// A dry run changes nothing.
	code, out, stderr := runMain(t, append([]string{"replay", "--step", "yolo_detect", "--job", "j1", "--dry-run"}, flags...)...)
	if code != 0 || !strings.Contains(out, "would replay 1 job") {
		t.Fatalf("dry run: exit %d: %s %s", code, out, stderr)
	}
	if n := e.Count(t, `SELECT count(*) FROM jobs WHERE current_step = 'overlay' AND status = 'done'`); n != 5 {
		t.Fatalf("dry run changed jobs: %d at overlay", n)
	}

	// A running job is skipped and listed unless --force.
	e.Exec(t, `UPDATE jobs SET current_step = 'planner', status = 'running' WHERE job_id = 'j2'`)
	code, out, _ = runMain(t, append([]string{"replay", "--step", "yolo_detect", "--job", "j1", "--job", "j2"}, flags...)...)
	if code != 0 || !strings.Contains(out, "replayed 1 job") || !strings.Contains(out, "j2: running planner") {
		t.Fatalf("replay: exit %d: %s", code, out)
	}
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		n := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE job_id = 'j1' AND step = 'overlay' AND outcome = 'done'`)
		return n == 2, fmt.Sprintf("j1 completed overlay %d times, want 2", n)
	})
	if pl.count("vlm_analyze", "j1") != 1 || pl.count("yolo_detect", "j1") != 2 || pl.count("planner", "j1") != 2 {
		t.Fatalf("handler calls for j1: vlm %d yolo %d planner %d", pl.count("vlm_analyze", "j1"), pl.count("yolo_detect", "j1"), pl.count("planner", "j1"))
	}
	if pl.count("yolo_detect", "j2") != 1 {
		t.Fatal("the running job j2 was replayed")
	}
	// The replay shows as a rewind, in LSN order where it happened (after
	// the first overlay:done, before yolo_detect runs again), carrying its
	// mark and no run of vlm_analyze: the step did not run again.
	var rewinds int
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		a = audit(t, e, "j1")
		return len(a.History) >= 16, fmt.Sprintf("%d entries after the replay", len(a.History))
	})
	seq = nil
	last = 0
	for _, h := range a.History {
		if h.Kind == "replay" {
			t.Errorf("replay mark not shown as its rewind: %+v", h)
		}
		if h.Kind != "change" && h.Kind != "rewind" {
			continue
		}
		if h.LSN <= last {
			t.Fatalf("audit not in LSN order after the replay: %+v", a.History)
		}
		last = h.LSN
		seq = append(seq, h.Kind+":"+h.Step+":"+h.Status)
		if h.Kind != "rewind" {
			continue
		}
		rewinds++
		var mark struct {
			Step      string   `json:"step"`
			By        string   `json:"by"`
			FromState []string `json:"from_state"`
		}
		json.Unmarshal(h.Detail, &mark)
		if mark.Step != "yolo_detect" || mark.By == "" || strings.Join(mark.FromState, ",") != "overlay,done" || h.Attempt != 0 || h.Worker != "" {
			t.Errorf("rewind entry: %+v (mark %+v)", h, mark)
		}
	}
	want = "change:img_gen:done change:vlm_analyze:running change:vlm_analyze:done change:yolo_detect:running change:yolo_detect:done " +
		"change:planner:running change:planner:done change:overlay:running change:overlay:done rewind:vlm_analyze:done " +
		"change:yolo_detect:running change:yolo_detect:done change:planner:running change:planner:done change:overlay:running change:overlay:done"
	if rewinds != 1 || strings.Join(seq, " ") != want {
		t.Fatalf("audit of j1 after the replay:\n got %s\nwant %s", strings.Join(seq, " "), want)
	}
	code, out, _ = runMain(t, append([]string{"audit", "j1"}, flags...)...)
	if code != 0 || !strings.Contains(out, "rewound by replay of yolo_detect from (overlay, done) by ") {
		t.Fatalf("audit table after the replay: exit %d:\n%s", code, out)
	}

	// A deleted job: its delete goes to every step topic (REPLICA IDENTITY
	// DEFAULT), each copy followed by a tombstone; the audit shows it once,
	// last, then the tombstone.
	e.Exec(t, `DELETE FROM jobs WHERE job_id = 'j5'`)
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		a = audit(t, e, "j5")
		var tail []string
		for _, h := range a.History {
			tail = append(tail, h.Kind+":"+h.Op)
		}
		if n := len(tail); n >= 2 && strings.Join(tail[n-2:], " ") == "change:d tombstone:" && strings.Count(strings.Join(tail, " "), "tombstone") == 1 {
			return true, ""
		}
		return false, fmt.Sprintf("audit of the deleted j5: %v", tail)
	})

	// A range that holds nothing.
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	code, out, _ = runMain(t, append([]string{"replay", "--step", "yolo_detect", "--from", future}, flags...)...)
	if code != 0 || !strings.Contains(out, "nothing to replay") {
		t.Fatalf("empty range: exit %d: %s", code, out)
	}
	code, _, stderr = runMain(t, append([]string{"replay", "--step", "yolo_detect", "--from", "yesterday"}, flags...)...)
	if code != 2 || !strings.Contains(stderr, "RFC 3339") {
		t.Fatalf("bad --from: exit %d: %s", code, stderr)
	}

	// Offsets reset: refused while the group has members, done once it is empty.
	code, _, stderr = runMain(t, append([]string{"replay", "--step", "planner", "--reset-offsets", "--to", "earliest"}, flags...)...)
	if code != 1 || !strings.Contains(stderr, "live member") {
		t.Fatalf("reset with members: exit %d: %s", code, stderr)
	}
	pl.stop()
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		code, out, stderr = runMain(t, append([]string{"replay", "--step", "planner", "--reset-offsets", "--to", "earliest"}, flags...)...)
		return code == 0, stderr
	})
	if !strings.Contains(out, "reset group "+e.Prefix+".planner.workers") {
		t.Fatalf("reset output: %s", out)
	}
}

// TestReplayOfTheSecondStep (issue 11, item 3): jobs inserted the way the
// README shows, with no img_gen result, can be replayed from vlm_analyze,
// one by one and over a time range, and more than once: each replay is a
// new attempt chain (attempt 1 again), never "attempts spent". Before,
// replay required results ? 'img_gen', which no worker writes.
func TestReplayOfTheSecondStep(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	pl := startPipeline(t, e)
	from := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	for i := 1; i <= 3; i++ {
		e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ($1, 'img_gen', 'done')`, fmt.Sprintf("r%d", i))
	}
	waitAllDone(t, e, 3)
	flags := []string{"--database-url", e.DatabaseURL, "--brokers", e.Brokers[0], "--topic-prefix", e.Prefix}
	overlays := func(id string, want int) {
		t.Helper()
		harness.Eventually(t, 60*time.Second, func() (bool, string) {
			n := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE job_id = $1 AND step = 'overlay' AND outcome = 'done'`, id)
			return n == want && e.Count(t, `SELECT count(*) FROM jobs WHERE job_id = $1 AND current_step = 'overlay' AND status = 'done'`, id) == 1,
				fmt.Sprintf("%s completed overlay %d times, want %d", id, n, want)
		})
	}

	// One job, twice.
	for round := 2; round <= 3; round++ {
		code, out, stderr := runMain(t, append([]string{"replay", "--step", "vlm_analyze", "--job", "r1"}, flags...)...)
		if code != 0 || !strings.Contains(out, "replayed 1 job") {
			t.Fatalf("replay r1: exit %d: %s %s", code, out, stderr)
		}
		overlays("r1", round)
	}
	if got := e.Dump(t, `SELECT chain || '.' || attempt || ':' || outcome FROM jobstream_runs WHERE job_id = 'r1' AND step = 'vlm_analyze' ORDER BY run_id`); got != "1.1:done\n2.1:done\n3.1:done\n" {
		t.Errorf("vlm_analyze runs of r1:\n%s\nwant chains 1, 2 and 3, each done on attempt 1", got)
	}

	// A time range: every job that passed img_gen in it.
	to := time.Now().Add(time.Minute).UTC().Format(time.RFC3339)
	code, out, stderr := runMain(t, append([]string{"replay", "--step", "vlm_analyze", "--from", from, "--to", to}, flags...)...)
	if code != 0 || !strings.Contains(out, "replayed 3 job") {
		t.Fatalf("replay of a range: exit %d: %s %s", code, out, stderr)
	}
	overlays("r1", 4)
	overlays("r2", 2)
	overlays("r3", 2)
	if pl.count("vlm_analyze", "r2") != 2 {
		t.Errorf("vlm_analyze ran %d times for r2, want 2", pl.count("vlm_analyze", "r2"))
	}
}
