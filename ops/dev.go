package ops

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/consumers"
	adm "github.com/jobstream/jobstream/ops/admin"
	"github.com/jobstream/jobstream/ops/demo"
	"github.com/jobstream/jobstream/ops/devstack"
	"github.com/jobstream/jobstream/ops/localpg"
	"github.com/jobstream/jobstream/schema"
	"github.com/jobstream/jobstream/schema/kafkaconn"
)

type devConfig struct {
	dir         string
	jobs        int
	concurrency int
	timeout     time.Duration
	pipeline    string
	keep        bool
	ui          string
}

func runDev(ctx context.Context, args []string, out io.Writer) error {
	var cfg devConfig
	f := newFlags("dev", "dev [flags]\n\nRuns the whole pipeline locally: a throwaway Postgres (from this machine's binaries), the embedded\nbroker, the reader and one worker per step with demo handlers; inserts a batch of jobs at (img_gen, done),\nshows them move, prints a summary and exits 0 once every job is done. Each run starts clean.\n\n"+
		"With --keep, Postgres, the broker and the reader stay up after the demo (the demo workers stop) and the\n"+
		"exports to reach them are printed, so you can run your own step against a ready stack.\n"+
		"Ctrl-C stops every part in order and exits 0, at any moment.")
	f.str(&cfg.dir, "dir", "JOBSTREAM_DEV_DIR", ".jobstream", "folder for Postgres data, broker data, logs and PNGs (wiped at start)")
	f.num(&cfg.jobs, "jobs", "JOBSTREAM_DEV_JOBS", 200, "demo jobs to insert")
	f.num(&cfg.concurrency, "concurrency", "JOBSTREAM_DEV_MEMBERS", 2, "group members per step")
	f.dur(&cfg.timeout, "timeout", "JOBSTREAM_DEV_TIMEOUT", 5*time.Minute, "give up if the batch is not done by then")
	f.str(&cfg.pipeline, "pipeline", "JOBSTREAM_PIPELINE", "", "pipeline config file (default img_gen,vlm_analyze,yolo_detect,planner,overlay)")
	f.boolean(&cfg.keep, "keep", "JOBSTREAM_DEV_KEEP", false, "after the demo, keep Postgres, the broker and the reader running and print their exports, until Ctrl-C")
	f.str(&cfg.ui, "ui", "JOBSTREAM_DEV_UI", UIListenDefault, "serve the web console here (a free loopback port if it is taken; \"off\": none)")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := inRange(rangeCheck{"jobs", cfg.jobs, 1, 1_000_000}, rangeCheck{"concurrency", cfg.concurrency, 1, 64}); err != nil {
		return err
	}
	p, err := schema.LoadPipeline(cfg.pipeline)
	if err != nil {
		return usageError{err.Error()}
	}
	err = dev(ctx, cfg, p, out)
	if ctx.Err() != nil {
		// An interrupt is a clean stop whenever it comes (exit 0): every
		// part started so far has been stopped by dev's defers.
		fmt.Fprintln(out, "\nstopped; every part shut down cleanly. Run again to start over.")
		return nil
	}
	var unreachable *localpg.UnreachableError
	if errors.As(err, &unreachable) {
		return fmt.Errorf("%w; for example jobstream dev --dir /var/tmp/jobstream", err)
	}
	return err
}

