package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jobstream/jobstream/ops/localpg"
)

// serveMode is one way of running a GPU step in scenario 7.
type serveMode struct {
	name  string
	flags []string // the worker's flags before "--"
	jobs  func(quick bool) int
}

// serveModes are the step's three modes, on 2 slots, with the example model
// server (ops/steps/model_server.py): a model that takes 2 s to load and
// 5 ms + 1 ms per job of a call.
var serveModes = []serveMode{
	{"exec (a process per job)", []string{"--concurrency", "2"}, func(q bool) int { return pick(q, 4, 16) }},
	{"serve", []string{"--concurrency", "2", "--serve"}, func(q bool) int { return pick(q, 300, 2_000) }},
	{"serve --batch 8", []string{"--concurrency", "2", "--serve", "--batch", "8"}, func(q bool) int { return pick(q, 800, 6_000) }},
}

// serveModel is the model's cost, as the example server reads it.
var serveModel = []string{"MODEL_LOAD_SECONDS=2", "MODEL_CALL_MS=5", "MODEL_JOB_MS=1"}

func pick(quick bool, small, full int) int {
	if quick {
		return small
	}
	return full
}

// serveResult is one run of one mode.
type serveResult struct {
	jobs      int
	secs      float64 // insert → the last job done
	workerCPU float64 // CPU seconds of the worker process itself (not the model's)
}

func (r serveResult) rate() float64       { return float64(r.jobs) / r.secs }
func (r serveResult) cpuPerJob() float64  { return 1000 * r.workerCPU / float64(r.jobs) }
func (r serveResult) secsPerJob() float64 { return r.secs / float64(r.jobs) }

// benchServe runs the vlm_analyze step alone in mode m: a broker, a reader
// and one `jobstream worker` process, ready (its model loaded) before the
// jobs are inserted at (img_gen, done) in one COPY; timed until every job
// is at (vlm_analyze, done).
func benchServe(ctx context.Context, e *env, m serveMode, run int) (res serveResult, err error) {
	res.jobs = m.jobs(e.cfg.Quick)
	tag := fmt.Sprintf("serve%d_%d", len(m.flags), run)
	db, err := e.newDB(ctx, "bench_"+tag)
	if err != nil {
		return res, err
	}
	defer db.drop()
	b, err := e.startBroker(ctx, "broker-"+tag)
	if err != nil {
		return res, err
	}
	defer b.stop()
	reader, err := e.startReader(ctx, "reader-"+tag, db, b.addr, "bench", tag)
	if err != nil {
		return res, err
	}
	defer reader.stop()
	root, err := moduleRoot(ctx)
	if err != nil {
		return res, err
	}
	port, err := localpg.FreePort()
	if err != nil {
		return res, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	args := append([]string{"worker", "--step", "vlm_analyze", "--database-url", db.url, "--brokers", b.addr,
		"--topic-prefix", tag, "--http-addr", addr, "--log-level", "warn"}, m.flags...)
	cmd := exec.Command(e.bin, append(args, "--", "python3", filepath.Join(root, "ops", "steps", "model_server.py"))...)
	cmd.Env = append(os.Environ(), serveModel...)
	w, err := e.startProc("worker-"+tag, cmd)
	if err != nil {
		return res, err
	}
	defer w.stop()
	if err := waitReady(ctx, w, "http://"+addr+"/readyz", time.Minute); err != nil {
		return res, err
	}
	pool, err := pgxpool.New(ctx, db.url)
	if err != nil {
		return res, err
	}
	defer pool.Close()
	cpu0 := procCPU(w.cmd.Process.Pid)
	t0 := time.Now()
	if err := copyJobs(ctx, pool, jobIDs("job", res.jobs), "img_gen", "done"); err != nil {
		return res, err
	}
	if err := waitDone(ctx, pool, "vlm_analyze", res.jobs, w, 2*time.Minute); err != nil {
		return res, err
	}
	res.secs = time.Since(t0).Seconds()
	res.workerCPU = procCPU(w.cmd.Process.Pid) - cpu0
	return res, nil
}

// waitReady polls url until it answers 200, or the process exits.
func waitReady(ctx context.Context, p *proc, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if err := p.exited(); err != nil {
			return err
		}
		resp, err := http.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s not ready within %s: %v", p.name, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitDone waits until n jobs are at (step, done).
func waitDone(ctx context.Context, pool *pgxpool.Pool, step string, n int, p *proc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var done int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM jobs WHERE current_step = $1 AND status = 'done'`, step).Scan(&done); err != nil {
			return err
		}
		if done >= n {
			return nil
		}
		if err := p.exited(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d jobs done within %s: %s", done, n, timeout, p.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// serveRows renders scenario 7: each mode's jobs/s and the worker's own CPU
// per job, with the ratio to exec.
func (r *results) serveRows() []row {
	if len(r.serve) == 0 {
		return nil
	}
	var rows []row
	exec := median(each(r.serve[serveModes[0].name], serveResult.rate))
	for i, m := range serveModes {
		runs := r.serve[m.name]
		if len(runs) == 0 {
			continue
		}
		rates := each(runs, serveResult.rate)
		rate := median(rates)
		scen := ""
		if i == 0 {
			scen = "7. GPU step modes, 2 slots; the model loads in 2 s and takes 5 ms + 1 ms per job per call"
		}
		ratio, target, result := "", "", ""
		if i > 0 && exec > 0 {
			ratio = fmt.Sprintf("×%s exec", thousands(rate/exec))
		}
		if m.name == "serve --batch 8" {
			serve := median(each(r.serve["serve"], serveResult.rate))
			ratio += fmt.Sprintf(" · ×%s serve", f1(rate/serve))
			target, result = "> serve", passMiss(rate > serve)
		}
		value := fmt.Sprintf("%s jobs/s (%s jobs); worker CPU %s ms/job", rateCell(rate), thousands(float64(runs[0].jobs)),
			f2(median(each(runs, serveResult.cpuPerJob))))
		rows = append(rows, row{scen, m.name, value, ratio, target, result, joinRuns(rates, rateCell), r.cfg.command("serve")})
	}
	return rows
}

// rateCell writes a rate with a decimal below 10.
func rateCell(x float64) string {
	if x < 10 {
		return f2(x)
	}
	return thousands(x)
}
