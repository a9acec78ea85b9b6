package schema

import (
	"strings"
	"testing"
	"time"
)

// TestPipelineWorkers: the pipeline file's per-step settings are read with
// their types, and every unknown key or bad value is one sentence naming it.
func TestPipelineWorkers(t *testing.T) {
	t.Parallel()
	p, err := ParsePipeline([]byte(`{"steps": ["gen", "caption", "ship"], "workers": {
		"caption": {"serve": ["python3", "model.py"], "gpus": ["0", "1"], "batch": 8, "batch_wait": "20ms",
			"timeout": "2m", "start_timeout": "10m", "max_attempts": 5, "retry_backoff": "1s", "lease": "30s", "grace": 10},
		"ship": {"http": "http://ship/run", "concurrency": 4}}}`))
	if err != nil {
		t.Fatal(err)
	}
	c := p.Workers["caption"]
	if c.Serve[1] != "model.py" || len(c.GPUs) != 2 || c.Batch != 8 || time.Duration(c.BatchWait) != 20*time.Millisecond ||
		time.Duration(c.Timeout) != 2*time.Minute || time.Duration(c.StartTimeout) != 10*time.Minute || c.MaxAttempts != 5 ||
		time.Duration(c.RetryBackoff) != time.Second || time.Duration(c.Lease) != 30*time.Second || time.Duration(c.Grace) != 10*time.Second {
		t.Errorf("caption settings %+v", c)
	}
	if s := p.Workers["ship"]; s.HTTP != "http://ship/run" || s.Concurrency != 4 {
		t.Errorf("ship settings %+v", s)
	}
	for _, c := range []struct{ name, workers, want string }{
		{"typo", `{"caption": {"bacth": 8}}`, `workers.caption has no key "bacth"; did you mean "batch"?`},
		{"unknown", `{"caption": {"colour": "red"}}`, `workers.caption has no key "colour"; its keys are command, serve`},
		{"first step", `{"gen": {"command": ["x"]}}`, `workers.gen: step "gen" is the first step`},
		{"unknown step", `{"paint": {"command": ["x"]}}`, `workers.paint: unknown step "paint"`},
		{"bad duration", `{"caption": {"timeout": "2 minutes"}}`, `workers.caption.timeout: "2 minutes" is not a duration`},
		{"wrong type", `{"caption": {"batch": "8"}}`, `workers.caption.batch: a JSON string where a whole number belongs`},
		{"command string", `{"caption": {"command": "./step.sh"}}`, `workers.caption.command: a JSON string where a list of strings belongs`},
		{"two executors", `{"caption": {"command": ["a"], "http": "http://x"}}`, `workers.caption: give one of command, serve and http`},
		{"batch of commands", `{"caption": {"command": ["a"], "batch": 4}}`, `batch needs serve or http`},
		{"batch range", `{"caption": {"batch": 5000}}`, `workers.caption.batch: 5000 is out of range 1..1024`},
		{"short lease", `{"caption": {"lease": "100ms"}}`, `workers.caption.lease: 100ms is too short`},
		{"negative", `{"caption": {"timeout": "-1s"}}`, `workers.caption.timeout: -1s is negative`},
		{"not an object", `{"caption": 3}`, `workers.caption must be an object of settings`},
	} {
		_, err := ParsePipeline([]byte(`{"steps": ["gen", "caption", "ship"], "workers": ` + c.workers + `}`))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want it to say %q", c.name, err, c.want)
		}
	}
}
