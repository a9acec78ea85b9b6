package consumers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/schema"
)

// decoded is an event as the partition loop read it: its trigger, or why
// it is not a change-event envelope.
type decoded struct {
	env *schema.Trigger
	err error
}

// decode decodes an event and reports whether it is one the step acts on:
// a trigger of this step, or a malformed event to dead-letter. The others
// (tombstones, changes of other states) are skipped without a slot.
func (w *stepWorker) decode(m kafka.Message) (d decoded, act bool) {
	if len(m.Value) == 0 {
		return d, false // a tombstone
	}
	d.env, d.err = schema.DecodeTrigger(m.Value)
	if d.err != nil {
		return d, true
	}
	row := d.env.After
	act = row != nil && d.env.Op != schema.OpDelete && row.CurrentStep == w.trigger && row.Status == "done"
	if act && (row.JobID == nil || *row.JobID == "") {
		d.err = errNoJobID // never silently skipped: a dead letter says why
	}
	return d, act
}

var errNoJobID = errors.New("the row has no job_id (null or empty), so no job can be claimed for it")

// handle applies the step protocol to an event decode said to act on:
// claim, run, complete or fail, or dead-letter a malformed event. It
// returns an error only when the event must be delivered again: the
// database stayed unreachable until ctx ended, or the run was released at
// a stop.
func (w *stepWorker) handle(ctx context.Context, m kafka.Message, d decoded, workerID, gpu string) error {
	if d.err != nil {
		if !w.deadLetter(ctx, letter{key: m.Key, event: m.Value, reason: "event is not a change-event envelope: " + d.err.Error()}) {
			return context.Cause(ctx) // not committed: the letter is written on the next delivery
		}
		w.stats.Skipped.Add(1)
		return nil
	}
	env := d.env
	if ls := w.lanes[gpu]; ls != nil {
		if ok, _ := ls.ready(); !ok {
			return errLanesDown // claims nothing: the member is leaving its group
		}
	}
	r, ok, err := w.claim(ctx, env, *env.After.JobID, workerID)
	if isSchemaError(err) {
		return w.halt(err)
	}
	if isDataError(err) {
		if !w.deadLetter(ctx, letter{key: m.Key, event: m.Value, reason: "claim refused by Postgres", errText: errorText(err)}) {
			return context.Cause(ctx)
		}
		w.stats.Skipped.Add(1)
		return nil
	}
	if err != nil {
		return err
	}
	if !ok {
		w.stats.Skipped.Add(1)
		return nil
	}
	w.stats.Claims.Add(1)
	if env.Source.TsMs > 0 {
		w.claimed(time.Since(time.UnixMilli(env.Source.TsMs)))
	}
	r.job.GPU = gpu
	return w.execute(ctx, r, m, workerID)
}

// maxVisibilityWait bounds how long a claim that found nothing waits for
// the event's transaction to become visible before calling the event stale.
const maxVisibilityWait = 10 * time.Second

// claim claims the job of a trigger event. A claim that finds nothing is
// trusted only once the event's transaction is visible to new snapshots:
// Postgres writes a commit to the WAL, where logical decoding reads it, a
// moment before the committing backend makes it visible to other sessions,
// and a claim in that moment would not see the event's change. So the
// worker waits for visibility, then claims once more.
func (w *stepWorker) claim(ctx context.Context, env *schema.Trigger, jobID, workerID string) (r run, ok bool, err error) {
	try := func() (r run, ok bool, err error) {
		err = retryDB(ctx, w.log, func() (err error) {
			r, ok, err = w.store.claim(ctx, jobID, workerID, env.Source.LSN, env.Source.TsMs)
			return err
		})
		return r, ok, err
	}
	r, ok, err = try()
	if err != nil || ok || env.Source.TxID == 0 || env.Source.Snapshot != "false" {
		return r, ok, err
	}
	looks := 0
	pending, err := schema.WaitVisible(ctx, []uint32{uint32(env.Source.TxID)}, time.Now().Add(maxVisibilityWait), func(ctx context.Context) (snap string, err error) {
		if looks++; looks == 2 {
			w.log.Debug("the event's transaction is not visible yet; claiming again once it is", "job_id", jobID, "txid", env.Source.TxID)
		}
		err = retryDB(ctx, w.log, func() (err error) { snap, err = w.store.snapshot(ctx); return err })
		return snap, err
	})
	switch {
	case err != nil:
		return r, false, err
	case len(pending) > 0:
		w.log.Warn("the event's transaction is still not visible; taking the event as stale", "job_id", jobID, "txid", env.Source.TxID)
		return r, false, nil
	}
	return try()
}