func dev(ctx context.Context, cfg devConfig, p schema.Pipeline, out io.Writer) error {
	dir, err := filepath.Abs(cfg.dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "jobstream dev: %s\n", p)
	fmt.Fprintf(out, "  starting Postgres (wal_level=logical) in %s ...\n", filepath.Join(cfg.dir, "pg"))
	// Each run starts clean: Start wipes dir (stopping a server a killed
	// run left in it) before it starts Postgres and the broker there.
	st, err := devstack.Start(ctx, devstack.Config{Dir: dir, Migrate: true})
	if err != nil {
		return err
	}
	defer st.Stop()
	d := &devRun{cfg: cfg, p: p, st: st, outDir: filepath.Join(dir, "out"), out: out}
	if err := os.MkdirAll(d.outDir, 0o755); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(dir, "jobstream.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	d.log = slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	fmt.Fprintf(out, "  Postgres  %s\n  broker    %s\n  logs      %s\n", st.DatabaseURL, st.Brokers[0], filepath.Join(cfg.dir, "jobstream.log"))
	fmt.Fprintf(out, "  migrate   %s\n", strings.Join(st.Migrated, "; "))
	return d.run(ctx)
}

// devRun is one run of the dev demo on a started stack.
type devRun struct {
	cfg    devConfig
	p      schema.Pipeline
	st     *devstack.Stack
	log    *slog.Logger
	outDir string // the overlay PNGs
	out    io.Writer
}

// run runs the reader until the demo is over (with --keep, until Ctrl-C).
// The reader runs under g, the demo workers under a group of their own
// inside it, so that --keep can stop the workers and leave the reader running.
func (d *devRun) run(ctx context.Context) error {
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	g, gctx := errgroup.WithContext(runCtx)
	reader, err := cdc.New(cdc.Config{DatabaseURL: d.st.DatabaseURL, Brokers: d.st.Brokers, Pipeline: d.p, Logger: d.log.With("part", "reader")})
	if err != nil {
		return err
	}
	g.Go(func() error { return reader.Run(gctx) })
	select {
	case <-reader.Ready():
	case <-gctx.Done():
		stop()
		return cmp.Or(g.Wait(), ctx.Err())
	}
	if err := d.startConsole(gctx, g); err != nil {
		stop()
		g.Wait()
		return err
	}
	err = d.work(ctx, gctx, reader.Stats())
	if err == nil && d.cfg.keep {
		printKeep(d.out, d.st.DatabaseURL, d.st.Brokers[0], d.cfg.pipeline, d.p)
		<-gctx.Done() // Ctrl-C, or the reader failed
	}
	stop()
	if rerr := g.Wait(); rerr != nil && err == nil {
		err = rerr
	}
	return err
}

// startConsole serves the web console under g (unless --ui off) and
// prints its URL and the token its actions need.
func (d *devRun) startConsole(ctx context.Context, g *errgroup.Group) error {
	if d.cfg.ui == "off" || d.cfg.ui == "" {
		return nil
	}
	pool, err := pgxpool.New(ctx, d.st.DatabaseURL)
	if err != nil {
		return err
	}
	context.AfterFunc(ctx, pool.Close)
	k := adm.NewKafka(kafkaconn.Broker{Addrs: d.st.Brokers})
	url, token, err := devConsole(ctx, g, pool, adm.Deployment{Pipeline: d.p}, k, d.outDir, d.cfg.ui, d.log.With("part", "console"))
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "  console   %s (action token %s)\n", url, token)
	return nil
}

// work runs one worker per step, inserts the demo jobs, shows them move
// until every one is done (or failed, or the timeout), stops the workers
// and prints the summary. The workers stop when gctx ends.
func (d *devRun) work(ctx, gctx context.Context, rs *cdc.Stats) (err error) {
	workCtx, stopWorkers := context.WithCancel(gctx)
	wg, wctx := errgroup.WithContext(workCtx)
	defer func() { stopWorkers(); wg.Wait() }() // on an early return: stop what started
	if err := d.startWorkers(wctx, wg); err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, d.st.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	start := time.Now()
	if err := demo.InsertJobs(ctx, pool, d.p.Steps[0], d.cfg.jobs); err != nil {
		return err
	}
	fmt.Fprintf(d.out, "  inserted  %d jobs at (%s, done)\n\n", d.cfg.jobs, d.p.Steps[0])

	progErr := make(chan error, 1)
	go func() {
		progErr <- watchProgress(wctx, pool, newAdmin(kafkaconn.Broker{Addrs: d.st.Brokers}), rs, d.p, d.cfg.jobs, d.cfg.timeout, d.out)
	}()
	select {
	case err = <-progErr:
	case <-wctx.Done():
		err = wg.Wait()
		if err == nil {
			err = cmp.Or(gctx.Err(), ctx.Err())
		}
	}
	elapsed := time.Since(start)
	stopWorkers()
	if werr := wg.Wait(); werr != nil && err == nil {
		err = werr
	}
	if err == nil {
		err = printSummary(ctx, pool, d.p, d.cfg.jobs, elapsed, rs, d.outDir, d.out)
	}
	return err
}

