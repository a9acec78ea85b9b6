package ops_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/ops/harness"
)

// startReader runs a reader with cfg until ctx ends and returns it once its
// slot exists; a reader that fails at start fails the test with its error.
func startReader(t *testing.T, ctx context.Context, cfg cdc.Config) *cdc.Reader {
	t.Helper()
	r, err := cdc.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rerr := make(chan error, 1)
	go func() { rerr <- r.Run(ctx) }()
	select {
	case <-r.Ready():
	case err := <-rerr:
		t.Fatalf("reader stopped at start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("reader not ready within 30s")
	}
	return r
}

// stepLag returns how many events in step's trigger topic its group has not
// yet committed, as `jobstream status --json` reports it.
func stepLag(t *testing.T, e *harness.Env, step string) int64 {
	t.Helper()
	code, out, stderr := runMain(t, "status", "--json", "--database-url", e.DatabaseURL, "--brokers", e.Brokers[0],
		"--topic-prefix", e.Prefix, "--slot", e.Slot)
	if code != 0 {
		t.Fatalf("status exit %d: %s", code, stderr)
	}
	var rep struct {
		Steps []struct {
			Step string `json:"step"`
			Lag  int64  `json:"lag"`
		} `json:"steps"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("status --json: %v: %s", err, out)
	}
	for _, s := range rep.Steps {
		if s.Step == step {
			return s.Lag
		}
	}
	t.Fatalf("status --json has no step %s: %s", step, out)
	return 0
}
