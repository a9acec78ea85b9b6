package consumers_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
)

// These tests run `jobstream worker` as real processes, built from
// ./ops/jobstream, against the test's database and broker; the reader runs
// in the test process.

// startSlowJob starts two `jobstream worker` processes of the step, running
// slowStep with flags, where attempt 1 of ids[0] takes slowSecs. Once both
// are in the group it inserts ids and waits for that attempt to start; it
// returns the attempt, the worker running it and the other worker.
func startSlowJob(t *testing.T, e *harness.Env, slowSecs string, flags []string, ids ...string) (first started, victim, survivor *harness.Process) {
	t.Helper()
	dir := t.TempDir()
	stepCmd := script(t, dir, "step.sh", slowStep)
	env := []string{"STEP_DIR=" + dir, "STEP_SLOW_JOB=" + ids[0], "STEP_SLOW_SECS=" + slowSecs}
	args := append(append([]string{"worker", "--step", step}, flags...), "--", stepCmd)
	var ps []*harness.Process
	for _, name := range []string{"worker-a", "worker-b"} {
		ps = append(ps, e.StartProcess(t, name, env, args...))
	}
	waitMembers(t, e, step, 2)
	insertJobs(t, e, ids...)
	first = waitStarted(t, dir, ids[0], 1, 60*time.Second)
	for _, p := range ps {
		if p.Pid() == first.parent {
			victim = p
		} else {
			survivor = p
		}
	}
	if victim == nil {
		t.Fatalf("%s was started by process %d, not by a worker of the test", ids[0], first.parent)
	}
	return first, victim, survivor
}

// checkOneCompletion checks that each job completed exactly once: one done
// run, one (step, done) event on the step's topic.
func checkOneCompletion(t *testing.T, e *harness.Env, ids ...string) {
	t.Helper()
	events := settledTransitions(t, e, ids)
	for _, id := range ids {
		if n := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE job_id = $1 AND step = $2 AND outcome = 'done'`, id, step); n != 1 {
			t.Errorf("job %s has %d done runs, want 1: %v", id, n, getRuns(t, e, id))
		}
		done := 0
		for _, s := range events[id] {
			if s == step+"/done" {
				done++
			}
		}
		if done != 1 {
			t.Errorf("job %s has %d (%s, done) events, want 1: %v", id, done, step, events[id])
		}
	}
}

// TestKillWorkerMidStep: two worker processes share the step; the one
// running the slow job is killed with SIGKILL mid-step. The other finishes
// that job at attempt 2 once the lease (3s) expired, the killed attempt is
// recorded as expired, its step process died with its worker, and every
// job completes exactly once.
func TestKillWorkerMidStep(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	ids := []string{"kill-0", "kill-1", "kill-2", "kill-3", "kill-4", "kill-5"}
	first, victim, survivor := startSlowJob(t, e, "600", []string{"--lease", "3s"}, ids...)
	// Let the attempt renew its lease at least once: a live step keeps it.
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		n := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE job_id = 'kill-0' AND finished_at IS NULL
			AND lease_expires_at > started_at + interval '3.2 seconds'`)
		return n == 1, "the attempt of kill-0 has not renewed its lease"
	})
	victim.Signal(t, syscall.SIGKILL)
	killed := time.Now()
	victim.Wait(t, 10*time.Second)

	j := waitJob(t, e, "kill-0", step, "done", 90*time.Second)
	t.Logf("the killed worker's job completed %s after SIGKILL (lease 3s)", time.Since(killed).Round(100*time.Millisecond))
	var res struct{ Attempt, Ppid int }
	if err := json.Unmarshal(j.results[step], &res); err != nil || res.Attempt != 2 || res.Ppid != survivor.Pid() {
		t.Errorf("kill-0's result is %s, want attempt 2 by the surviving worker %d", j.results[step], survivor.Pid())
	}
	runs := getRuns(t, e, "kill-0")
	if len(runs) != 2 || runs[0].outcome != "expired" || !strings.HasPrefix(runs[0].worker, workerName(victim)) ||
		runs[1].outcome != "done" || !strings.HasPrefix(runs[1].worker, workerName(survivor)) {
		t.Errorf("kill-0's runs %+v, want attempt 1 expired (worker %s) and attempt 2 done (worker %s)", runs, workerName(victim), workerName(survivor))
	}
	harness.Eventually(t, 10*time.Second, func() (bool, string) {
		return !alive(first.child), fmt.Sprintf("the killed worker's step process %d still runs", first.child)
	})
	for _, id := range ids {
		waitJob(t, e, id, step, "done", 60*time.Second)
	}
	checkOneCompletion(t, e, ids...)
}

