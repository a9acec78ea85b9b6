package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/schema"
)

// pipelineResult is one run of scenario 4.
type pipelineResult struct {
	jobs      int
	members   int     // group members per step
	conns     int     // connections of the database-only loop
	completed int     // jobs that reached (overlay, done)
	stranded  int     // jobs left at a (step, done) no worker claimed
	pipeSecs  float64 // jobstream: insert → the last job at (overlay, done)
	dbSecs    float64 // the same SQL in a tight loop
	workerHWM uint64  // largest peak RSS of the four worker processes
	readerHWM uint64  // peak RSS of the reader process
	pipeCPU   cpuSnap // CPU used by each part while the batch went through
	dbCPU     cpuSnap // CPU used by the database-only loop
}

func (r pipelineResult) pipeRate() float64 { return float64(r.completed) / r.pipeSecs }
func (r pipelineResult) dbRate() float64   { return float64(r.jobs) / r.dbSecs }

func benchPipeline(ctx context.Context, e *env, run int) (res pipelineResult, err error) {
	res.jobs = e.cfg.PipelineJobs
	res.members = e.cfg.PipelineMembers
	res.conns = res.members * (len(schema.DefaultSteps) - 1)
	if err := pipelineJobstream(ctx, e, run, &res, nil); err != nil {
		return res, err
	}
	e.logf("  jobstream: %d of %d jobs through 4 steps in %.1fs (%d stranded)", res.completed, res.jobs, res.pipeSecs, res.stranded)
	if err := pipelineDatabase(ctx, e, run, &res); err != nil {
		return res, fmt.Errorf("database-only loop: %w", err)
	}
	return res, nil
}

// pipelineJobstream runs the whole system as deployed: a broker process, a
// `jobstream reader` process and one worker process per step (this program
// in its worker role, with a no-op Go handler), and times a batch of jobs
// inserted at (img_gen, done) until each is at (overlay, done).
//
// observe, when not nil, is started before the batch with the deployment's
// database, broker and topic prefix, and stopped after it (the console
// scenario opens the web console on the pipeline this way).
func pipelineJobstream(ctx context.Context, e *env, run int, res *pipelineResult, observe func(ctx context.Context, dbURL, broker, prefix string) (stop func(), err error)) error {
	tag := fmt.Sprintf("pipeline_%d", run)
	if observe != nil {
		tag = fmt.Sprintf("observed_%d", run)
	}
	db, err := e.newDB(ctx, "bench_"+tag)
	if err != nil {
		return err
	}
	defer db.drop()
	b, err := e.startBroker(ctx, "broker-"+tag)
	if err != nil {
		return err
	}
	defer b.stop()
	prefix := strings.ReplaceAll(tag, "_", "")
	reader, err := e.startReader(ctx, "reader-"+tag, db, b.addr, "bench", prefix)
	if err != nil {
		return err
	}
	defer reader.stop()
	procs := []*proc{reader, b.proc}
	var workers []*proc
	for _, step := range schema.DefaultSteps[1:] {
		spec, _ := json.Marshal(workerSpec{DatabaseURL: db.url, Brokers: []string{b.addr}, Step: step, Prefix: prefix,
			Members: res.members, CPUProfile: e.profilePath(fmt.Sprintf("worker-%s-run%d", step, run))})
		cmd := exec.Command(e.self)
		cmd.Env = append(os.Environ(), childEnv+"="+string(spec))
		p, err := e.startProc(fmt.Sprintf("worker-%s-%s", step, tag), cmd)
		if err != nil {
			return err
		}
		defer p.stop()
		workers = append(workers, p)
	}
	procs = append(procs, workers...)
	pool, err := pgxpool.New(ctx, db.url)
	if err != nil {
		return err
	}
	defer pool.Close()

	// Warm-up: connections, groups and topics are set up before timing. A
	// warm-up job stranded on the way is counted like any other below.
	if err := copyJobs(ctx, pool, jobIDs("warm", warmup), "img_gen", "done"); err != nil {
		return err
	}
	if _, err := waitPipeline(ctx, pool, "warm-%", warmup, procs, max(e.cfg.Catchup, 5*time.Second)); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	if observe != nil {
		stop, err := observe(ctx, db.url, b.addr, prefix)
		if err != nil {
			return err
		}
		defer stop()
	}
	groups := map[string][]*proc{"reader": {reader}, "broker": {b.proc}, "workers": workers}
	cpu0 := e.cpuNow(groups)
	t0 := time.Now()
	if err := copyJobs(ctx, pool, jobIDs("job", res.jobs), "img_gen", "done"); err != nil {
		return err
	}
	w, err := waitPipeline(ctx, pool, "job-%", res.jobs, procs, e.cfg.Catchup)
	if err != nil {
		return err
	}
	res.pipeCPU = e.cpuNow(groups).sub(cpu0)
	res.completed, res.stranded = w.done, res.jobs-w.done
	res.pipeSecs = w.last.Sub(t0).Seconds()
	if res.stranded > 0 {
		rows, _ := pool.Query(ctx, `SELECT current_step || ',' || status, count(*) FROM jobs WHERE job_id LIKE 'job-%' AND NOT (current_step = $1 AND status = 'done') GROUP BY 1`,
			schema.DefaultSteps[len(schema.DefaultSteps)-1])
		var states []string
		var state string
		var count int
		_, _ = pgx.ForEachRow(rows, []any{&state, &count}, func() error { states = append(states, fmt.Sprintf("%s=%d", state, count)); return nil })
		e.log.Warn("jobs stranded in the pipeline", "run", run, "stranded", res.stranded, "states", states)
	}
	for _, w := range workers {
		if hwm, err := w.peakRSS(); err == nil {
			res.workerHWM = max(res.workerHWM, hwm)
		}
	}
	if hwm, err := reader.peakRSS(); err == nil {
		res.readerHWM = hwm
	}
	return nil
}

