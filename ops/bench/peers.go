package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jobstream/jobstream/schema"
)

// Systems of scenario 9, the pipeline peers: each moves the jobs through
// the four steps as a team would deploy it.
const (
	peerJobstream = "jobstream"
	peerRiver     = "river"
	peerListen    = "listen"
	peerPoll      = "poll"
	peerDatabase  = "database"
)

var (
	peerSystems = []string{peerJobstream, peerRiver, peerListen, peerPoll, peerDatabase}
	peerNames   = map[string]string{
		peerJobstream: "jobstream: reader + a worker process per step",
		peerRiver:     "River " + riverVersion + ": one client, a worker kind that completes its job and inserts the next step's in one transaction",
		peerListen:    "LISTEN/NOTIFY workers: a trigger notifies, a listener per step claims (compare-and-set) and runs",
		peerPoll:      "polling workers: each step polls every %s, claims (compare-and-set) and runs",
		peerDatabase:  "database alone: the claim/complete SQL in a tight loop",
	}
)

// jobStep names one step of one job.
type jobStep struct{ job, step string }

// mark is when a step's handler started and when its completing
// transaction was sent.
type mark struct{ start, commit time.Time }

// markBook collects marks from in-process workers.
type markBook struct {
	mu sync.Mutex
	m  map[jobStep]mark
}

func newMarkBook() *markBook { return &markBook{m: map[jobStep]mark{}} }

func (b *markBook) note(job, step string, start, commit time.Time) {
	if b == nil {
		return
	}
	b.mu.Lock()
	b.m[jobStep{job, step}] = mark{start, commit}
	b.mu.Unlock()
}

func (b *markBook) all() map[jobStep]mark {
	b.mu.Lock()
	defer b.mu.Unlock()
	return maps.Clone(b.m)
}

// pipeSys is one system moving jobs through the four steps.
type pipeSys interface {
	// insert adds jobs ids at (img_gen, done), in one transaction, with
	// whatever else the system needs to start on them.
	insert(ctx context.Context, ids []string) error
	// stopFirst and startFirst take the first step's worker away and
	// bring it back (the outage).
	stopFirst()
	startFirst(ctx context.Context) error
	// procs are its child processes (nil: it runs in this one); groups
	// names them by part, for CPU accounting.
	procs() []*proc
	groups() map[string][]*proc
	db() *pgxpool.Pool
	// marksOf returns when each step of the jobs whose ids are LIKE like
	// started and committed.
	marksOf(ctx context.Context, like string) (map[jobStep]mark, error)
	close()
}

// runMarks reads the marks from jobstream_runs, for the systems that claim
// and complete with the workers' statements: a run's started_at is its
// claim's now() (just before the handler starts), its finished_at its
// completing statement's (a single-statement transaction: just before the
// commit).
func runMarks(ctx context.Context, pool *pgxpool.Pool, like string) (map[jobStep]mark, error) {
	rows, _ := pool.Query(ctx, `SELECT job_id, step, started_at, finished_at FROM jobstream_runs WHERE job_id LIKE $1 AND outcome = 'done'`, like)
	out := map[jobStep]mark{}
	var k jobStep
	var m mark
	_, err := pgx.ForEachRow(rows, []any{&k.job, &k.step, &m.start, &m.commit}, func() error { out[k] = m; return nil })
	return out, err
}

// jsSys is jobstream as deployed (deploy); its outage stops the
// vlm_analyze worker process.
type jsSys struct{ d *deployment }

func (s jsSys) insert(ctx context.Context, ids []string) error {
	return copyJobs(ctx, s.d.pool, ids, schema.DefaultSteps[0], "done")
}
func (s jsSys) stopFirst()                           { s.d.stopWorker(0) }
func (s jsSys) startFirst(ctx context.Context) error { return s.d.startWorker(0) }
func (s jsSys) procs() []*proc                       { return s.d.procs() }
func (s jsSys) groups() map[string][]*proc           { return s.d.groups() }
func (s jsSys) db() *pgxpool.Pool                    { return s.d.pool }
func (s jsSys) close()                               { s.d.close() }
func (s jsSys) marksOf(ctx context.Context, like string) (map[jobStep]mark, error) {
	return runMarks(ctx, s.d.pool, like)
}

// peerRun is one system's run of scenario 9.
type peerRun struct {
	jobs, done int
	secs       float64 // the batch: insert → the last job at (overlay, done)
	cpu        cpuSnap // CPU used by each part over the batch
	paced      int     // jobs of the paced run
	lost       int     // of them, never at (overlay, done): the outage lost them
	handoff    []float64
}

func (r peerRun) rate() float64 { return float64(r.done) / r.secs }