var errFenced = errors.New("lease lost: the run was closed by another worker, the sweeper or a replay")

// errJobLeft stops a step whose job the user cancelled, moved or deleted
// while it ran.
var errJobLeft = errors.New("the job left (step, running): cancelled, moved or deleted by someone else")

// lease keeps the current attempt's run alive from the claim until the job
// leaves this worker, through every attempt and the backoff between them.
type lease struct {
	mu   sync.Mutex // held while renewing and while switching runs
	run  atomic.Int64
	lose context.CancelCauseFunc // stops the step: errFenced or errJobLeft
}

// hold registers l as in hand: the sweeper never expires its run, and the
// watcher stops it when its job leaves (S, running).
func (w *stepWorker) hold(l *lease) func() {
	w.leasesMu.Lock()
	if w.leases == nil {
		w.leases = map[*lease]struct{}{}
	}
	w.leases[l] = struct{}{}
	w.leasesMu.Unlock()
	return func() {
		w.leasesMu.Lock()
		delete(w.leases, l)
		w.leasesMu.Unlock()
	}
}

// held returns the runs in hand and their leases.
func (w *stepWorker) held() (ids []int64, byRun map[int64]*lease) {
	w.leasesMu.Lock()
	defer w.leasesMu.Unlock()
	byRun = make(map[int64]*lease, len(w.leases))
	for l := range w.leases {
		id := l.run.Load()
		ids = append(ids, id)
		byRun[id] = l
	}
	return ids, byRun
}

// execute runs attempts of the claimed job until one succeeds, the job
// fails, the attempt is fenced, the job is cancelled or moved under it, or
// the worker stops past its grace period (then the run is released).
func (w *stepWorker) execute(ctx context.Context, r run, m kafka.Message, workerID string) error {
	w.stats.InFlight.Add(1)
	defer w.stats.InFlight.Add(-1)
	kctx, l, unhold := w.holdLease(ctx, r)
	defer unhold()
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = w.cfg.RetryBackoff
	bo.MaxInterval = w.cfg.MaxRetryBackoff
	bo.MaxElapsedTime = 0
	bo.Reset()
	for {
		began := time.Now()
		result, runErr := w.attempt(ctx, kctx, r)
		ran := time.Since(began)
		if done, err := w.settle(ctx, kctx, r, m, result, runErr, ran); done {
			return err
		}
		next, done, err := w.retryRun(ctx, l, r, m, workerID, runErr, ran)
		if done {
			return err
		}
		r = next
		if done, err := w.backOff(ctx, kctx, r, bo.NextBackOff()); done {
			return err
		}
	}
}

// holdLease registers r's run as in hand and renews its lease from Lease/3
// after the claim (a step done by then never starts the renewing
// goroutine) until unhold. kctx ends when the run is lost (errFenced) or
// its job leaves (errJobLeft).
func (w *stepWorker) holdLease(ctx context.Context, r run) (kctx context.Context, l *lease, unhold func()) {
	kctx, lose := context.WithCancelCause(ctx)
	l = &lease{lose: lose}
	l.run.Store(r.id)
	drop := w.hold(l)
	kept := make(chan struct{})
	jobID := r.job.JobID
	renewing := time.AfterFunc(w.cfg.Lease/3, func() {
		defer close(kept)
		w.keepLease(kctx, l, jobID)
	})
	return kctx, l, func() {
		lose(context.Canceled)
		if !renewing.Stop() {
			<-kept
		}
		drop()
	}
}