// waited is how far a batch got.
type waited struct {
	done int       // jobs at (last step, done)
	last time.Time // when the last of them got there (its completing transaction began)
}

// waitPipeline waits until n jobs matching like are at the last step, done,
// or until no job has moved for stall: the rest are stranded (a transition
// nobody acted on). A job that failed or a process that died is an error.
// It polls four times a second, a light load beside the pipeline's.
func waitPipeline(ctx context.Context, pool *pgxpool.Pool, like string, n int, procs []*proc, stall time.Duration) (waited, error) {
	lastStep := schema.DefaultSteps[len(schema.DefaultSteps)-1]
	var w waited
	var moved time.Time
	var lastUpdate time.Time
	for {
		var failed int
		var updated, lastDone *time.Time
		err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE current_step = $2 AND status = 'done'), count(*) FILTER (WHERE status = 'failed'),
				max(updated_at), max(updated_at) FILTER (WHERE current_step = $2 AND status = 'done')
			FROM jobs WHERE job_id LIKE $1`, like, lastStep).Scan(&w.done, &failed, &updated, &lastDone)
		now := time.Now()
		switch {
		case err != nil:
			return w, err
		case failed > 0:
			return w, fmt.Errorf("%d jobs failed", failed)
		}
		if lastDone != nil {
			w.last = *lastDone
		}
		if moved.IsZero() || updated != nil && !updated.Equal(lastUpdate) {
			moved = now
			if updated != nil {
				lastUpdate = *updated
			}
		}
		if w.done >= n || now.Sub(moved) > stall {
			return w, nil
		}
		for _, p := range procs {
			if err := p.exited(); err != nil {
				return w, err
			}
		}
		select {
		case <-ctx.Done():
			return w, ctx.Err()
		case <-time.After(time.Second):
			// The end is read from the rows (w.last), so a slow poll costs
			// no precision; it scans the jobs table, which is CPU the
			// pipeline would otherwise have.
		}
	}
}

// pipelineDatabase walks the same number of jobs through the four steps
// with the step protocol's SQL only: as many connections as the pipeline
// has group members, each claiming and completing one job after another.
func pipelineDatabase(ctx context.Context, e *env, run int, res *pipelineResult) error {
	db, err := e.newDB(ctx, fmt.Sprintf("bench_dblimit_%d", run))
	if err != nil {
		return err
	}
	defer db.drop()
	pcfg, err := pgxpool.ParseConfig(db.url)
	if err != nil {
		return err
	}
	pcfg.MaxConns = int32(res.conns)
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	ids := jobIDs("job", res.jobs)
	if err := copyJobs(ctx, pool, ids, "img_gen", "done"); err != nil {
		return err
	}
	// Open the connections before timing.
	var conns []*pgxpool.Conn
	for range res.conns {
		c, err := pool.Acquire(ctx)
		if err != nil {
			return err
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		c.Release()
	}
	next := make(chan string)
	g, gctx := errgroup.WithContext(ctx)
	var mu sync.Mutex
	done := 0
	cpu0 := e.cpuNow(nil)
	t0 := time.Now()
	for w := range res.conns {
		g.Go(func() error {
			worker := fmt.Sprintf("bench:%d/%d", os.Getpid(), w)
			for id := range next {
				for i, step := range schema.DefaultSteps[1:] {
					if err := claimComplete(gctx, pool, id, step, schema.DefaultSteps[i], worker); err != nil {
						return err
					}
				}
				mu.Lock()
				done++
				mu.Unlock()
			}
			return nil
		})
	}
	g.Go(func() error {
		defer close(next)
		for _, id := range ids {
			select {
			case next <- id:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return err
	}
	res.dbSecs = time.Since(t0).Seconds()
	res.dbCPU = e.cpuNow(nil).sub(cpu0)
	if done != res.jobs {
		return fmt.Errorf("%d of %d jobs walked through", done, res.jobs)
	}
	return nil
}

// claimComplete claims job id for step (triggered by trigger) and
// completes it with a no-op result, with the workers' own statements.
func claimComplete(ctx context.Context, pool *pgxpool.Pool, id, step, trigger, worker string) error {
	if err := consumers.ClaimAndComplete(ctx, pool, id, step, trigger, worker, json.RawMessage(`{"ok":true}`)); err != nil {
		return fmt.Errorf("%s for %s: %w", id, step, err)
	}
	return nil
}
