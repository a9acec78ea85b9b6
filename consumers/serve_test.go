package consumers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/ops/harness"
)

// modelServer is the repository's serve-mode example, run by python3.
var modelServer = filepath.Join("..", "ops", "steps", "model_server.py")

// serveArgv returns the argv of the example model server, with env set
// (env(1), as tests run in parallel) and a marker argument, so that a test
// finds its processes (pgrep -f marker).
func serveArgv(t *testing.T, marker string, env ...string) []string {
	t.Helper()
	if _, err := exec.LookPath("python3"); err != nil {
		t.Fatal("python3 is needed for the serve-mode tests (.ci/run installs it): ", err)
	}
	return append(append([]string{"env"}, env...), "python3", modelServer, "--marker="+marker)
}

// servePids returns the pids of the processes whose command line holds marker.
func servePids(marker string) []int {
	out, _ := exec.Command("pgrep", "-f", "--", "--marker="+marker).Output()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// serveResult is what the example model server answers for a job.
type serveResult struct {
	GPU       string `json:"gpu"`
	JobGPU    string `json:"job_gpu"`
	PID       int    `json:"pid"`
	BatchSize int    `json:"batch_size"`
}

func serveResults(t *testing.T, e *harness.Env) map[string]serveResult {
	t.Helper()
	rows, err := e.Pool(t).Query(context.Background(), `SELECT job_id, results->$1 FROM jobs WHERE current_step = $1 AND status = 'done'`, step)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]serveResult{}
	for rows.Next() {
		var id string
		var raw []byte
		if err := rows.Scan(&id, &raw); err != nil {
			t.Fatal(err)
		}
		var r serveResult
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatalf("result of %s: %v (%s)", id, err, raw)
		}
		out[id] = r
	}
	return out
}

// logSink returns a logger that the test can read, also shown when it fails.
func logSink(t *testing.T, name string) (*slog.Logger, *harness.Buffer) {
	sink := &harness.Buffer{}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("JOBSTREAM_TEST_LOGS") != "" {
			b := sink.String()
			t.Logf("--- %s log (tail) ---\n%s", name, b[max(0, len(b)-8000):])
		}
	})
	return slog.New(slog.NewTextHandler(sink, &slog.HandlerOptions{Level: slog.LevelDebug})), sink
}

func insertN(t *testing.T, e *harness.Env, prefix string, n int, payload string) {
	t.Helper()
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status, payload)
		SELECT $1 || i, $2, 'done', $3::jsonb FROM generate_series(1, $4) i`, prefix, trigger, payload, n)
}

func waitDone(t *testing.T, e *harness.Env, w *consumers.Worker, n int, timeout time.Duration) {
	t.Helper()
	harness.Eventually(t, timeout, func() (bool, string) {
		done := e.Count(t, `SELECT count(*) FROM jobs WHERE current_step = $1 AND status = 'done'`, step)
		return done == n, fmt.Sprintf("%d of %d jobs done; %s", done, n, stats(w))
	})
}

// TestServeLoadsOncePerGPUAndBatches: with --serve --batch 8 --gpus 0,1,
// each GPU gets one process, started once for all the jobs, that sees only
// its own GPU; jobs reach it in batches of more than one; no job is claimed
// before a process said ready (its model takes 2 s to load); every job is
// done once.
func TestServeLoadsOncePerGPUAndBatches(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	const early, n = 40, 240
	insertN(t, e, "s", early, `{}`) // waiting before the processes are ready
	began := time.Now()
	w := startWorker(t, e, consumers.Config{GPUs: []string{"0", "1"}, Batch: 8, BatchWait: 20 * time.Millisecond,
		BatchHandler: consumers.Serve(serveArgv(t, "loads-once", "MODEL_LOAD_SECONDS=2", "MODEL_JOB_MS=5")...)})
	time.Sleep(time.Second)
	if runs := e.Count(t, `SELECT count(*) FROM jobstream_runs`); runs != 0 || groupMembers(t, e, step) != 0 {
		t.Fatalf("%d runs claimed and %d group members %s after start, while the model loads (2 s)", runs, groupMembers(t, e, step), time.Since(began))
	}
	<-w.Ready() // both GPUs' members joined
	insertN(t, e, "t", n-early, `{}`)
	waitDone(t, e, w, n, 90*time.Second)
	firstClaim := e.Count(t, `SELECT (extract(epoch FROM min(started_at)) * 1000)::bigint FROM jobstream_runs`)
	if at := time.UnixMilli(int64(firstClaim)); at.Sub(began) < 2*time.Second {
		t.Errorf("first claim %s after start, before the model could have loaded (2 s)", at.Sub(began))
	}
	pids := map[string]map[int]bool{}
	batched := 0
	for id, r := range serveResults(t, e) {
		if r.GPU == "" || r.GPU != r.JobGPU {
			t.Errorf("job %s ran in a process that sees GPU %q but was given GPU %q", id, r.GPU, r.JobGPU)
		}
		if pids[r.GPU] == nil {
			pids[r.GPU] = map[int]bool{}
		}
		pids[r.GPU][r.PID] = true
		if r.BatchSize > 1 {
			batched++
		}
	}
	if len(pids) != 2 || len(pids["0"]) != 1 || len(pids["1"]) != 1 {
		t.Errorf("processes per GPU: %v; want one process on each of GPUs 0 and 1, started once", pids)
	}
	if batched < n/2 {
		t.Errorf("only %d of %d jobs ran in a batch of more than one", batched, n)
	}
	if runs := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE outcome = 'done'`); runs != n {
		t.Errorf("%d runs done for %d jobs, want one each", runs, n)
	}
	if r := w.Stats().ServeRestarts.Load(); r != 0 {
		t.Errorf("ServeRestarts = %d, want 0", r)
	}
}