// settle ends the job's time here after an attempt, unless the attempt
// failed and may be retried (done false): it discards a fenced result,
// closes the run of a job that left, releases the run at a stop, completes
// a success, or fails the job.
func (w *stepWorker) settle(ctx, kctx context.Context, r run, m kafka.Message, result json.RawMessage, runErr error, ran time.Duration) (done bool, err error) {
	switch {
	case errors.Is(context.Cause(kctx), errFenced):
		w.fenced(r, ran)
		return true, nil
	case errors.Is(context.Cause(kctx), errJobLeft):
		return true, w.abandon(ctx, r, ran)
	case ctx.Err() != nil || errors.Is(runErr, errLanesDown):
		// At a stop past the grace, or with every serve process of this
		// member down: another member takes the job at once.
		if errors.Is(runErr, errLanesDown) {
			return true, w.release(ctx, r, ran, "no serve process of this worker was ready to run the step; given back to the group")
		}
		return true, w.release(ctx, r, ran, "worker shut down before the step finished")
	case runErr == nil:
		return true, w.complete(ctx, r, m, result, ran)
	case IsPermanent(runErr) || r.attempt >= w.cfg.MaxAttempts:
		return true, w.fail(ctx, r, m, ran, runErr)
	}
	return false, nil
}

// complete stores the result of a successful attempt.
func (w *stepWorker) complete(ctx context.Context, r run, m kafka.Message, result json.RawMessage, ran time.Duration) error {
	var outcome string
	err := retryDB(ctx, w.log, func() (err error) { outcome, err = w.store.complete(ctx, r, result); return err })
	if isDataError(err) {
		return w.fail(ctx, r, m, ran, fmt.Errorf("postgres refused the result: %w", err))
	}
	if err != nil {
		return w.halt(err)
	}
	if outcome != outcomeDone {
		w.closed(r, outcome, ran)
		return nil
	}
	w.stats.Completions.Add(1)
	w.attempted("done", ran)
	return nil
}

// retryRun closes the failed attempt's run and opens the next attempt's,
// switching l to it; done is true when the job instead failed or left.
func (w *stepWorker) retryRun(ctx context.Context, l *lease, r run, m kafka.Message, workerID string, runErr error, ran time.Duration) (next run, done bool, err error) {
	w.log.Info("step failed; retrying", "job_id", r.job.JobID, "chain", r.chain, "attempt", r.attempt, "err", runErr)
	var outcome string
	l.mu.Lock()
	err = retryDB(ctx, w.log, func() (err error) { next, outcome, err = w.store.retry(ctx, r, workerID, runErr); return err })
	if err == nil && outcome == outcomeRetried {
		l.run.Store(next.id)
	}
	l.mu.Unlock()
	if isDataError(err) {
		return next, true, w.fail(ctx, r, m, ran, runErr)
	}
	if err != nil {
		return next, true, w.halt(err)
	}
	if outcome != outcomeRetried {
		w.closed(r, outcome, ran)
		return next, true, nil
	}
	w.stats.Retries.Add(1)
	w.attempted("retried", ran)
	return next, false, nil
}