// startPeer starts system (not the database alone) on a fresh database
// and sends warmup jobs through it.
func startPeer(ctx context.Context, e *env, system, tag string) (sys pipeSys, err error) {
	members := e.cfg.PipelineMembers
	switch system {
	case peerJobstream:
		var d *deployment
		if d, err = deploy(ctx, e, tag, members, false); err == nil {
			sys = jsSys{d}
		}
	case peerRiver:
		sys, err = newRiverSys(ctx, e, tag, (len(schema.DefaultSteps)-1)*members)
	default:
		sys, err = newSQLSys(ctx, e, system, tag, members)
	}
	if err != nil {
		return nil, err
	}
	if err = sys.insert(ctx, jobIDs("warm", warmup)); err == nil {
		_, err = waitPipeline(ctx, sys.db(), "warm-%", warmup, sys.procs(), max(e.cfg.Catchup, 5*time.Second), nil)
	}
	if err != nil {
		sys.close()
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	return sys, nil
}

// peerBatch times jobs inserted at once (one transaction) until all are at
// (overlay, done).
func peerBatch(ctx context.Context, e *env, system, tag string, jobs int, res *peerRun) error {
	sys, err := startPeer(ctx, e, system, tag)
	if err != nil {
		return err
	}
	defer sys.close()
	res.jobs = jobs
	cpu0 := e.cpuNow(sys.groups())
	t0 := time.Now()
	if err := sys.insert(ctx, jobIDs("job", jobs)); err != nil {
		return err
	}
	w, err := waitPipeline(ctx, sys.db(), "job-%", jobs, sys.procs(), e.cfg.Catchup, nil)
	if err != nil {
		return err
	}
	res.cpu = e.cpuNow(sys.groups()).sub(cpu0)
	res.done, res.secs = w.done, w.last.Sub(t0).Seconds()
	return nil
}

// peerPaced inserts jobs one transaction each at cfg.Rate per second for
// three outages; for the second, the first step's worker is away. The
// handoffs (commit of a step, or of the insert → the next step's start) of
// the jobs before the outage are its latency; the jobs that never reach
// (overlay, done) within cfg.Catchup of the last insert are lost.
func peerPaced(ctx context.Context, e *env, system, tag string, res *peerRun) error {
	sys, err := startPeer(ctx, e, system, tag)
	if err != nil {
		return err
	}
	defer sys.close()
	outage := e.cfg.Outage
	n := int(float64(e.cfg.Rate) * 3 * outage.Seconds())
	res.paced = n
	ids := jobIDs("pace", n)
	sent := map[string]time.Time{}
	interval := time.Second / time.Duration(e.cfg.Rate)
	t0 := time.Now().Add(20 * time.Millisecond)
	var outageErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sleepUntil(ctx, t0.Add(outage))
		sys.stopFirst()
		sleepUntil(ctx, t0.Add(2*outage))
		outageErr = sys.startFirst(ctx)
	}()
	for i, id := range ids {
		sleepUntil(ctx, t0.Add(time.Duration(i)*interval))
		sent[id] = time.Now()
		if err := sys.insert(ctx, ids[i:i+1]); err != nil {
			wg.Wait()
			return err
		}
	}
	wg.Wait()
	if outageErr != nil {
		return fmt.Errorf("restart after the outage: %w", outageErr)
	}
	w, err := waitPipeline(ctx, sys.db(), "pace-%", n, sys.procs(), e.cfg.Catchup, nil)
	if err != nil {
		return err
	}
	res.lost = n - w.done
	marks, err := sys.marksOf(ctx, "pace-%")
	if err != nil {
		return err
	}
	res.handoff = handoffs(ids, sent, marks, t0.Add(outage))
	return nil
}

// handoffs returns, sorted, each step's start minus the commit of the step
// before (for the first step, the insert's statement sent), in ms, of the
// handoffs that ended before cutoff.
func handoffs(ids []string, sent map[string]time.Time, marks map[jobStep]mark, cutoff time.Time) []float64 {
	var out []float64
	for _, id := range ids {
		prev := sent[id]
		for _, step := range schema.DefaultSteps[1:] {
			m, ok := marks[jobStep{id, step}]
			if !ok || !m.start.Before(cutoff) {
				break
			}
			out = append(out, ms(m.start.Sub(prev)))
			prev = m.commit
		}
	}
	slices.Sort(out)
	return out
}

// peersResult is one run of scenario 9.
type peersResult map[string]*peerRun

