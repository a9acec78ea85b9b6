package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jobstream/jobstream/ops/admin"
	"github.com/jobstream/jobstream/ops/console"
	"github.com/jobstream/jobstream/schema"
	"github.com/jobstream/jobstream/schema/kafkaconn"
)

// consoleResult is one run of scenario 8.
type consoleResult struct {
	plain, observed pipelineResult // the pipeline without and with the console open
	rows            int            // jobs in the table of the page timings
	pageMs          map[string][]float64
}

// consoleQueries are the jobs pages timed on the big table.
var consoleQueries = []struct {
	name string
	opts func(mid string) admin.JobsOptions
}{
	{"first page, step and status", func(string) admin.JobsOptions { return admin.JobsOptions{Step: "yolo_detect", Status: "done"} }},
	{"deep page (after the middle id)", func(mid string) admin.JobsOptions {
		return admin.JobsOptions{Step: "yolo_detect", Status: "done", After: mid}
	}},
	{"all jobs, deep page", func(mid string) admin.JobsOptions { return admin.JobsOptions{After: mid} }},
	{"search an exact id", func(mid string) admin.JobsOptions { return admin.JobsOptions{Search: mid} }},
	{"search an id's start", func(mid string) admin.JobsOptions { return admin.JobsOptions{Search: mid[:len(mid)-2]} }},
}

// benchConsole runs the pipeline of scenario 4 twice, without and with the
// web console open on it (sampling every 2 s, one page streaming the
// overview and listing jobs every 2 s), in alternating order, and times the
// jobs pages on a table of a million rows.
func benchConsole(ctx context.Context, e *env, run int) (res consoleResult, err error) {
	res.plain.jobs, res.plain.members = e.cfg.PipelineJobs, e.cfg.PipelineMembers
	res.observed = res.plain
	first, second := &res.plain, &res.observed
	if run%2 == 0 {
		first, second = second, first
	}
	for _, r := range []*pipelineResult{first, second} {
		var observe func(context.Context, string, string, string) (func(), error)
		tag := fmt.Sprintf("pipeline_%d", 100+run)
		if r == &res.observed {
			observe, tag = openConsole, fmt.Sprintf("observed_%d", 100+run)
		}
		if err := pipelineJobstream(ctx, e, tag, r, false, observe); err != nil {
			return res, err
		}
	}
	res.rows = pick(e.cfg.Quick, 100_000, 1_000_000)
	res.pageMs, err = timeJobsPages(ctx, e, run, res.rows)
	return res, err
}

// openConsole starts the console on the deployment and a client that keeps
// its overview open and lists a page of jobs every 2 s, as a person
// watching it would.
func openConsole(ctx context.Context, dbURL, broker, prefix string) (func(), error) {
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return nil, err
	}
	con, err := console.New(console.Config{Pool: pool, Kafka: admin.NewKafka(kafkaconn.Broker{Addrs: []string{broker}}),
		Deployment: admin.Deployment{TopicPrefix: prefix}, Slot: "bench", Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		pool.Close()
		return nil, err
	}
	cctx, cancel := context.WithCancel(ctx)
	srv := httptest.NewServer(con.Handler())
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); con.Run(cctx) }()
	go func() { // the overview, streaming
		defer wg.Done()
		req, _ := http.NewRequestWithContext(cctx, http.MethodGet, srv.URL+"/api/events", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	go func() { // the jobs page, refreshed
		defer wg.Done()
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			for _, q := range []string{"/api/jobs?step=overlay&status=done", "/api/history", "/api/letters"} {
				if resp, err := http.Get(srv.URL + q); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
			select {
			case <-cctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() { cancel(); srv.CloseClientConnections(); srv.Close(); wg.Wait(); pool.Close() }, nil
}

// timeJobsPages fills a fresh database with n jobs spread over the steps
// and statuses and times each of consoleQueries 20 times.
func timeJobsPages(ctx context.Context, e *env, run, n int) (map[string][]float64, error) {
	_, pool, done, err := e.openDB(ctx, fmt.Sprintf("bench_console_%d", run), 0)
	if err != nil {
		return nil, err
	}
	defer done()
	e.logf("  filling jobs with %s rows", thousands(float64(n)))
	if _, err := pool.Exec(ctx, `INSERT INTO jobs (job_id, current_step, status, payload)
		SELECT 'job-' || lpad(i::text, 8, '0'), ($2::text[])[1 + i % 5], (ARRAY['done', 'running', 'failed', 'pending'])[1 + i % 4], '{"prompt": "a cat"}'
		FROM generate_series(1, $1) i`, n, schema.DefaultSteps); err != nil {
		return nil, err
	}
	if _, err := pool.Exec(ctx, `ANALYZE jobs`); err != nil {
		return nil, err
	}
	mid := fmt.Sprintf("job-%08d", n/2)
	out := map[string][]float64{}
	for _, q := range consoleQueries {
		for range 20 {
			t0 := time.Now()
			page, err := admin.Jobs(ctx, pool, q.opts(mid))
			if err != nil {
				return nil, fmt.Errorf("%s: %w", q.name, err)
			}
			if len(page.Jobs) == 0 {
				return nil, fmt.Errorf("%s: an empty page", q.name)
			}
			out[q.name] = append(out[q.name], float64(time.Since(t0).Microseconds())/1000)
		}
	}
	return out, nil
}

// consoleRows renders scenario 8.
func (r *results) consoleRows() []row {
	if len(r.console) == 0 {
		return nil
	}
	c := r.cfg
	plain := each(r.console, func(x consoleResult) float64 { return x.plain.pipeRate() })
	observed := each(r.console, func(x consoleResult) float64 { return x.observed.pipeRate() })
	ratios := each(r.console, func(x consoleResult) float64 { return x.observed.pipeRate() / x.plain.pipeRate() })
	ratio := median(ratios)
	rows := []row{
		{"8. Web console", "pipeline without the console", thousands(median(plain)) + " jobs/s", "", "", "", joinRuns(plain, thousands), c.command("console")},
		{"", "pipeline with the console open (sampling every 2 s, a page streaming the overview and listing jobs every 2 s)",
			thousands(median(observed)) + " jobs/s", "with/without " + f2(ratio), "≥ 0.95", passMiss(ratio >= 0.95), joinRuns(ratios, f2), c.command("console")},
	}
	for _, q := range consoleQueries {
		var all []float64
		var p99s []float64
		for _, x := range r.console {
			all = append(all, x.pageMs[q.name]...)
			xs := slices.Clone(x.pageMs[q.name])
			slices.Sort(xs)
			p99s = append(p99s, xs[len(xs)*99/100])
		}
		med := median(all)
		rows = append(rows, row{"", fmt.Sprintf("jobs page on %s rows: %s", thousands(float64(r.console[0].rows)), q.name),
			fmt.Sprintf("%.1f ms (p99 %.1f ms)", med, median(p99s)), "", "< 200 ms", passMiss(slices.Max(p99s) < 200), joinRuns(p99s, f1), c.command("console")})
	}
	return rows
}
