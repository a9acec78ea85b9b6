package ops_test

import (
	"encoding/json"
	"testing"

	"github.com/jobstream/jobstream/ops/harness"
)

// statusJSON runs `jobstream status --json` against e and decodes its
// output into v.
func statusJSON(t *testing.T, e *harness.Env, v any) {
	t.Helper()
	code, out, stderr := runMain(t, "status", "--json", "--database-url", e.DatabaseURL, "--brokers", e.Brokers[0],
		"--topic-prefix", e.Prefix, "--slot", e.Slot)
	if code != 0 {
		t.Fatalf("status exit %d: %s", code, stderr)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("status --json: %v: %s", err, out)
	}
}

// stepLag returns how many events in step's trigger topic its group has not
// yet committed, as `jobstream status --json` reports it.
func stepLag(t *testing.T, e *harness.Env, step string) int64 {
	t.Helper()
	var rep struct {
		Steps []struct {
			Step string `json:"step"`
			Lag  int64  `json:"lag"`
		} `json:"steps"`
	}
	statusJSON(t, e, &rep)
	for _, s := range rep.Steps {
		if s.Step == step {
			return s.Lag
		}
	}
	t.Fatalf("status --json has no step %s: %+v", step, rep)
	return 0
}