// backOff waits d before the next attempt, still holding (and renewing)
// the run r; done is true when the run was lost, its job left, or the
// worker is stopping (a job that is not running is given back at once).
func (w *stepWorker) backOff(ctx, kctx context.Context, r run, d time.Duration) (done bool, err error) {
	t := time.NewTimer(d)
	select {
	case <-t.C:
	case <-kctx.Done():
	case <-w.stopping:
	}
	t.Stop()
	switch {
	case errors.Is(context.Cause(kctx), errFenced):
		w.fenced(r, 0)
		return true, nil
	case errors.Is(context.Cause(kctx), errJobLeft):
		return true, w.abandon(ctx, r, 0)
	case ctx.Err() != nil || isClosed(w.stopping):
		return true, w.release(ctx, r, 0, "worker shut down while the job waited to be retried")
	}
	return false, nil
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// keepLease renews the lease of l's current run at once and then every
// Lease/3 until ctx ends; when a renewal finds the run closed by someone
// else, it cancels the attempt with errFenced. A failed renewal (Postgres
// unreachable) is tried again every second: the sweepers give live workers
// a full lease after an outage to get theirs in.
func (w *stepWorker) keepLease(ctx context.Context, l *lease, jobID string) {
	every := w.cfg.Lease / 3
	t := time.NewTimer(every)
	defer t.Stop()
	for ctx.Err() == nil {
		l.mu.Lock()
		held, err := w.store.renew(ctx, l.run.Load())
		l.mu.Unlock()
		next := every
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			w.log.Warn("renew lease failed; retrying", "job_id", jobID, "err", err)
			next = min(every, time.Second)
		case !held:
			l.lose(errFenced)
			return
		}
		t.Reset(next)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
}

// watchInterval is how often the watcher checks that the jobs of the runs
// in hand are still at (S, running): a cancel stops a step within about
// this long plus the time the step takes to stop.
const watchInterval = 500 * time.Millisecond

// watchLoop stops the steps whose job the user cancelled, moved or deleted,
// and those whose run someone else closed, with one query for all the runs
// in hand every watchInterval.
func (w *stepWorker) watchLoop(ctx context.Context) error {
	return w.everyTick(ctx, watchInterval, "watch runs in hand", func(ctx context.Context) error {
		ids, byRun := w.held()
		if len(ids) == 0 {
			return nil
		}
		gone, err := w.store.watch(ctx, ids)
		if err != nil {
			return err
		}
		for _, g := range gone {
			l := byRun[g.runID]
			cause := errJobLeft
			if g.closed {
				cause = errFenced
			}
			// Under l.mu: a retry switching runs is not taken for a fence.
			l.mu.Lock()
			if l.run.Load() == g.runID {
				l.lose(cause)
			}
			l.mu.Unlock()
		}
		return nil
	})
}

// everyTick calls f every interval until ctx ends, then returns nil. An
// error from f while ctx lives is logged at debug level as what failed;
// the next tick tries again.
func (w *stepWorker) everyTick(ctx context.Context, every time.Duration, what string, f func(context.Context) error) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := f(ctx); err != nil && ctx.Err() == nil {
			w.log.Debug(what, "err", err)
		}
	}
}

// attempt runs the handler once. It waits for the handler to return, even
// when the attempt times out or is fenced (so a member never runs two steps
// at once), except at a stop past the grace period: then it returns at once
// so that the run is released without delay.
func (w *stepWorker) attempt(ctx, kctx context.Context, r run) (json.RawMessage, error) {
	actx, cancel := kctx, context.CancelFunc(func() {})
	// A lane bounds a batched job from the moment it hands the batch over.
	if w.cfg.Timeout > 0 && w.batch == nil {
		actx, cancel = context.WithTimeoutCause(kctx, w.cfg.Timeout, fmt.Errorf("step timed out after %s", w.cfg.Timeout))
	}
	defer cancel()
	type answer struct {
		result json.RawMessage
		err    error
	}
	ch := make(chan answer, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				w.log.Error("handler panicked", "job_id", r.job.JobID, "panic", p, "stack", string(debug.Stack()))
				ch <- answer{err: fmt.Errorf("handler panicked: %v", p)}
			}
		}()
		var result json.RawMessage
		var err error
		if w.batch != nil {
			result, err = w.lanes[r.job.GPU].submit(actx, r.job)
		} else {
			result, err = w.cfg.Handler(actx, r.job)
		}
		ch <- answer{result, err}
	}()
	var a answer
	select {
	case a = <-ch:
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
	if a.err != nil {
		if actx.Err() != nil && kctx.Err() == nil && (errors.Is(a.err, context.DeadlineExceeded) || errors.Is(a.err, context.Canceled)) {
			a.err = context.Cause(actx) // the timeout, named
		}
		return nil, a.err
	}
	out := bytes.TrimSpace(a.result)
	if len(out) == 0 {
		return json.RawMessage("null"), nil
	}
	if !json.Valid(out) {
		return nil, fmt.Errorf("handler returned invalid JSON (%.80q)", out)
	}
	return out, nil
}

