package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
	brokerHWM uint64  // peak RSS of the broker process
	// WAL the slot holds at the end (current LSN - restart_lsn, and -
	// confirmed_flush_lsn), and the sizes of jobstream_runs and jobs.
	walRestart, walConfirmed, runsBytes, jobsBytes int64
	pipeCPU                                        cpuSnap // CPU used by each part while the batch went through
	dbCPU                                          cpuSnap // CPU used by the database-only loop
}

func (r pipelineResult) pipeRate() float64 { return float64(r.completed) / r.pipeSecs }
func (r pipelineResult) dbRate() float64   { return float64(r.jobs) / r.dbSecs }

func benchPipeline(ctx context.Context, e *env, run int) (res pipelineResult, err error) {
	res.jobs = e.cfg.PipelineJobs
	res.members = e.cfg.PipelineMembers
	res.conns = res.members * (len(schema.DefaultSteps) - 1)
	if err := pipelineJobstream(ctx, e, fmt.Sprintf("pipeline_%d", run), &res, false, nil); err != nil {
		return res, err
	}
	e.logf("  jobstream: %d of %d jobs through 4 steps in %.1fs (%d stranded)", res.completed, res.jobs, res.pipeSecs, res.stranded)
	if err := pipelineDatabase(ctx, e, run, &res); err != nil {
		return res, fmt.Errorf("database-only loop: %w", err)
	}
	return res, nil
}

// deployment is jobstream as deployed on a database of its own: a broker
// process, a `jobstream reader` process and one worker process per step
// (this program in its worker role, with a no-op Go handler).
type deployment struct {
	e       *env
	tag     string
	db      *database
	pool    *pgxpool.Pool
	b       *broker
	reader  *proc
	workers []*proc // one per step, in the pipeline's order
	specs   []workerSpec
	closers []func()
}

// deploy starts jobstream on a fresh database called bench_<tag>. With
// noWorkers, the workers wait for startWorkers (a backlog is inserted
// first) and the broker keeps its data on disk.
func deploy(ctx context.Context, e *env, tag string, members int, noWorkers bool) (_ *deployment, err error) {
	d := &deployment{e: e, tag: tag}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	db, pool, drop, err := e.openDB(ctx, "bench_"+tag, 0)
	if err != nil {
		return nil, err
	}
	d.db, d.pool, d.closers = db, pool, append(d.closers, drop)
	// A backlog's events wait in the broker: on disk, as a deployed
	// broker keeps them (in memory a million jobs' events take ~25 GB).
	brokerDir := ""
	if noWorkers {
		brokerDir = filepath.Join(e.dir, "broker-"+tag)
	}
	if d.b, err = e.startBrokerIn(ctx, "broker-"+tag, brokerDir); err != nil {
		return nil, err
	}
	d.closers = append(d.closers, d.b.stop)
	prefix := strings.ReplaceAll(tag, "_", "")
	if d.reader, err = e.startReader(ctx, "reader-"+tag, db, d.b.addr, "bench", prefix); err != nil {
		return nil, err
	}
	d.closers = append(d.closers, d.reader.stop)
	for _, step := range schema.DefaultSteps[1:] {
		d.specs = append(d.specs, workerSpec{DatabaseURL: db.url, Brokers: []string{d.b.addr}, Step: step, Prefix: prefix,
			Members: members, CPUProfile: e.profilePath(fmt.Sprintf("worker-%s-%s", step, tag))})
	}
	d.workers = make([]*proc, len(d.specs))
	if !noWorkers {
		err = d.startWorkers()
	}
	return d, err
}

// startWorkers starts the worker processes not running.
func (d *deployment) startWorkers() error {
	for i := range d.specs {
		if err := d.startWorker(i); err != nil {
			return err
		}
	}
	return nil
}

// startWorker starts the worker process of step i (0 is vlm_analyze) unless it runs.
func (d *deployment) startWorker(i int) error {
	if d.workers[i] != nil {
		return nil
	}
	spec, _ := json.Marshal(d.specs[i])
	cmd := exec.Command(d.e.self)
	cmd.Env = append(os.Environ(), childEnv+"="+string(spec))
	p, err := d.e.startProc(fmt.Sprintf("worker-%s-%s", d.specs[i].Step, d.tag), cmd)
	if err != nil {
		return err
	}
	d.workers[i] = p
	return nil
}

// stopWorker stops the worker process of step i.
func (d *deployment) stopWorker(i int) {
	if d.workers[i] != nil {
		d.workers[i].stop()
		d.workers[i] = nil
	}
}

// procs returns the running processes.
func (d *deployment) procs() []*proc {
	ps := []*proc{d.b.proc, d.reader}
	for _, w := range d.workers {
		if w != nil {
			ps = append(ps, w)
		}
	}
	return ps
}

// groups returns the processes by part, for CPU accounting.
func (d *deployment) groups() map[string][]*proc {
	return map[string][]*proc{"reader": {d.reader}, "broker": {d.b.proc}, "workers": slices.DeleteFunc(slices.Clone(d.workers), func(p *proc) bool { return p == nil })}
}

func (d *deployment) close() {
	for i := range d.workers {
		d.stopWorker(i)
	}
	for _, c := range slices.Backward(d.closers) {
		c()
	}
}