// TestStoppedWorkerResultIsFenced: the worker running a job is frozen
// (SIGSTOP) mid-step, so it stops renewing its lease and heartbeating. The
// other worker takes the job over and completes it; when the frozen worker
// resumes (SIGCONT) with its late result, the result is discarded.
func TestStoppedWorkerResultIsFenced(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	_, victim, survivor := startSlowJob(t, e, "2", []string{"--lease", "2s"}, "frozen")
	victim.Signal(t, syscall.SIGSTOP)

	j := waitJob(t, e, "frozen", step, "done", 90*time.Second)
	victim.Signal(t, syscall.SIGCONT)
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		return strings.Contains(victim.Log(), "result discarded"), "the resumed worker has not discarded its late result"
	})

	var res struct{ Attempt, Ppid int }
	if err := json.Unmarshal(j.results[step], &res); err != nil || res.Attempt != 2 || res.Ppid != survivor.Pid() {
		t.Errorf("result %s, want attempt 2 by worker %d", j.results[step], survivor.Pid())
	}
	if j := getJob(t, e, "frozen"); string(j.results[step]) != `{"ppid": `+fmt.Sprint(survivor.Pid())+`, "attempt": 2}` {
		t.Errorf("after the frozen worker resumed, the result is %s", j.results[step])
	}
	runs := getRuns(t, e, "frozen")
	if len(runs) != 2 || runs[0].outcome != "expired" || runs[1].outcome != "done" || !strings.HasPrefix(runs[1].worker, workerName(survivor)) {
		t.Errorf("runs %+v, want attempt 1 expired and attempt 2 done by %s", runs, workerName(survivor))
	}
	checkOneCompletion(t, e, "frozen")
}

// TestSIGTERMFinishesRunningStep: SIGTERM to a worker whose step is running:
// it takes no new event, lets the step finish, completes it, commits its
// offset, leaves the group at once and exits 0. The job inserted after the
// SIGTERM is left for the next worker, which completes it.
func TestSIGTERMFinishesRunningStep(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	dir := t.TempDir()
	stepCmd := script(t, dir, "step.sh", slowStep)
	env := []string{"STEP_DIR=" + dir, "STEP_SLOW_JOB=term-1", "STEP_SLOW_SECS=3"}
	w := e.StartProcess(t, "worker", env, "worker", "--step", step, "--grace", "60s", "--", stepCmd)

	insertJobs(t, e, "term-1")
	waitStarted(t, dir, "term-1", 1, 60*time.Second)
	w.Signal(t, syscall.SIGTERM)
	harness.Eventually(t, 10*time.Second, func() (bool, string) {
		return strings.Contains(w.Log(), "taking no new events"), "the worker did not log that it is stopping"
	})
	insertJobs(t, e, "term-2")
	if code := w.Wait(t, 60*time.Second); code != 0 {
		t.Errorf("worker exited %d after SIGTERM, want 0", code)
	}

	j := getJob(t, e, "term-1")
	if j.step != step || j.status != "done" || string(j.results[step]) != fmt.Sprintf(`{"ppid": %d, "attempt": 1}`, w.Pid()) {
		t.Errorf("term-1 is %s, want done by the stopped worker at attempt 1", j)
	}
	// It left the group rather than waiting for its session to time out.
	if n := groupMembers(t, e, step); n != 0 {
		t.Errorf("the group still has %d members after the worker exited", n)
	}
	// term-1's offset is committed; term-2 was not taken.
	if j := getJob(t, e, "term-2"); j.step != trigger || j.status != "done" || len(getRuns(t, e, "term-2")) != 0 {
		t.Errorf("term-2 is %s with runs %v; a stopping worker must take no new event", j, getRuns(t, e, "term-2"))
	}
	committed, end := offsets(t, e, step, trigger)
	for _, m := range e.ReadTopic(t, e.Topic(trigger)) {
		switch schema.JobIDFromKey(m.Key) {
		case "term-1":
			if committed[m.Partition] <= m.Offset {
				t.Errorf("term-1's event (partition %d offset %d) is not committed: committed %v", m.Partition, m.Offset, committed)
			}
		case "term-2":
			if committed[m.Partition] > m.Offset {
				t.Errorf("term-2's event (partition %d offset %d) was committed: %v (end %v)", m.Partition, m.Offset, committed, end)
			}
		}
	}
	// The next worker completes term-2 and runs nothing twice.
	rec := &recorder{}
	startWorker(t, e, consumers.Config{Handler: rec.attemptResult})
	waitJob(t, e, "term-2", step, "done", 60*time.Second)
	if got := len(rec.of("term-1")); got != 0 {
		t.Errorf("term-1 ran %d more times", got)
	}
	checkOneCompletion(t, e, "term-1", "term-2")
}