// fenced records an attempt whose run was closed under it: its result is discarded.
func (w *stepWorker) fenced(r run, ran time.Duration) {
	w.stats.Fenced.Add(1)
	w.attempted("fenced", ran)
	w.log.Warn("attempt lost its run; result discarded", "job_id", r.job.JobID, "attempt", r.attempt)
}

var errReleased = errors.New("run released: the worker is stopping")

// release gives the run back at a stop (past the grace period, or in the
// backoff before a retry), so that another member takes the job at once.
func (w *stepWorker) release(ctx context.Context, r run, ran time.Duration, why string) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := w.store.release(rctx, r, why); err != nil {
		w.log.Warn("release run failed; its lease will expire instead", "job_id", r.job.JobID, "err", err)
	} else {
		w.stats.Released.Add(1)
		w.log.Info("run released: "+why, "job_id", r.job.JobID, "attempt", r.attempt)
	}
	w.attempted("released", ran)
	return errReleased
}

// fail moves the job to (S, failed) with cause and dead-letters its event.
// A job the user cancelled, moved or deleted meanwhile is left as it is,
// with no letter.
func (w *stepWorker) fail(ctx context.Context, r run, m kafka.Message, ran time.Duration, cause error) error {
	var outcome string
	err := retryDB(ctx, w.log, func() (err error) { outcome, err = w.store.fail(ctx, r, cause); return err })
	if isDataError(err) {
		cause = fmt.Errorf("the step failed and postgres refused its error: %w", err)
		err = retryDB(ctx, w.log, func() (err error) { outcome, err = w.store.fail(ctx, r, cause); return err })
	}
	if err != nil {
		return w.halt(err)
	}
	if outcome != outcomeFailed {
		w.closed(r, outcome, ran)
		return nil
	}
	w.log.Warn("step failed", "job_id", r.job.JobID, "chain", r.chain, "attempt", r.attempt, "err", cause)
	w.stats.Failures.Add(1)
	w.attempted("failed", ran)
	// The run owes this letter until deadLettered records it; if this
	// worker dies first, the step's sweeper writes it (payOwedLetters).
	if w.deadLetter(ctx, letter{key: m.Key, event: m.Value, reason: reasonStepFailed, attempts: r.attempt, errText: errorText(cause)}) {
		w.recordLetter(ctx, r.id)
	}
	return nil
}

// abandon closes the run of a step stopped because its job left (S,
// running): no retry, no letter.
func (w *stepWorker) abandon(ctx context.Context, r run, ran time.Duration) error {
	var outcome string
	err := retryDB(ctx, w.log, func() (err error) { outcome, err = w.store.abandon(ctx, r); return err })
	if err != nil {
		return w.halt(err)
	}
	w.closed(r, outcome, ran)
	return nil
}

// closed records a run that ended other than done, failed or retried: fenced,
// or cancelled or discarded because its job left (S, running).
func (w *stepWorker) closed(r run, outcome string, ran time.Duration) {
	switch outcome {
	case outcomeCancelled:
		w.stats.Cancelled.Add(1)
		w.attempted(outcome, ran)
		w.log.Info("job cancelled; step stopped, no retry", "job_id", r.job.JobID, "chain", r.chain, "attempt", r.attempt)
	case outcomeDiscarded:
		w.stats.Discarded.Add(1)
		w.attempted(outcome, ran)
		w.log.Info("job moved or deleted while its step ran; result discarded, no retry", "job_id", r.job.JobID, "chain", r.chain, "attempt", r.attempt)
	default:
		w.fenced(r, ran)
	}
}

// halt handles a store error that retrying did not fix. A missing table or
// column stops the whole worker with the sentence naming jobstream migrate;
// anything else (ctx ended while Postgres was unreachable) is returned, and
// the event is delivered again.
func (w *stepWorker) halt(err error) error {
	if isSchemaError(err) {
		err = schemaFailure(err)
		w.stop(err)
	}
	return err
}