// TestServeProcessKilledMidBatch: the serve process is SIGKILLed while a
// batch of slow jobs runs: only those jobs' attempts fail and are retried
// on the restarted process; nothing is lost and nothing completes twice.
func TestServeProcessKilledMidBatch(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	marker := "killed-mid-batch"
	log, sink := logSink(t, "worker")
	w := startWorker(t, e, consumers.Config{Logger: log, Concurrency: 1, Batch: 4, BatchWait: 100 * time.Millisecond,
		RetryBackoff: 50 * time.Millisecond, MaxAttempts: 3, BatchHandler: consumers.Serve(serveArgv(t, marker, "MODEL_LOAD_SECONDS=0.2")...)})
	<-w.Ready()
	// Jobs on one partition run one after another: wait until the process
	// runs the first batch (it says so on stderr, which the worker logs).
	insertN(t, e, "k", 4, `{"sleep": 3}`)
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		return strings.Contains(sink.String(), `line="running `), "the serve process has not started a batch"
	})
	inFlight := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE finished_at IS NULL`)
	pids := servePids(marker)
	if len(pids) != 1 {
		t.Fatalf("serve processes: %v, want one", pids)
	}
	syscall.Kill(pids[0], syscall.SIGKILL)
	insertN(t, e, "after", 6, `{}`)
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		done := e.Count(t, `SELECT count(*) FROM jobs WHERE current_step = $1 AND status = 'done'`, step)
		return done == 10, fmt.Sprintf("%d of 10 jobs done; %s; runs:\n%s", done, stats(w),
			e.Dump(t, `SELECT job_id, chain, attempt, outcome, error FROM jobstream_runs ORDER BY job_id, attempt`))
	})
	if twice := e.Count(t, `SELECT count(*) FROM (SELECT job_id FROM jobstream_runs WHERE outcome = 'done' GROUP BY job_id HAVING count(*) > 1) x`); twice != 0 {
		t.Errorf("%d jobs completed more than once", twice)
	}
	// The jobs in the process fail with it (and are retried); those claimed
	// but still waiting for the lane are given back while no process is ready.
	failed := e.Count(t, `SELECT count(DISTINCT job_id) FROM jobstream_runs WHERE job_id LIKE 'k%' AND
		((outcome = 'failed' AND error LIKE '%serve process%exited%') OR (outcome = 'released' AND error LIKE 'no serve process%'))`)
	if failed < inFlight || failed > 4 {
		t.Errorf("%d jobs had an attempt failed by the process's death or given back, want the %d in flight (or more claimed since, of the 4); runs:\n%s", failed, inFlight,
			e.Dump(t, `SELECT job_id, chain, attempt, outcome, error FROM jobstream_runs ORDER BY job_id, attempt`))
	}
	// A job claimed just as the process died is given back (released), not failed.
	if bad := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE job_id LIKE 'after%' AND outcome NOT IN ('done', 'released')`); bad != 0 {
		t.Errorf("%d attempts of jobs that came after the crash failed:\n%s", bad,
			e.Dump(t, `SELECT job_id, chain, attempt, outcome, error FROM jobstream_runs WHERE job_id LIKE 'after%' ORDER BY job_id, attempt`))
	}
	if w.Stats().ServeRestarts.Load() != 1 {
		t.Errorf("ServeRestarts = %d, want 1", w.Stats().ServeRestarts.Load())
	}
}

