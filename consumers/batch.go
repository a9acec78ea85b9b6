package consumers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"
)

// BatchHandler runs one step for several jobs at once, as GPU inference
// does, and returns one Result per job, in the order of jobs. The worker
// gathers the jobs (Config.Batch, Config.BatchWait), each claimed, leased,
// retried and dead-lettered on its own exactly as without batching; one
// job's failure fails only that job. ctx ends when every job of the batch
// has ended (each job's own end — a cancel, a timeout, a lost lease — is
// answered by the worker at once and its result discarded), or at a stop
// past the grace period. A lane (a GPU, or one of Concurrency) runs one
// batch at a time.
type BatchHandler interface {
	HandleBatch(ctx context.Context, jobs []Job) []Result
}

// BatchFunc is a func used as a BatchHandler.
type BatchFunc func(ctx context.Context, jobs []Job) []Result

// HandleBatch calls f.
func (f BatchFunc) HandleBatch(ctx context.Context, jobs []Job) []Result { return f(ctx, jobs) }

// Result is the outcome of one job of a batch: Value is stored as the
// step's result (empty: null), or Err fails the attempt (wrap it with
// Permanent to fail the job at once).
type Result struct {
	Value json.RawMessage
	Err   error
}

// invalidBatch is the BatchHandler of a constructor given something it
// cannot run: New refuses it with err.
type invalidBatch struct{ err error }

func (b invalidBatch) HandleBatch(_ context.Context, jobs []Job) []Result {
	out := make([]Result, len(jobs))
	for i := range out {
		out[i].Err = Permanent(b.err)
	}
	return out
}

// outcome is what an attempt's handler gave: a result or an error.
type outcome struct {
	result json.RawMessage
	err    error
}

// call is one job handed to a lane: its first answer wins, whether from
// the step or from the lane at the job's end (cancel, timeout, lost lease).
type call struct {
	ctx  context.Context
	job  Job
	once sync.Once
	done chan outcome // buffered: one answer
}

func newCall(ctx context.Context, job Job) *call {
	return &call{ctx: ctx, job: job, done: make(chan outcome, 1)}
}

// answer gives c its outcome unless it has one.
func (c *call) answer(o outcome) {
	c.once.Do(func() { c.done <- o })
}

// laneExec runs the batches of one lane.
type laneExec interface {
	// supervise keeps what the lane runs on (a serve process) up until ctx
	// ends; it returns at once for an executor that needs nothing.
	supervise(ctx context.Context)
	// ready reports whether the lane can take a batch now, and a channel
	// closed at its next change.
	ready() (ok bool, changed <-chan struct{})
	// run hands calls to the step and returns once the step is done with
	// each of them: answered, or told to stop and given up on.
	run(ctx context.Context, calls []*call)
	// abandon tells the step that c ended (the lane answered it already).
	abandon(c *call, cause error)
}

// laneOpener is a BatchHandler that keeps state per lane, such as the
// long-lived process of Serve.
type laneOpener interface {
	openLane(spec laneSpec) laneExec
}

// laneSpec describes one lane to the executor that opens it.
type laneSpec struct {
	step         string
	index        int
	gpu          string
	batch        int
	startTimeout time.Duration
	log          *slog.Logger
	stats        *Stats
}

// goLane runs a BatchHandler in process.
type goLane struct {
	h   BatchHandler
	log *slog.Logger
}

func (g goLane) supervise(context.Context)              {}
func (g goLane) ready() (bool, <-chan struct{})         { return true, nil }
func (g goLane) abandon(*call, error)                   {}
func (g goLane) run(ctx context.Context, calls []*call) { runGoBatch(ctx, g.h, g.log, calls) }

// runGoBatch calls h with the jobs of calls and answers each call; h's
// context ends once every call has its answer.
func runGoBatch(ctx context.Context, h BatchHandler, log *slog.Logger, calls []*call) {
	bctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var left sync.WaitGroup
	jobs := make([]Job, len(calls))
	for i, c := range calls {
		jobs[i] = c.job
		jobs[i].ctx = c.ctx
		left.Add(1)
		stop := context.AfterFunc(c.ctx, left.Done)
		defer func() {
			if stop() {
				left.Done()
			}
		}()
	}
	go func() {
		left.Wait()
		cancel(errors.New("every job of the batch ended"))
	}()
	results := func() (out []Result) {
		defer func() {
			if p := recover(); p != nil {
				log.Error("batch handler panicked", "jobs", len(jobs), "panic", p, "stack", string(debug.Stack()))
				out = nil
				for range jobs {
					out = append(out, Result{Err: fmt.Errorf("batch handler panicked: %v", p)})
				}
			}
		}()
		return h.HandleBatch(bctx, jobs)
	}()
	for i, c := range calls {
		if i >= len(results) {
			c.answer(outcome{err: fmt.Errorf("batch handler returned %d results for %d jobs", len(results), len(jobs))})
			continue
		}
		c.answer(outcome{results[i].Value, results[i].Err})
	}
}

// laneSet is a member's lanes for one batched step: one per GPU, or
// Concurrency of them, fed from one queue.
type laneSet struct {
	w     *stepWorker
	lanes []*lane
	queue chan *call

	mu      sync.Mutex
	changed chan struct{} // closed and replaced when a lane's readiness changes
}