// TestSIGTERMPastGraceReleasesRun: SIGTERM to a worker whose step runs past
// the grace period (1s): the step is killed, its run released, the worker
// exits 0, and the other worker takes the job at once — the lease (10m)
// plays no part.
func TestSIGTERMPastGraceReleasesRun(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	first, victim, survivor := startSlowJob(t, e, "600", []string{"--grace", "1s", "--lease", "10m"}, "long")
	victim.Signal(t, syscall.SIGTERM)
	if code := victim.Wait(t, 60*time.Second); code != 0 {
		t.Errorf("worker exited %d after SIGTERM, want 0", code)
	}
	// Killed with its worker (its process group at the stop, Pdeathsig when
	// the worker's thread exits): gone within moments, however loaded.
	if err := harness.Poll(10*time.Second, func() (bool, string) { return !alive(first.child), "alive" }); err != nil {
		t.Errorf("the step process %d outlived its worker's grace period", first.child)
	}
	j := waitJob(t, e, "long", step, "done", 90*time.Second)
	if string(j.results[step]) != fmt.Sprintf(`{"ppid": %d, "attempt": 2}`, survivor.Pid()) {
		t.Errorf("result %s, want attempt 2 by worker %d", j.results[step], survivor.Pid())
	}
	runs := getRuns(t, e, "long")
	if len(runs) != 2 || runs[0].outcome != "released" || !strings.HasPrefix(runs[0].worker, workerName(victim)) ||
		runs[1].outcome != "done" || !strings.HasPrefix(runs[1].worker, workerName(survivor)) {
		t.Errorf("runs %+v, want attempt 1 released by %s and attempt 2 done by %s", runs, workerName(victim), workerName(survivor))
	}
	checkOneCompletion(t, e, "long")
}

// TestGPUSlots: `--gpus 0,1` runs one member per GPU; each step sees its GPU
// in CUDA_VISIBLE_DEVICES. Both GPUs are used, and a GPU never runs two
// steps at once (each step holds a lock directory named after its GPU).
func TestGPUSlots(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	dir := t.TempDir()
	stepCmd := script(t, dir, "gpu.sh", `cat >/dev/null
[ -n "$CUDA_VISIBLE_DEVICES" ] || { echo "no CUDA_VISIBLE_DEVICES" >&2; exit 65; }
lock="$STEP_DIR/busy.$CUDA_VISIBLE_DEVICES"
mkdir "$lock" 2>/dev/null || echo "$JOBSTREAM_JOB_ID on GPU $CUDA_VISIBLE_DEVICES" >> "$STEP_DIR/overlaps"
echo "$CUDA_VISIBLE_DEVICES" >> "$STEP_DIR/used"
sleep 0.2
rmdir "$lock"
printf '{"gpu":"%s"}\n' "$CUDA_VISIBLE_DEVICES"
`)
	e.StartProcess(t, "worker", []string{"STEP_DIR=" + dir}, "worker", "--step", step, "--gpus", "0,1", "--", stepCmd)
	waitMembers(t, e, step, 2)

	var ids []string
	for i := range 16 {
		ids = append(ids, fmt.Sprintf("gpu-%d", i))
	}
	insertJobs(t, e, ids...)
	perGPU := map[string]int{}
	for _, id := range ids {
		j := waitJob(t, e, id, step, "done", 90*time.Second)
		var res struct{ GPU string }
		json.Unmarshal(j.results[step], &res)
		perGPU[res.GPU]++
		runs := getRuns(t, e, id)
		if len(runs) != 1 || !strings.HasSuffix(runs[0].worker, "/gpu"+res.GPU) {
			t.Errorf("job %s ran on GPU %q with runs %+v; want one run by the member of that GPU", id, res.GPU, runs)
		}
	}
	t.Logf("jobs per GPU: %v", perGPU)
	if len(perGPU) != 2 || perGPU["0"] == 0 || perGPU["1"] == 0 {
		t.Errorf("jobs per GPU %v, want both GPUs 0 and 1 used", perGPU)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "overlaps")); err == nil {
		t.Errorf("two steps ran at once on one GPU:\n%s", b)
	}
	checkOneCompletion(t, e, ids...)
}