// recordLetter records that a run's dead letter was written. A failure only
// means the sweeper writes the letter once more later.
func (w *stepWorker) recordLetter(ctx context.Context, runID int64) {
	if err := w.store.deadLettered(ctx, runID); err != nil && ctx.Err() == nil {
		w.log.Warn("dead letter written but not recorded; it may be written again", "run_id", runID, "err", err)
	}
}

// letter is a dead letter: a message that could not be processed, or the
// trigger of a job that failed.
type letter struct {
	key        []byte
	event      []byte // the triggering event, as consumed
	reason     string
	attempts   int
	errText    string
	triggerLSN string
}

// deadLetter writes l to the dead-letter topic, keyed by job_id. It retries
// while the broker is unreachable, but never blocks on a letter the broker
// refuses for good. settled is false only when ctx ended first: the letter
// is still owed.
func (w *stepWorker) deadLetter(ctx context.Context, l letter) (settled bool) {
	dl := schema.DeadLetter{Reason: l.reason, Step: w.cfg.Step, JobID: schema.JobIDFromKey(l.key), Attempts: l.attempts, Error: l.errText, TriggerLSN: l.triggerLSN}
	dl.SetEvent(l.event)
	km := kafka.Message{Key: l.key, Value: dl.Encode(), Headers: []kafka.Header{
		{Key: schema.HeaderReason, Value: []byte(l.reason)},
		{Key: schema.HeaderStep, Value: []byte(w.cfg.Step)},
	}}
	err := retry(ctx, w.log, func() error {
		err := w.dlq.WriteMessages(ctx, km)
		var ke kafka.Error
		if errors.As(err, &ke) && !ke.Temporary() {
			return backoff.Permanent(err)
		}
		var tooLarge kafka.MessageTooLargeError
		if errors.As(err, &tooLarge) {
			return backoff.Permanent(err)
		}
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return false
		}
		w.log.Error("dead letter refused by the broker; dropped", "job_id", schema.JobIDFromKey(l.key), "reason", l.reason, "err", err)
		return true
	}
	w.stats.DeadLetters.Add(1)
	return true
}

// retryDB retries a store call with capped exponential backoff until it
// succeeds, ctx ends, or Postgres refuses the data itself (isDataError),
// or a table or column is missing (isSchemaError), which no retry can fix.
func retryDB(ctx context.Context, log *slog.Logger, op func() error) error {
	return retry(ctx, log, func() error {
		err := op()
		if isDataError(err) || isSchemaError(err) {
			return backoff.Permanent(err)
		}
		return err
	})
}

// retry retries op with capped exponential backoff and jitter until it
// succeeds, returns a backoff.Permanent error, or ctx ends.
func retry(ctx context.Context, log *slog.Logger, op func() error) error {
	try := func() error {
		err := op()
		if err != nil && ctx.Err() != nil {
			return backoff.Permanent(context.Cause(ctx))
		}
		return err
	}
	// The first try, which nearly always succeeds, needs no backoff.
	first := try()
	if first == nil {
		return nil
	}
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 100 * time.Millisecond
	bo.MaxInterval = 5 * time.Second
	bo.MaxElapsedTime = 0
	return backoff.RetryNotify(func() error {
		if err := first; err != nil {
			first = nil // RetryNotify's first call: the try made above
			return err
		}
		return try()
	}, backoff.WithContext(bo, ctx), func(err error, d time.Duration) {
		log.Warn("retrying", "err", err, "retry_in", d)
	})
}

// sweepInterval is how often the sweeper looks for expired leases.
func (w *stepWorker) sweepInterval() time.Duration {
	return min(max(w.cfg.Lease/4, 250*time.Millisecond), 2*time.Second)
}

// payOwedLetters writes the dead letters of runs that failed over two
// leases ago and whose worker died before writing them. Their triggering
// event is gone with that worker; the letter carries the run's error and
// trigger LSN.
func (w *stepWorker) payOwedLetters(ctx context.Context) {
	// Bounded, so that a broker outage does not hold the sweeper: what is
	// not written stays owed for the next round.
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := w.store.payOwedLetters(ctx, 2*w.cfg.Lease, func(o owedLetter) bool {
		return w.deadLetter(sctx, letter{key: w.store.key(o.jobID), reason: o.reason, attempts: o.attempt, errText: o.errText, triggerLSN: o.trigger})
	})
	if err != nil && ctx.Err() == nil {
		w.log.Warn("write owed dead letters", "err", err)
	}
	if n > 0 {
		w.log.Info("wrote dead letters that a stopped worker owed", "letters", n)
	}
}

