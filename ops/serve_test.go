package ops_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/ops/localpg"
)

// get returns the status and body of an HTTP GET.
func get(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestServeFromPipelineFile: `jobstream worker --step S --pipeline FILE`
// takes the step's settings from the file: vlm_analyze runs the example
// model server in serve mode on GPUs 0 and 1 with batches of 4 (a flag, here
// --max-attempts, still overrides the file); yolo_detect's server never
// says ready, so its worker is unready on /readyz with the reason, its
// crash loop is a metric, and its group has no member to claim with.
func TestServeFromPipelineFile(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	server, _ := filepath.Abs("steps/model_server.py")
	never := filepath.Join(e.Dir, "never-ready.sh")
	os.WriteFile(never, []byte("#!/bin/sh\nexec sleep 600\n"), 0o755)
	file := filepath.Join(e.Dir, "pipeline.json")
	os.WriteFile(file, []byte(fmt.Sprintf(`{
  "steps": ["img_gen", "vlm_analyze", "yolo_detect", "planner", "overlay"],
  "workers": {
    "vlm_analyze": {"serve": ["python3", %q], "gpus": ["0", "1"], "batch": 4, "batch_wait": "10ms", "max_attempts": 1},
    "yolo_detect": {"serve": [%q], "start_timeout": "300ms"}
  }
}`, server, never)), 0o644)
	harness.StartReader(t, context.Background(), cdc.Config{DatabaseURL: e.DatabaseURL, Brokers: e.Brokers, Slot: e.Slot, TopicPrefix: e.Prefix})

	port, _ := localpg.FreePort()
	vlm := fmt.Sprintf("http://127.0.0.1:%d", port)
	e.StartProcess(t, "worker-vlm", []string{"MODEL_LOAD_SECONDS=0.5"},
		"worker", "--step", "vlm_analyze", "--pipeline", file, "--max-attempts", "2", "--http-addr", vlm[len("http://"):])
	port, _ = localpg.FreePort()
	yolo := fmt.Sprintf("http://127.0.0.1:%d", port)
	e.StartProcess(t, "worker-yolo", nil, "worker", "--step", "yolo_detect", "--pipeline", file, "--http-addr", yolo[len("http://"):])

	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		code, body := get(vlm + "/readyz")
		return code == http.StatusOK, fmt.Sprintf("vlm_analyze /readyz: %d %s", code, body)
	})
	const n = 40
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) SELECT 'p' || i, 'img_gen', 'done' FROM generate_series(1, $1) i`, n)
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		done := e.Count(t, `SELECT count(*) FROM jobs WHERE current_step = 'vlm_analyze' AND status = 'done'
			AND results->'vlm_analyze'->>'gpu' = results->'vlm_analyze'->>'job_gpu' AND results->'vlm_analyze'->>'gpu' IN ('0', '1')`)
		return done == n, fmt.Sprintf("%d of %d jobs done by the serve process of their own GPU", done, n)
	})
	if pids := e.Count(t, `SELECT count(DISTINCT results->'vlm_analyze'->>'pid') FROM jobs`); pids != 2 {
		t.Errorf("the jobs ran in %d processes, want 2 (one per GPU, each started once)", pids)
	}
	if big := e.Count(t, `SELECT count(*) FROM jobs WHERE (results->'vlm_analyze'->>'batch_size')::int > 1`); big == 0 {
		t.Error("no job ran in a batch of more than one: the file's batch setting was not applied")
	}
	// --max-attempts 2 on the command line beats the file's 1.
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status, payload) VALUES ('flaky', 'img_gen', 'done', '{"fail": "retry"}')`)
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		n := e.Count(t, `SELECT count(*) FROM jobs WHERE job_id = 'flaky' AND status = 'failed'`)
		return n == 1, "flaky has not failed"
	})
	if runs := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE job_id = 'flaky'`); runs != 2 {
		t.Errorf("flaky had %d attempts, want 2 (--max-attempts 2 over the file's 1)", runs)
	}

	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		code, body := get(yolo + "/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "keep failing to start"),
			fmt.Sprintf("yolo_detect /readyz: %d %s", code, body)
	})
	_, metrics := get(yolo + "/metrics")
	if !strings.Contains(metrics, `jobstream_serve_crash_looping{step="yolo_detect"} 1`) {
		t.Errorf("metrics lack the crash loop:\n%s", grepLines(metrics, "serve"))
	}
	if runs := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE step = 'yolo_detect'`); runs != 0 {
		t.Errorf("%d yolo_detect runs claimed by a worker whose process never said ready", runs)
	}
	var rep struct {
		Steps []struct {
			Step    string `json:"step"`
			Members []any  `json:"members"`
			Lag     int64  `json:"lag"`
		} `json:"steps"`
	}
	statusJSON(t, e, &rep)
	for _, s := range rep.Steps {
		if s.Step == "yolo_detect" && (len(s.Members) != 0 || s.Lag == 0) {
			t.Errorf("status shows yolo_detect with %d members and lag %d; want no member and the waiting jobs as lag", len(s.Members), s.Lag)
		}
	}
	_, text, _ := runMain(t, "status", "--database-url", e.DatabaseURL, "--brokers", e.Brokers[0], "--topic-prefix", e.Prefix, "--slot", e.Slot)
	if !strings.Contains(text, "yolo_detect: ") || !strings.Contains(text, "no worker is in the group") || !strings.Contains(text, "crash-looping") {
		t.Errorf("status does not say that yolo_detect has no ready worker:\n%s", text)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestDevRunsThePipelineFile: `jobstream dev --pipeline FILE` runs each step
// whose worker settings name an executor with it — here the repository's
// ops/pipeline.json, its paths made absolute: the model server in serve mode
// with batches for vlm_analyze, echo.sh for the rest.
func TestDevRunsThePipelineFile(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	root, _ := filepath.Abs("..")
	b, err := os.ReadFile("pipeline.json")
	if err != nil {
		t.Fatal(err)
	}
	body := strings.ReplaceAll(string(b), `"ops/steps/`, `"`+root+`/ops/steps/`)
	file := filepath.Join(e.Dir, "pipeline.json")
	os.WriteFile(file, []byte(body), 0o644)
	dir := filepath.Join(e.Dir, "dev")
	code, out, stderr := runMain(t, "dev", "--jobs", "30", "--dir", dir, "--pipeline", file)
	if code != 0 || !strings.Contains(out, "all 30 jobs reached (overlay, done)") {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out, stderr)
	}
	logs, _ := os.ReadFile(filepath.Join(dir, "jobstream.log"))
	if !strings.Contains(string(logs), "serve process ready") {
		t.Error("dev's log does not show vlm_analyze's serve process starting: the file's serve setting was not used")
	}
	if strings.Contains(out, "overlay PNGs") {
		t.Error("dev points at overlay PNGs while the file's overlay step (echo.sh) draws none")
	}
}