// startWorkers starts one group of cfg.concurrency members per step after
// the first, with the demo handlers, under wg.
//
// A step whose worker settings in the pipeline file name an executor runs
// it with those settings; the others run the demo handlers.
func (d *devRun) startWorkers(wctx context.Context, wg *errgroup.Group) error {
	handlers := demo.Handlers(d.outDir)
	for _, step := range d.p.Steps[1:] {
		cfg := consumers.Config{
			DatabaseURL: d.st.DatabaseURL, Brokers: d.st.Brokers, Step: step, Pipeline: d.p,
			Concurrency: d.cfg.concurrency, Handler: handlers(step), Lease: 10 * time.Second, Grace: 5 * time.Second,
			Logger: d.log.With("part", "worker"),
		}
		if ws := d.p.Workers[step]; len(ws.Command) > 0 || len(ws.Serve) > 0 || ws.HTTP != "" {
			var gpus string
			applySettings(&cfg, &gpus, ws, func(string) bool { return false })
			cfg.GPUs = ws.GPUs
			cfg.Handler = nil
			setExecutor(&cfg, slices.Concat(ws.Command, ws.Serve), ws.HTTP, len(ws.Serve) > 0)
		}
		w, err := consumers.New(cfg)
		if err != nil {
			return fmt.Errorf("worker of %s: %w", step, err)
		}
		wg.Go(func() error { return w.Run(wctx) })
	}
	return nil
}

// printKeep tells how to reach the stack that --keep leaves running.
func printKeep(out io.Writer, url, brokers, pipelineFile string, p schema.Pipeline) {
	fmt.Fprintf(out, "\n--keep: Postgres, the broker and the reader keep running; the demo workers have stopped.\n")
	fmt.Fprintf(out, "In another terminal, from the repository root:\n\n")
	fmt.Fprintf(out, "  export DATABASE_URL='%s'\n  export KAFKA_BROKERS='%s'\n", url, brokers)
	if pipelineFile != "" {
		abs, _ := filepath.Abs(pipelineFile)
		fmt.Fprintf(out, "  export JOBSTREAM_PIPELINE='%s'\n", abs)
	}
	fmt.Fprintf(out, "  bin/jobstream worker --step %s -- ops/steps/echo.sh\n", p.Steps[1])
	fmt.Fprintf(out, "  psql \"$DATABASE_URL\" -c \"INSERT INTO jobs (job_id, current_step, status) VALUES ('mine-1', '%s', 'done')\"\n", p.Steps[0])
	fmt.Fprintf(out, "  bin/jobstream status\n\nCtrl-C here stops everything.\n")
}

