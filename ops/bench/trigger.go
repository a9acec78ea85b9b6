package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Systems of scenarios 2 and 3: each acts on (img_gen, done) by starting
// the vlm_analyze handler.
const (
	sysFloor     = "floor"
	sysJobstream = "jobstream"
	sysListen    = "listen"
	sysPoll      = "poll"
)

var systemNames = map[string]string{
	sysFloor:     "floor: bare pglogrepl client",
	sysJobstream: "jobstream: reader → broker → worker",
	sysListen:    "LISTEN/NOTIFY trigger + pgx listener",
	sysPoll:      "polling loop",
}

// trigResult is one system's run of scenario 2 or 3.
type trigResult struct {
	system      string
	n           int       // measured transitions
	lost        int       // transitions never acted on
	lat         []float64 // commit sent → handler start, ms, sorted
	acked       []float64 // jobstream: commit → every event acknowledged by the broker, ms, sorted
	produced    []float64 // jobstream: a batch's send → acknowledged (visibility check and produce), ms, sorted
	commitRTT   float64   // median time the committing statement took to return, ms
	outage      time.Duration
	outageStart time.Duration
}

func (r trigResult) pct(p float64) float64 { return percentile(r.lat, p) }

func (r trigResult) mean() float64 {
	if len(r.lat) == 0 {
		return 0
	}
	s := 0.0
	for _, v := range r.lat {
		s += v
	}
	return s / float64(len(r.lat))
}

// percentile returns the p-th percentile (nearest rank) of sorted xs.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	i := int(p/100*float64(len(xs))+0.999999) - 1
	return xs[min(max(i, 0), len(xs)-1)]
}

// recorder notes when each job's handler first started.
type recorder struct {
	mu   sync.Mutex
	seen map[string]time.Time
}

func newRecorder() *recorder { return &recorder{seen: map[string]time.Time{}} }

func (r *recorder) see(jobID string) {
	now := time.Now()
	r.mu.Lock()
	if _, ok := r.seen[jobID]; !ok {
		r.seen[jobID] = now
	}
	r.mu.Unlock()
}

func (r *recorder) get(jobID string) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	t, ok := r.seen[jobID]
	return t, ok
}

// count returns how many of ids have been seen.
func (r *recorder) count(ids []string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, id := range ids {
		if _, ok := r.seen[id]; ok {
			n++
		}
	}
	return n
}

// actor is one way of acting on a finished step. prepare runs once, after
// the jobs exist; start and stop bring its listener or worker up and down
// (stop is the outage of scenario 3); close releases everything.
type actor interface {
	prepare(ctx context.Context) error
	start(ctx context.Context) error
	stop()
	close()
}

// triggerEnv is what an actor is given.
type triggerEnv struct {
	e      *env
	db     *database
	pool   *pgxpool.Pool
	rec    *recorder
	prefix string
	run    int
	scen   string
}

func newActor(system string, t *triggerEnv) actor {
	switch system {
	case sysFloor:
		return &floorActor{loopActor{t: t, what: "floor client"}}
	case sysJobstream:
		return &jobstreamActor{t: t}
	case sysListen:
		return &listenActor{loopActor{t: t, what: "listener"}}
	default:
		return &pollActor{loopActor{t: t, what: "poller"}}
	}
}

// warmup transitions go through each system before measuring, so that
// connections, groups and caches are set up.
const warmup = 20