// sweepLoop closes the runs whose lease expired (their worker died),
// rewinding their jobs so they are delivered again, or failing and
// dead-lettering those whose attempts are spent; it also prunes old runs.
//
// After an outage (a sweep that failed or took far longer than it should,
// so Postgres was unreachable or stalled) it expires nothing for one lease:
// every live worker's lease ran out meanwhile, and each gets that long to
// renew before a sweeper takes its run for a dead one's. A Postgres restart
// gets the same pause in the sweep statement itself.
func (w *stepWorker) sweepLoop(ctx context.Context) error {
	every := w.sweepInterval()
	t := time.NewTicker(every)
	defer t.Stop()
	var holdUntil, lastPrune time.Time
	outage := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		began := time.Now()
		var ok bool
		if began.Before(holdUntil) {
			ok = w.store.pool.Ping(ctx) == nil
		} else {
			ok = w.sweep(ctx)
		}
		if ctx.Err() != nil {
			return nil
		}
		if !ok || time.Since(began) > max(4*every, 5*time.Second) {
			outage = true
		}
		if !ok {
			continue
		}
		if outage {
			outage = false
			holdUntil = time.Now().Add(w.cfg.Lease)
			w.log.Info("postgres is reachable again; expiring no lease for one lease period so live workers renew theirs first", "lease", w.cfg.Lease)
			continue
		}
		// After the sweep, so that a broker outage, which holds a letter
		// for up to 10s, never delays the rescue of expired leases.
		w.payOwedLetters(ctx)
		if w.cfg.RunsRetention > 0 && time.Since(lastPrune) > pruneInterval {
			lastPrune = time.Now()
			w.prune(ctx)
		}
	}
}

// pruneInterval is how often a worker's sweeper prunes old runs.
const pruneInterval = time.Minute

// prune deletes finished runs older than RunsRetention, a batch at a time,
// at most a few batches per round so the sweeper is never held long.
func (w *stepWorker) prune(ctx context.Context) {
	var total int64
	for range 10 {
		n, err := prune(ctx, w.store.pool, w.cfg.RunsRetention, PruneBatch)
		total += n
		if err != nil {
			if ctx.Err() == nil {
				w.log.Warn("prune old runs", "err", err)
			}
			break
		}
		if n < PruneBatch {
			break
		}
	}
	if total > 0 {
		w.stats.Pruned.Add(total)
		w.log.Info("pruned finished runs", "runs", total, "older_than", w.cfg.RunsRetention)
	}
}

// sweep closes the runs whose lease expired, rewinding or failing their
// jobs. ok is false when Postgres could not be reached.
func (w *stepWorker) sweep(ctx context.Context) (ok bool) {
	ids, _ := w.held()
	runs, err := w.store.sweep(ctx, w.cfg.MaxAttempts, ids)
	if err != nil {
		if ctx.Err() == nil {
			w.log.Warn("sweep expired leases", "err", err)
		}
		return false
	}
	for _, s := range runs {
		w.stats.Expired.Add(1)
		switch {
		case s.failed:
			w.stats.Failures.Add(1)
			w.log.Warn("lease expired on the last attempt; job failed", "job_id", s.jobID, "attempt", s.attempt, "worker", s.worker)
			if w.deadLetter(ctx, letter{key: w.store.key(s.jobID), reason: reasonLeaseExpired, attempts: s.attempt, errText: s.errText, triggerLSN: s.trigger}) {
				w.recordLetter(ctx, s.runID)
			}
		case s.rewound:
			w.log.Info("lease expired; job rewound to be delivered again", "job_id", s.jobID, "attempt", s.attempt, "worker", s.worker)
		}
	}
	return true
}