// benchPeers runs every system through the batch and (but the database
// alone) the paced run, in an order that turns with the run. The batch of
// jobstream and of the database alone are scenario 4's when it ran in
// this run (the same measurement).
func benchPeers(ctx context.Context, e *env, run int, four *pipelineResult) (peersResult, error) {
	res := peersResult{}
	n := len(peerSystems)
	for k := range n {
		s := peerSystems[(k+run)%n]
		r := &peerRun{}
		res[s] = r
		switch {
		case four != nil && s == peerJobstream:
			r.jobs, r.done, r.secs, r.cpu = four.jobs, four.completed, four.pipeSecs, four.pipeCPU
		case four != nil && s == peerDatabase:
			r.jobs, r.done, r.secs, r.cpu = four.jobs, four.jobs, four.dbSecs, four.dbCPU
		case s == peerDatabase:
			p := pipelineResult{jobs: e.cfg.PipelineJobs, conns: e.cfg.PipelineMembers * (len(schema.DefaultSteps) - 1)}
			if err := pipelineDatabase(ctx, e, 300+run, &p); err != nil {
				return res, fmt.Errorf("database alone: %w", err)
			}
			r.jobs, r.done, r.secs, r.cpu = p.jobs, p.jobs, p.dbSecs, p.dbCPU
		default:
			if err := peerBatch(ctx, e, s, fmt.Sprintf("peers_%s_%d", s, run), e.cfg.PipelineJobs, r); err != nil {
				return res, fmt.Errorf("%s: %w", s, err)
			}
		}
		if s != peerDatabase {
			if err := peerPaced(ctx, e, s, fmt.Sprintf("paced_%s_%d", s, run), r); err != nil {
				return res, fmt.Errorf("%s, paced: %w", s, err)
			}
		}
		e.logf("  %-9s %s jobs/s; paced: handoff p50 %s ms, p99 %s ms, lost %d of %d", s, thousands(r.rate()),
			lat(percentile(r.handoff, 50)), lat(percentile(r.handoff, 99)), r.lost, r.paced)
	}
	return res, nil
}

// peersRows renders scenario 9.
func (r *results) peersRows() []row {
	if len(r.peers) == 0 {
		return nil
	}
	c := r.cfg
	cmd := c.command("peers")
	first := r.peers[0]
	scen := fmt.Sprintf("9. Pipeline peers, %s jobs through 4 steps (a batch); handoffs at %d jobs/s; the first step's worker away %s of %s",
		thousands(float64(first[peerJobstream].jobs)), c.Rate, c.Outage, 3*c.Outage)
	rate := func(s string) []float64 { return each(r.peers, func(p peersResult) float64 { return p[s].rate() }) }
	ratioTo := func(s string) []float64 {
		return each(r.peers, func(p peersResult) float64 { return p[peerJobstream].rate() / p[s].rate() })
	}
	var rows []row
	for i, s := range peerSystems {
		name := peerNames[s]
		if s == peerPoll {
			name = fmt.Sprintf(name, c.PollInterval)
		}
		rates := rate(s)
		rw := row{figure: name, value: thousands(median(rates)) + " jobs/s", runs: joinRuns(rates, thousands), cmd: cmd}
		if i == 0 {
			rw.scenario = scen
		}
		rows = append(rows, rw)
		if s != peerDatabase {
			p50 := each(r.peers, func(p peersResult) float64 { return percentile(p[s].handoff, 50) })
			p99 := each(r.peers, func(p peersResult) float64 { return percentile(p[s].handoff, 99) })
			lost := each(r.peers, func(p peersResult) float64 { return float64(p[s].lost) })
			lr := row{figure: "  handoff commit → next step's start p50 / p99; lost in the outage",
				value: fmt.Sprintf("%s / %s ms; %s of %s lost", lat(median(p50)), lat(median(p99)), thousands(median(lost)), thousands(float64(first[s].paced))),
				runs:  "p50 " + joinRuns(p50, lat) + " · p99 " + joinRuns(p99, lat) + " · lost " + joinRuns(lost, thousands), cmd: cmd}
			switch s {
			case peerListen:
				lr.target = "(loses by design)"
			default:
				lr.target, lr.result = "0 lost in every run", passMiss(slices.Max(lost) == 0)
			}
			rows = append(rows, lr)
		}
		parts := []string{"postgres", "bench"}
		what := "bench = its workers, in this process"
		switch s {
		case peerJobstream:
			parts, what = []string{"postgres", "walsender", "broker", "reader", "workers", "bench"}, "bench = this program's polling"
		case peerDatabase:
			what = "bench = the SQL client"
		}
		rows = append(rows, row{figure: "  CPU ms per job (" + what + ")", value: cpuCell(r.peers, func(p peersResult) (cpuSnap, int) { return p[s].cpu, p[s].done }, parts), cmd: cmd})
	}
	river, db := ratioTo(peerRiver), each(r.peers, func(p peersResult) float64 { return p[peerJobstream].rate() / p[peerDatabase].rate() })
	rows = append(rows,
		row{"", "jobstream / River, jobs/s", "", "jobstream/River " + f2(median(river)), "≥ 1", passMiss(median(river) >= 1), joinRuns(river, f2), cmd},
		row{"", "jobstream / the database alone, jobs/s", "", "jobstream/database " + f2(median(db)), "≥ 0.6", passMiss(median(db) >= 0.6), joinRuns(db, f2), cmd},
	)
	return rows
}