// TestServeNeverReady: a process that never says ready is stopped at the
// start timeout with one sentence, started again with backoff, counted as
// crash-looping, and its member never joins the group or claims a job.
func TestServeNeverReady(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	log, sink := logSink(t, "worker")
	sh := script(t, e.Dir, "never-ready.sh", `echo "loading forever" >&2; exec sleep 600`)
	w := startWorker(t, e, consumers.Config{StartTimeout: 500 * time.Millisecond, Logger: log,
		BatchHandler: consumers.Serve(sh)})
	insertN(t, e, "n", 3, `{}`)
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		l := w.Stats().ServeCrashLooping.Load()
		return l == 1, fmt.Sprintf("ServeCrashLooping = %d, restarts %d", l, w.Stats().ServeRestarts.Load())
	})
	select {
	case <-w.Ready():
		t.Error("the worker says ready while its only process never was")
	default:
	}
	if runs := e.Count(t, `SELECT count(*) FROM jobstream_runs`); runs != 0 {
		t.Errorf("%d runs claimed by a member whose process never said ready", runs)
	}
	if n := groupMembers(t, e, step); n != 0 {
		t.Errorf("group has %d members, want 0", n)
	}
	out := sink.String()
	for _, want := range []string{`did not print {\"ready\": true} within the start timeout (500ms)`, "keeps failing (3 times in a row)", "loading forever"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	if pids := servePids(sh); len(pids) > 1 {
		t.Errorf("%d never-ready processes alive at once, want at most one", len(pids))
	}
}

// TestServeProtocolErrors: a line that is not JSON, or that answers a job
// the process was not given, fails the attempt in flight with the reason.
func TestServeProtocolErrors(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	py := filepath.Join(e.Dir, "bad_server.py")
	os.WriteFile(py, []byte(`import json, sys
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    if job.get("cancel"):
        continue
    if job["job_id"] == "garbage":
        print("loaded 3 layers", flush=True)
    else:
        print(json.dumps({"job_id": "someone-else", "result": 1}), flush=True)
`), 0o644)
	w := startWorker(t, e, consumers.Config{MaxAttempts: 1, BatchHandler: consumers.Serve("python3", py)})
	<-w.Ready()
	insertJobs(t, e, "garbage", "wrong-id")
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		n := e.Count(t, `SELECT count(*) FROM jobs WHERE status = 'failed'`)
		return n == 2, fmt.Sprintf("%d of 2 jobs failed; %s", n, stats(w))
	})
	for id, want := range map[string]string{
		"garbage":  `printed a line that is not a JSON answer ("loaded 3 layers")`,
		"wrong-id": `answered job "someone-else", which it was not given`,
	} {
		if got := getJob(t, e, id); !strings.Contains(got.err, want) {
			t.Errorf("job %s error %q, want it to say %q", id, got.err, want)
		}
	}
}