// benchTrigger measures one system: n transitions (img_gen, running) →
// (img_gen, done) at cfg.Rate per second, each committed on its own, and
// when the next step's handler started for each, from the moment the
// committing statement was sent. (The message can reach a replication
// client before the statement's reply reaches the committer, so latencies
// from the reply would put the floor at zero or below.) With outage, the
// system's listener or worker is stopped for cfg.Outage starting a third
// into the run; the run then lasts three outages.
func benchTrigger(ctx context.Context, e *env, scen, system string, run int, outage bool) (res trigResult, err error) {
	res.system = system
	n := e.cfg.Transitions
	if outage {
		n = int(float64(e.cfg.Rate) * 3 * e.cfg.Outage.Seconds())
		res.outage = e.cfg.Outage
		res.outageStart = e.cfg.Outage
	}
	res.n = n
	db, pool, done, err := e.openDB(ctx, fmt.Sprintf("bench_%s_%s_%d", scen, system, run), 4)
	if err != nil {
		return res, err
	}
	defer done()
	warm := jobIDs("warm", warmup)
	ids := jobIDs("job", n)
	if err := copyJobs(ctx, pool, append(slices.Clone(warm), ids...), "img_gen", "running"); err != nil {
		return res, err
	}
	t := &triggerEnv{e: e, db: db, pool: pool, rec: newRecorder(),
		prefix: fmt.Sprintf("%s-%s-%d", scen, system, run), run: run, scen: scen}
	a := newActor(system, t)
	defer a.close()
	if err := a.prepare(ctx); err != nil {
		return res, fmt.Errorf("prepare %s: %w", system, err)
	}
	if err := a.start(ctx); err != nil {
		return res, fmt.Errorf("start %s: %w", system, err)
	}

	conn, err := pgx.Connect(ctx, db.url)
	if err != nil {
		return res, err
	}
	defer conn.Close(context.Background())
	const flip = `UPDATE jobs SET status = 'done', results = $2::jsonb, updated_at = now() WHERE job_id = $1`
	for i, id := range warm {
		if _, err := conn.Exec(ctx, flip, id, resultsJSON(i+1)); err != nil {
			return res, err
		}
		time.Sleep(10 * time.Millisecond)
	}
	if seen, err := waitWarm(ctx, t.rec, warm); err != nil {
		return res, fmt.Errorf("%s did not act on the warm-up transitions: %w", system, err)
	} else if seen < len(warm) {
		e.log.Warn("warm-up transitions never acted on", "system", system, "scenario", scen, "run", run, "lost", len(warm)-seen)
	}

	if p := e.profilePath(fmt.Sprintf("%s-%s-run%d", scen, system, run)); p != "" && system == sysJobstream {
		stopProfile, err := startCPUProfile(p)
		if err != nil {
			return res, err
		}
		defer stopProfile()
	}
	js, _ := a.(*jobstreamActor)
	if js != nil {
		js.ackedSince() // from here on
	}
	interval := time.Second / time.Duration(e.cfg.Rate)
	sent := make([]time.Time, n)
	rtt := make([]float64, n)
	results := make([]string, n)
	for i := range results {
		results[i] = resultsJSON(i + 1)
	}
	var outageErr error
	var outageWG sync.WaitGroup
	t0 := time.Now().Add(20 * time.Millisecond)
	if outage {
		outageWG.Add(1)
		go func() {
			defer outageWG.Done()
			sleepUntil(ctx, t0.Add(res.outageStart))
			a.stop()
			sleepUntil(ctx, t0.Add(res.outageStart+res.outage))
			outageErr = a.start(ctx)
		}()
	}
	for i, id := range ids {
		sleepUntil(ctx, t0.Add(time.Duration(i)*interval))
		sent[i] = time.Now()
		if _, err := conn.Exec(ctx, flip, id, results[i]); err != nil {
			outageWG.Wait()
			return res, err
		}
		rtt[i] = ms(time.Since(sent[i]))
	}
	outageWG.Wait()
	if outageErr != nil {
		return res, fmt.Errorf("restart %s after the outage: %w", system, outageErr)
	}
	_ = waitSeen(ctx, t.rec, ids, time.Now().Add(e.cfg.Catchup))
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	for i, id := range ids {
		at, ok := t.rec.get(id)
		if !ok {
			res.lost++
			if res.lost <= 3 {
				var step, status string
				_ = pool.QueryRow(ctx, `SELECT current_step, status FROM jobs WHERE job_id = $1`, id).Scan(&step, &status)
				e.log.Warn("transition never acted on", "system", system, "scenario", scen, "run", run, "job_id", id,
					"index", i, "committed", sent[i].Format(time.RFC3339Nano), "now_at", step+","+status)
			}
			continue
		}
		res.lat = append(res.lat, ms(at.Sub(sent[i])))
	}
	slices.Sort(res.lat)
	slices.Sort(rtt)
	if js != nil {
		res.acked, res.produced = js.ackedSince()
	}
	res.commitRTT = percentile(rtt, 50)
	return res, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func sleepUntil(ctx context.Context, t time.Time) {
	d := time.Until(t)
	if d <= 0 {
		return
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
	case <-timer.C:
	}
}

// waitSeen waits until every id was seen, or deadline.
func waitSeen(ctx context.Context, rec *recorder, ids []string, deadline time.Time) error {
	for {
		n := rec.count(ids)
		if n == len(ids) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d acted on by the deadline", n, len(ids))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitWarm waits up to 2 minutes for the first warm-up transition to be
// acted on, then until all are, or none more is for 2 seconds (a lost
// warm-up transition is no reason to stop: the measured ones count).
func waitWarm(ctx context.Context, rec *recorder, ids []string) (int, error) {
	deadline := time.Now().Add(2 * time.Minute)
	last, lastAt := 0, time.Now()
	for {
		n := rec.count(ids)
		switch {
		case n == len(ids):
			return n, nil
		case n > last:
			last, lastAt = n, time.Now()
		case n > 0 && time.Since(lastAt) > 2*time.Second:
			return n, nil
		case n == 0 && time.Now().After(deadline):
			return 0, fmt.Errorf("none of %d acted on within 2 minutes", len(ids))
		}
		select {
		case <-ctx.Done():
			return n, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// errStopped is how an actor's loop ends when stopped.
var errStopped = errors.New("stopped")
