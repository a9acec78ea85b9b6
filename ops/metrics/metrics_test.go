package metrics_test

import (
	"testing"
	"time"

	"github.com/jobstream/jobstream/ops/metrics"
)

// TestMetricsHooks: the hooks record under the metric names and labels
// dashboards use.
func TestMetricsHooks(t *testing.T) {
	t.Parallel()
	reg := metrics.NewRegistry()
	r, w := metrics.NewReaderHooks(reg), metrics.NewWorkerHooks(reg)
	r.OnProduced(10, 3*time.Millisecond)
	r.OnCommitAcked(5 * time.Millisecond)
	w.OnClaimed("planner", time.Millisecond)
	w.OnAttempted("planner", "done", time.Second)
	w.OnAttempted("planner", "retried", time.Second)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := map[string]int{}
	for _, f := range families {
		series[f.GetName()] = len(f.GetMetric())
	}
	for name, want := range map[string]int{
		"jobstream_produce_seconds": 1, "jobstream_produce_batch_events": 1, "jobstream_commit_to_ack_seconds": 1,
		"jobstream_commit_to_claim_seconds": 1, "jobstream_step_duration_seconds": 2, "jobstream_attempts_total": 2,
	} {
		if series[name] != want {
			t.Errorf("%s: %d series, want %d", name, series[name], want)
		}
	}
}