// lane runs one batch at a time on its executor.
type lane struct {
	set  *laneSet
	exec laneExec
}

func (w *stepWorker) newLaneSet(gpu string, n int) *laneSet {
	s := &laneSet{w: w, queue: make(chan *call), changed: make(chan struct{})}
	opener, _ := w.batch.(laneOpener)
	for i := range n {
		spec := laneSpec{step: w.cfg.Step, index: i, gpu: gpu, batch: w.cfg.Batch, startTimeout: w.cfg.StartTimeout,
			log: w.log.With("lane", i), stats: w.stats}
		if gpu != "" {
			spec.log = spec.log.With("gpu", gpu)
		}
		var ex laneExec = goLane{h: w.batch, log: spec.log}
		if opener != nil {
			ex = opener.openLane(spec)
		}
		s.lanes = append(s.lanes, &lane{set: s, exec: ex})
	}
	return s
}

// run supervises and runs every lane until ctx ends.
func (s *laneSet) run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, l := range s.lanes {
		wg.Add(3)
		go func() { defer wg.Done(); l.exec.supervise(ctx) }()
		go func() { defer wg.Done(); l.loop(ctx) }()
		go func() { defer wg.Done(); s.relay(ctx, l) }()
	}
	wg.Wait()
}

// relay passes each readiness change of l on to the set's watchers.
func (s *laneSet) relay(ctx context.Context, l *lane) {
	for {
		_, ch := l.exec.ready()
		if ch == nil {
			return // never changes
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
		s.mu.Lock()
		close(s.changed)
		s.changed = make(chan struct{})
		s.mu.Unlock()
	}
}

// ready reports whether any lane can take a batch, and a channel closed at
// the next change of any lane.
func (s *laneSet) ready() (ok bool, changed <-chan struct{}) {
	s.mu.Lock()
	changed = s.changed
	s.mu.Unlock()
	for _, l := range s.lanes {
		if ok, _ := l.exec.ready(); ok {
			return true, changed
		}
	}
	return false, changed
}

// waitReady returns once a lane is ready (true) or ctx ends (false).
func (s *laneSet) waitReady(ctx context.Context) bool {
	for {
		ok, changed := s.ready()
		if ok {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-changed:
		}
	}
}

// errLanesDown fails an attempt that no lane could take: every lane's
// process is down. The run is given back so that another member takes it.
var errLanesDown = errors.New("no serve process of this member is running")

// submit hands job to the set's next free lane and waits for its answer,
// or for ctx to end (then the lane is told and the answer discarded). It
// does not wait for a lane while every lane is down.
func (s *laneSet) submit(ctx context.Context, job Job) (json.RawMessage, error) {
	c := newCall(ctx, job)
	for {
		ok, changed := s.ready()
		if !ok {
			return nil, errLanesDown
		}
		select {
		case s.queue <- c:
		case <-changed:
			continue
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
		break
	}
	select {
	case o := <-c.done:
		return o.result, o.err
	case <-ctx.Done():
		// The lane answers c and tells the step (it watches ctx too).
		return nil, context.Cause(ctx)
	}
}

// loop takes batches from the queue while the lane is ready and runs them
// one at a time until ctx ends.
func (l *lane) loop(ctx context.Context) {
	for {
		ok, changed := l.exec.ready()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-changed:
				continue
			}
		}
		var first *call
		select {
		case <-ctx.Done():
			return
		case <-changed: // nil for a lane that never changes
			continue
		case first = <-l.set.queue:
		}
		l.runBatch(ctx, l.gather(ctx, first))
	}
}

// gather adds to first the calls that come within BatchWait, up to Batch.
func (l *lane) gather(ctx context.Context, first *call) []*call {
	cfg := l.set.w.cfg
	calls := []*call{first}
	if cfg.Batch <= 1 {
		return calls
	}
	t := time.NewTimer(cfg.BatchWait)
	defer t.Stop()
	for len(calls) < cfg.Batch {
		select {
		case c := <-l.set.queue:
			calls = append(calls, c)
		case <-t.C:
			return calls
		case <-ctx.Done():
			return calls
		}
	}
	return calls
}

// runBatch runs calls on the lane, each bounded by Config.Timeout from now
// (time spent waiting for a lane is not counted): a call that ends first,
// by its timeout or its own context, is answered at once and the step told.
func (l *lane) runBatch(ctx context.Context, calls []*call) {
	live := calls[:0:0]
	timeout := l.set.w.cfg.Timeout
	for _, c := range calls {
		if c.ctx.Err() != nil {
			c.answer(outcome{err: context.Cause(c.ctx)})
			continue
		}
		if timeout > 0 {
			var cancel context.CancelFunc
			c.ctx, cancel = context.WithTimeoutCause(c.ctx, timeout, fmt.Errorf("step timed out after %s", timeout))
			defer cancel()
		}
		live = append(live, c)
		stop := context.AfterFunc(c.ctx, func() {
			cause := context.Cause(c.ctx)
			c.answer(outcome{err: cause})
			l.exec.abandon(c, cause) // a no-op once the step answered c
		})
		defer stop()
	}
	if len(live) > 0 {
		l.exec.run(ctx, live)
	}
}