// TestHTTPExecutorProcess: `jobstream worker --http URL` POSTs each job as
// JSON: a 2xx answer is the result, a 503 is retried, a 422 fails the job
// at once with a dead letter.
func TestHTTPExecutorProcess(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	var mu sync.Mutex
	calls := map[string][]string{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var job consumers.Job
		body, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(body, &job); err != nil || r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		mu.Lock()
		calls[job.JobID] = append(calls[job.JobID], r.Header.Get("Idempotency-Key"))
		mu.Unlock()
		switch {
		case job.JobID == "http-flaky" && job.Attempt == 1:
			http.Error(w, "model server warming up", http.StatusServiceUnavailable)
		case job.JobID == "http-bad":
			http.Error(w, "image is not decodable", http.StatusUnprocessableEntity)
		default:
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"caption": "a cat", "attempt": %d, "url": %s}`, job.Attempt, gjson(job.Results, trigger, "url"))
		}
	}))
	t.Cleanup(srv.Close)
	e.StartProcess(t, "worker", nil, "worker", "--step", step, "--http", srv.URL+"/steps/vlm", "--retry-backoff", "100ms")

	insertJobs(t, e, "http-ok", "http-flaky", "http-bad")
	ok := waitJob(t, e, "http-ok", step, "done", 60*time.Second)
	var res struct {
		Caption, URL string
		Attempt      int
	}
	if err := json.Unmarshal(ok.results[step], &res); err != nil || res.Caption != "a cat" || res.URL != "s3://img/http-ok.png" || res.Attempt != 1 {
		t.Errorf("http-ok result %s, want the server's answer to attempt 1", ok.results[step])
	}
	flaky := waitJob(t, e, "http-flaky", step, "done", 60*time.Second)
	if got := string(flaky.results[step]); !strings.Contains(got, `"attempt": 2`) {
		t.Errorf("http-flaky result %s, want attempt 2's", got)
	}
	if runs := getRuns(t, e, "http-flaky"); len(runs) != 2 || runs[0].outcome != "failed" || !strings.Contains(runs[0].err, "503") {
		t.Errorf("http-flaky runs %+v, want attempt 1 failed with the 503", runs)
	}
	bad := waitJob(t, e, "http-bad", step, "failed", 60*time.Second)
	if !strings.Contains(bad.err, "422") || !strings.Contains(bad.err, "image is not decodable") {
		t.Errorf("http-bad error %q, want the status and body", bad.err)
	}
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		d := deadLetters(t, e)["http-bad"]
		return d != nil && d["attempts"] == json.Number("1"), fmt.Sprintf("dead letter of http-bad: %v", d)
	})
	mu.Lock()
	defer mu.Unlock()
	if got := calls["http-flaky"]; !slices.Equal(got, []string{"http-flaky/" + step + "/1", "http-flaky/" + step + "/2"}) {
		t.Errorf("http-flaky was POSTed with Idempotency-Keys %v", got)
	}
	if got := len(calls["http-bad"]); got != 1 {
		t.Errorf("http-bad was POSTed %d times, want 1 (4xx is permanent)", got)
	}
	checkOneCompletion(t, e, "http-ok", "http-flaky")
}

// gjson returns results[step][key] as JSON, or null.
func gjson(results json.RawMessage, step, key string) string {
	var m map[string]map[string]json.RawMessage
	if json.Unmarshal(results, &m) != nil || m[step][key] == nil {
		return "null"
	}
	return string(m[step][key])
}