// TestCancelInEveryMode: a cancelled job is answered at once in every
// executor mode (serve, serve with batches, Go batches, HTTP, HTTP
// batches): its run is closed as cancelled within about 2 s, with no retry
// and no letter, and the other job of its batch completes. A serve process
// is told; one that does not answer is restarted.
func TestCancelInEveryMode(t *testing.T) {
	t.Parallel()
	// slowHTTP answers a job (or batch) holding cancel-me only when the
	// request ends, or after 3 s for a batch (which the cancel cannot end).
	slowHTTP := func(t *testing.T, batch bool) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			if !batch {
				if strings.Contains(string(body), "cancel-me") {
					<-r.Context().Done()
					return
				}
				fmt.Fprint(w, `"fine"`)
				return
			}
			var jobs []consumers.Job
			json.Unmarshal(body, &jobs)
			var answers []map[string]any
			for _, j := range jobs {
				if j.JobID == "cancel-me" {
					select {
					case <-r.Context().Done():
						return
					case <-time.After(3 * time.Second):
					}
				}
				answers = append(answers, map[string]any{"job_id": j.JobID, "result": "fine"})
			}
			json.NewEncoder(w).Encode(answers)
		}))
		t.Cleanup(srv.Close)
		return srv.URL
	}
	goBatch := consumers.BatchFunc(func(ctx context.Context, jobs []consumers.Job) []consumers.Result {
		out := make([]consumers.Result, len(jobs))
		for i, j := range jobs {
			if j.JobID == "cancel-me" {
				<-j.Context().Done() // this job's own end, not the batch's
				out[i].Err = context.Cause(j.Context())
				continue
			}
			out[i].Value = json.RawMessage(`"fine"`)
		}
		return out
	})
	for _, tc := range []struct {
		name string
		cfg  func(t *testing.T, dir string) consumers.Config
		// restart: the process ignores the cancel and must be restarted
		restart bool
	}{
		{"serve", func(t *testing.T, _ string) consumers.Config {
			return consumers.Config{BatchHandler: consumers.Serve(serveArgv(t, "cancel-serve", "MODEL_LOAD_SECONDS=0.1")...)}
		}, false},
		{"serve batch", func(t *testing.T, _ string) consumers.Config {
			return consumers.Config{Batch: 4, BatchHandler: consumers.Serve(serveArgv(t, "cancel-batch", "MODEL_LOAD_SECONDS=0.1")...)}
		}, false},
		{"serve deaf to cancel", func(t *testing.T, dir string) consumers.Config {
			py := filepath.Join(dir, "deaf.py")
			os.WriteFile(py, []byte(`import json, sys, time
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    job = json.loads(line)
    if "cancel" in job:
        continue
    if job["job_id"] == "cancel-me":
        time.sleep(60)
    print(json.dumps({"job_id": job["job_id"], "result": "fine"}), flush=True)
`), 0o644)
			return consumers.Config{BatchHandler: consumers.Serve("python3", py)}
		}, true},
		{"go batch", func(*testing.T, string) consumers.Config {
			return consumers.Config{Batch: 4, BatchHandler: goBatch}
		}, false},
		{"http", func(t *testing.T, _ string) consumers.Config {
			return consumers.Config{Handler: consumers.HTTP(slowHTTP(t, false))}
		}, false},
		{"http batch", func(t *testing.T, _ string) consumers.Config {
			return consumers.Config{Batch: 4, BatchHandler: consumers.HTTPBatch(slowHTTP(t, true))}
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := streamingEnv(t)
			cfg := tc.cfg(t, e.Dir)
			cfg.Concurrency, cfg.MaxAttempts = 2, 3
			w := startWorker(t, e, cfg)
			<-w.Ready()
			e.Exec(t, `INSERT INTO jobs (job_id, current_step, status, payload) VALUES ('cancel-me', $1, 'done', '{"sleep": 60}'), ('keep-me', $1, 'done', '{}')`, trigger)
			harness.Eventually(t, 30*time.Second, func() (bool, string) {
				n := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE job_id = 'cancel-me' AND outcome IS NULL`)
				return n == 1, "the step of cancel-me has not started"
			})
			time.Sleep(200 * time.Millisecond)
			at := time.Now()
			if _, err := consumers.Cancel(context.Background(), e.Pool(t), "cancel-me"); err != nil {
				t.Fatal(err)
			}
			harness.Eventually(t, 15*time.Second, func() (bool, string) {
				n := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE job_id = 'cancel-me' AND outcome = 'cancelled'`)
				return n == 1, "the run of cancel-me is not closed as cancelled"
			})
			took := time.Since(at)
			t.Logf("run closed %s after the cancel", took.Round(time.Millisecond))
			if took > 5*time.Second { // the contract is 2 s; a loaded machine gets slack
				t.Errorf("the run was closed %s after the cancel, want within about 2s", took)
			}
			harness.Eventually(t, 30*time.Second, func() (bool, string) {
				j := getJob(t, e, "keep-me")
				return j.status == "done", "keep-me: " + j.String()
			})
			if n := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE job_id = 'cancel-me'`); n != 1 {
				t.Errorf("cancel-me has %d runs, want 1 (no retry)", n)
			}
			if j := getJob(t, e, "cancel-me"); j.status != "cancelled" {
				t.Errorf("cancel-me is %s, want left cancelled", j)
			}
			if w.Stats().DeadLetters.Load() != 0 {
				t.Error("a dead letter for a cancelled job")
			}
			if tc.restart {
				harness.Eventually(t, 10*time.Second, func() (bool, string) {
					return w.Stats().ServeRestarts.Load() == 1, "the deaf process was not restarted"
				})
				return
			}
			if r := w.Stats().ServeRestarts.Load(); r != 0 {
				t.Errorf("ServeRestarts = %d; a process that answers the cancel is kept", r)
			}
		})
	}
}

// TestBatchFunc: a Go batch handler gets several jobs at once; one job's
// failure fails only that job's attempt, retried on its own.
func TestBatchFunc(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	var sizes []int
	var mu = make(chan struct{}, 1)
	h := consumers.BatchFunc(func(ctx context.Context, jobs []consumers.Job) []consumers.Result {
		mu <- struct{}{}
		sizes = append(sizes, len(jobs))
		<-mu
		out := make([]consumers.Result, len(jobs))
		for i, j := range jobs {
			if j.JobID == "flaky" && j.Attempt == 1 {
				out[i].Err = fmt.Errorf("flaky on its first attempt")
				continue
			}
			out[i].Value = json.RawMessage(strconv.Quote(fmt.Sprintf("%s in a batch of %d", j.JobID, len(jobs))))
		}
		return out
	})
	w := startWorker(t, e, consumers.Config{Concurrency: 2, Batch: 5, BatchWait: 50 * time.Millisecond, RetryBackoff: 10 * time.Millisecond, BatchHandler: h})
	<-w.Ready()
	insertN(t, e, "b", 29, `{}`)
	insertJobs(t, e, "flaky")
	waitDone(t, e, w, 30, 60*time.Second)
	mu <- struct{}{}
	defer func() { <-mu }()
	big := 0
	for _, s := range sizes {
		if s > 5 {
			t.Errorf("a batch of %d, over Batch 5", s)
		}
		if s > 1 {
			big++
		}
	}
	if big == 0 {
		t.Errorf("no batch of more than one job: %v", sizes)
	}
	if n := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE job_id = 'flaky'`); n != 2 {
		t.Errorf("flaky has %d runs, want 2 (one failed, one done)", n)
	}
	if n := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE outcome <> 'done' AND job_id <> 'flaky'`); n != 0 {
		t.Errorf("%d other jobs had an attempt that was not done", n)
	}
}

// TestServeBatchesAcrossARebalance: a second worker joins while the first
// runs batches of slow jobs: the batches in flight finish on the first
// worker's process (holding their runs), the second takes over partitions,
// and every job is done exactly once, none failed or retried.
func TestServeBatchesAcrossARebalance(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	serve := func(id string) *consumers.Worker {
		return startWorker(t, e, consumers.Config{WorkerID: id, Batch: 4, BatchWait: 50 * time.Millisecond, MaxAttempts: 1,
			BatchHandler: consumers.Serve(serveArgv(t, "rebalance-"+id, "MODEL_LOAD_SECONDS=0.1", "MODEL_JOB_MS=150")...)})
	}
	a := serve("a")
	<-a.Ready()
	const n = 60
	insertN(t, e, "r", n, `{}`)
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		running := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE finished_at IS NULL`)
		return running > 1, "no batch in flight"
	})
	b := serve("b")
	<-b.Ready()
	harness.Eventually(t, 90*time.Second, func() (bool, string) {
		done := e.Count(t, `SELECT count(*) FROM jobs WHERE current_step = $1 AND status = 'done'`, step)
		return done == n, fmt.Sprintf("%d of %d done; a: %s; b: %s", done, n, stats(a), stats(b))
	})
	if bad := e.Dump(t, `SELECT job_id, attempt, outcome, worker, error FROM jobstream_runs WHERE outcome <> 'done'`); bad != "" {
		t.Errorf("runs that were not done:\n%s", bad)
	}
	if twice := e.Count(t, `SELECT count(*) FROM (SELECT job_id FROM jobstream_runs GROUP BY job_id HAVING count(*) > 1) x`); twice != 0 {
		t.Errorf("%d jobs ran more than once", twice)
	}
	byB := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE worker LIKE 'b/%'`)
	if byB == 0 {
		t.Error("the second worker ran no job: no rebalance happened")
	}
	t.Logf("jobs run by a: %d, by b: %d", n-byB, byB)
}