// pipelineJobstream runs the whole system as deployed and times a batch of
// jobs inserted at (img_gen, done) until each is at (overlay, done).
//
// observe, when not nil, is started before the batch with the deployment's
// database, broker and topic prefix, and stopped after it (the console
// scenario opens the web console on the pipeline this way). With backlog,
// the jobs are inserted before the workers start, and timed from their start.
func pipelineJobstream(ctx context.Context, e *env, tag string, res *pipelineResult, backlog bool, observe func(ctx context.Context, dbURL, broker, prefix string) (stop func(), err error)) error {
	d, err := deploy(ctx, e, tag, res.members, backlog)
	if err != nil {
		return err
	}
	defer d.close()
	pool := d.pool
	var t0 time.Time
	if backlog {
		if err := insertBacklog(ctx, e, pool, res.jobs); err != nil {
			return err
		}
	} else {
		// Warm-up: connections, groups and topics are set up before timing. A
		// warm-up job stranded on the way is counted like any other below.
		if err := copyJobs(ctx, pool, jobIDs("warm", warmup), "img_gen", "done"); err != nil {
			return err
		}
		if _, err := waitPipeline(ctx, pool, "warm-%", warmup, d.procs(), max(e.cfg.Catchup, 5*time.Second), nil); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
		if observe != nil {
			stop, err := observe(ctx, d.db.url, d.b.addr, strings.ReplaceAll(tag, "_", ""))
			if err != nil {
				return err
			}
			defer stop()
		}
	}
	cpu0 := e.cpuNow(d.groups())
	if backlog {
		t0 = time.Now()
		if err := d.startWorkers(); err != nil {
			return err
		}
	} else {
		t0 = time.Now()
		if err := copyJobs(ctx, pool, jobIDs("job", res.jobs), "img_gen", "done"); err != nil {
			return err
		}
	}
	var progress func(done int)
	if res.jobs >= 100_000 { // minutes: say how far it is
		progress = func(done int) {
			e.logf("    %s of %s jobs done after %.0fs (%.0f jobs/s so far)", thousands(float64(done)), thousands(float64(res.jobs)),
				time.Since(t0).Seconds(), float64(done)/time.Since(t0).Seconds())
		}
	}
	w, err := waitPipeline(ctx, pool, "job-%", res.jobs, d.procs(), e.cfg.Catchup, progress)
	if err != nil {
		return err
	}
	res.pipeCPU = e.cpuNow(d.groups()).sub(cpu0)
	res.completed, res.stranded = w.done, res.jobs-w.done
	res.pipeSecs = w.last.Sub(t0).Seconds()
	if res.stranded > 0 {
		rows, _ := pool.Query(ctx, `SELECT current_step || ',' || status, count(*) FROM jobs WHERE job_id LIKE 'job-%' AND NOT (current_step = $1 AND status = 'done') GROUP BY 1`,
			schema.DefaultSteps[len(schema.DefaultSteps)-1])
		var states []string
		var state string
		var count int
		_, _ = pgx.ForEachRow(rows, []any{&state, &count}, func() error { states = append(states, fmt.Sprintf("%s=%d", state, count)); return nil })
		e.log.Warn("jobs stranded in the pipeline", "tag", tag, "stranded", res.stranded, "states", states)
	}
	for _, w := range d.workers {
		if hwm, err := w.peakRSS(); err == nil {
			res.workerHWM = max(res.workerHWM, hwm)
		}
	}
	res.readerHWM, _ = d.reader.peakRSS()
	res.brokerHWM, _ = d.b.peakRSS()
	err = pool.QueryRow(ctx, `SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint,
			coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint,
			pg_total_relation_size('jobstream_runs'), pg_total_relation_size('jobs')
		FROM pg_replication_slots WHERE slot_name = 'bench'`).Scan(&res.walRestart, &res.walConfirmed, &res.runsBytes, &res.jobsBytes)
	if err != nil {
		return fmt.Errorf("slot and table sizes: %w", err)
	}
	return nil
}

// insertBacklog inserts n jobs job-1 … job-n at (img_gen, done) in the
// server, 100,000 a transaction.
func insertBacklog(ctx context.Context, e *env, pool *pgxpool.Pool, n int) error {
	t0 := time.Now()
	for from := 1; from <= n; from += 100_000 {
		if _, err := pool.Exec(ctx, bulkInsertRangeSQL(from, min(from+100_000-1, n), "job-")); err != nil {
			return fmt.Errorf("backlog: %w", err)
		}
	}
	e.logf("  a backlog of %s jobs inserted in %.0fs", thousands(float64(n)), time.Since(t0).Seconds())
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
// It polls once a second per 100,000 jobs (at most every 10 s): each poll
// scans the jobs table, with parallel workers once it is large, so polling
// a million jobs every second took a third of the machine from the
// pipeline it measured. The end is read from the rows (w.last), so a slow
// poll costs no precision. It hands progress (if not nil) the jobs done so
// far once a minute.
func waitPipeline(ctx context.Context, pool *pgxpool.Pool, like string, n int, procs []*proc, stall time.Duration, progress func(done int)) (waited, error) {
	lastStep := schema.DefaultSteps[len(schema.DefaultSteps)-1]
	var w waited
	var moved time.Time
	var lastUpdate time.Time
	reported := time.Now()
	every := time.Duration(min(max(n/100_000, 1), 10)) * time.Second
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
		if progress != nil && now.Sub(reported) >= time.Minute {
			progress(w.done)
			reported = now
		}
		for _, p := range procs {
			if err := p.exited(); err != nil {
				return w, err
			}
		}
		select {
		case <-ctx.Done():
			return w, ctx.Err()
		case <-time.After(every):
		}
	}
}

// pipelineDatabase walks the same number of jobs through the four steps
// with the step protocol's SQL only: as many connections as the pipeline
// has group members, each claiming and completing one job after another.
func pipelineDatabase(ctx context.Context, e *env, run int, res *pipelineResult) error {
	_, pool, drop, err := e.openDB(ctx, fmt.Sprintf("bench_dblimit_%d", run), res.conns)
	if err != nil {
		return err
	}
	defer drop()
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
