package consumers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/ops/harness"
)

// TestStepsShareTheCallersPool: one worker serves two steps on the caller's
// pool. Each step is a member of its own group, the steps share the slots
// (Concurrency bounds them together), Stats count both, and the pool is
// still open once the worker stopped.
func TestStepsShareTheCallersPool(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	pool := e.Pool(t)
	var running concurrency
	handler := func(ctx context.Context, job consumers.Job) (json.RawMessage, error) {
		running.enter()
		defer running.leave()
		time.Sleep(20 * time.Millisecond)
		return json.Marshal(job.Step + " of " + job.JobID)
	}
	t.Cleanup(func() { // after the worker stopped
		if err := pool.Ping(context.Background()); err != nil {
			t.Errorf("the caller's pool after the worker stopped: %v", err)
		}
	})
	w := startWorker(t, e, consumers.Config{Pool: pool, Concurrency: 2,
		Steps: map[string]consumers.Handler{"vlm_analyze": handler, "yolo_detect": handler}})
	<-w.Ready()
	for _, s := range []string{"vlm_analyze", "yolo_detect"} {
		if n := groupMembers(t, e, s); n != 1 {
			t.Errorf("group of %s has %d members, want 1", s, n)
		}
	}

	const n = 20
	runTwoSteps(t, e, w, n)
	// A completion is counted just after its transaction commits.
	harness.Eventually(t, 10*time.Second, func() (bool, string) {
		got := w.Stats().Completions.Load()
		return got == 2*n, fmt.Sprintf("Stats().Completions = %d, want %d (both steps)", got, 2*n)
	})
	if p := running.peak(); p > 2 {
		t.Errorf("%d steps ran at once, want at most Concurrency 2", p)
	}

}

// TestStepsConfig: Steps or Step and Handler, not both; every step needs a
// handler and a step before it; Pool stands in for DatabaseURL.
func TestStepsConfig(t *testing.T) {
	t.Parallel()
	pool, err := pgxpool.New(context.Background(), "postgres://nobody@127.0.0.1:1/none") // connects nothing yet
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ok := func(context.Context, consumers.Job) (json.RawMessage, error) { return nil, nil }
	base := consumers.Config{Pool: pool, Brokers: []string{"127.0.0.1:1"}}
	for _, tc := range []struct {
		name  string
		edit  func(*consumers.Config)
		error string // "" when New accepts it
	}{
		{"two steps", func(c *consumers.Config) {
			c.Steps = map[string]consumers.Handler{"vlm_analyze": ok, "planner": ok}
		}, ""},
		{"one step", func(c *consumers.Config) { c.Step, c.Handler = "planner", ok }, ""},
		{"both forms", func(c *consumers.Config) {
			c.Steps, c.Step, c.Handler = map[string]consumers.Handler{"planner": ok}, "overlay", ok
		}, "Steps and Step (or Handler) are both set"},
		{"nil handler", func(c *consumers.Config) {
			c.Steps = map[string]consumers.Handler{"planner": ok, "overlay": nil}
		}, `Steps["overlay"] is nil`},
		{"first step", func(c *consumers.Config) {
			c.Steps = map[string]consumers.Handler{"img_gen": ok}
		}, "img_gen"},
		{"no pool, no URL", func(c *consumers.Config) { c.Pool, c.Step, c.Handler = nil, "planner", ok }, "DatabaseURL is empty"},
	} {
		cfg := base
		tc.edit(&cfg)
		_, err := consumers.New(cfg)
		switch {
		case tc.error == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.error != "" && (err == nil || !strings.Contains(err.Error(), tc.error)):
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.error)
		}
	}
}

// runTwoSteps inserts n jobs j1..jn at (img_gen, done) and waits until w,
// serving vlm_analyze and yolo_detect with handlers that answer
// "<step> of <job_id>", has taken each through both steps.
func runTwoSteps(t *testing.T, e *harness.Env, w *consumers.Worker, n int) {
	t.Helper()
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) SELECT 'j' || i, 'img_gen', 'done' FROM generate_series(1, $1) i`, n)
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		done := e.Count(t, `SELECT count(*) FROM jobs WHERE current_step = 'yolo_detect' AND status = 'done'
			AND results->>'vlm_analyze' = 'vlm_analyze of ' || job_id AND results->>'yolo_detect' = 'yolo_detect of ' || job_id`)
		return done == n, fmt.Sprintf("%d of %d jobs through both steps; %s", done, n, stats(w))
	})
}