// watchProgress shows the live view until every job is done at the last
// step or has failed: on a terminal it redraws in place (jobs per step and
// status, throughput, latency, lag); otherwise it prints a line every 2s.
func watchProgress(ctx context.Context, pool *pgxpool.Pool, a *admin, rs *cdc.Stats, p schema.Pipeline, total int, timeout time.Duration, out io.Writer) error {
	tty := isTerminal(out)
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	start := time.Now()
	deadline := start.Add(timeout)
	var lastPrint time.Time
	var recent []*statusReport // the samples of the last liveRateWindow, for RATE
	drawn := 0
	for {
		rep, err := collectStatus(ctx, pool, a, p, schema.DefaultTopicPrefix, "jobstream")
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		finished, failed := 0, 0
		for _, j := range rep.Jobs {
			switch {
			case j.Step == p.Last() && j.Status == "done":
				finished += int(j.Count)
			case j.Status == "failed":
				failed += int(j.Count)
			}
		}
		over := finished+failed >= total
		recent = append(recent, rep)
		for len(recent) > 2 && rep.At.Sub(recent[1].At) >= liveRateWindow {
			recent = recent[1:]
		}
		if tty {
			var b strings.Builder
			renderLive(&b, rep, recent[0], rs, finished, failed, total, over, time.Since(start))
			if drawn > 0 {
				fmt.Fprintf(out, "\033[%dA\033[J", drawn)
			}
			fmt.Fprint(out, b.String())
			drawn = strings.Count(b.String(), "\n")
		} else if time.Since(lastPrint) >= 2*time.Second || over {
			var parts []string
			for _, st := range rep.Steps {
				parts = append(parts, fmt.Sprintf("%s %d", st.Step, st.Done))
			}
			fmt.Fprintf(out, "  %d/%d done │ %s │ %.0f jobs/s\n", finished, total, strings.Join(parts, " │ "), float64(finished)/time.Since(start).Seconds())
			lastPrint = time.Now()
		}
		switch {
		case failed > 0 && over:
			return fmt.Errorf("%d of %d jobs failed; see the error column of jobs and jobstream.log", failed, total)
		case over:
			return nil
		case time.Now().After(deadline):
			return fmt.Errorf("only %d of %d jobs finished within %s; see jobstream.log", finished, total, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// liveRateWindow is how far back the live view's RATE looks: a step that
// stops completing runs shows 0 within it.
const liveRateWindow = 2 * time.Second

// renderLive draws the dev view: one row per step with its group, lag,
// completions, rate and latency, then the reader's numbers. RATE is the
// runs done since base (the oldest sample within liveRateWindow); once the
// batch is over nothing moves and it is 0.
func renderLive(w io.Writer, rep, base *statusReport, rs *cdc.Stats, finished, failed, total int, over bool, elapsed time.Duration) {
	fmt.Fprintf(w, "  %d/%d jobs done", finished, total)
	if failed > 0 {
		fmt.Fprintf(w, ", %d failed", failed)
	}
	fmt.Fprintf(w, " in %.1fs (%.0f jobs/s)\n\n", elapsed.Seconds(), float64(finished)/elapsed.Seconds())
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  STEP\tMEMBERS\tLAG\tRUNNING\tDONE\tRATE\tCOMMIT→CLAIM p50 / p99")
	for i, st := range rep.Steps {
		rate, lat := rateAndLatency(rep, base, i)
		if over {
			rate = "0/s"
		}
		fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t%d\t%s\t%s\n", st.Step, len(st.Members), st.Lag, st.Running, st.Done, rate, lat)
	}
	tw.Flush()
	fmt.Fprintf(w, "\n  LAG: change events in the step's trigger topic not yet committed by its group (events, not jobs:\n  a job makes several). DONE: runs done. RATE: runs done per second over the last %s.\n", liveRateWindow)
	fmt.Fprintf(w, "\n  reader: %d events, %d dead letters, slot retains %s of WAL\n", rs.Events.Load(), rs.DeadLetters.Load(), bytesIEC(rep.Slot.RetainedBytes))
}

func printSummary(ctx context.Context, pool *pgxpool.Pool, p schema.Pipeline, total int, elapsed time.Duration, rs *cdc.Stats, outDir string, out io.Writer) error {
	fmt.Fprintf(out, "\nall %d jobs reached (%s, done) in %.1fs (%.0f jobs/s through %d steps)\n", total, p.Last(), elapsed.Seconds(), float64(total)/elapsed.Seconds(), len(p.Steps)-1)
	rows, err := pool.Query(ctx, `SELECT step, count(*) FILTER (WHERE outcome = 'done'), count(*) FILTER (WHERE attempt > 1),
		percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - trigger_commit_at) * 1000),
		percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - trigger_commit_at) * 1000)
		FROM jobstream_runs GROUP BY step`)
	if err != nil {
		return err
	}
	type stepRow struct {
		done, retried int
		p50, p99      float64
	}
	byStep := map[string]stepRow{}
	var s string
	var r stepRow
	if _, err := pgx.ForEachRow(rows, []any{&s, &r.done, &r.retried, &r.p50, &r.p99}, func() error { byStep[s] = r; return nil }); err != nil {
		return err
	}
	fmt.Fprintf(out, "\n  %-14s %6s %8s %22s\n", "step", "done", "retried", "commit→claim p50 / p99")
	for _, st := range p.Steps[1:] {
		r := byStep[st]
		fmt.Fprintf(out, "  %-14s %6d %8d %12.1f ms / %.1f ms\n", st, r.done, r.retried, r.p50, r.p99)
	}
	var p50, p99 float64
	if err := pool.QueryRow(ctx, `SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x), percentile_cont(0.99) WITHIN GROUP (ORDER BY x)
		FROM (SELECT extract(epoch FROM started_at - trigger_commit_at) * 1000 AS x FROM jobstream_runs) t`).Scan(&p50, &p99); err != nil {
		return err
	}
	fmt.Fprintf(out, "  %-14s %6s %8s %12.1f ms / %.1f ms\n", "all steps", "", "", p50, p99)
	fmt.Fprintf(out, "\n  reader: %d events produced, %d dead letters\n", rs.Events.Load(), rs.DeadLetters.Load())
	if pngs, _ := filepath.Glob(filepath.Join(outDir, "*.png")); len(pngs) > 0 {
		fmt.Fprintf(out, "  overlay PNGs (boxes drawn around the detected shapes): %s/\n", outDir)
	}
	return nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
