package cdc

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
)

// batch is a run of events produced together, in WAL order.
type batch struct {
	evs   []event
	bytes int
	// commit is the end of the last transaction that completed while this
	// batch was filling: once the broker acknowledged the batch (and every
	// batch before it), WAL up to commit may be reported as flushed. 0: none.
	commit pglogrepl.LSN
	// commitTimes are the commit times of those transactions.
	commitTimes []time.Time
}

func (b *batch) reset() {
	clear(b.evs) // drop references to values
	b.evs, b.bytes, b.commit, b.commitTimes = b.evs[:0], 0, 0, b.commitTimes[:0]
}

// flight is a batch being produced.
type flight struct {
	b     *batch
	start time.Time
	done  chan struct{}
	err   error
	// wake, when set, interrupts the replication receive waiting in the
	// main loop, so it hands on the next batch at once.
	wake atomic.Pointer[func()]
}

func (f *flight) finished() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

// pipeline moves events from the main loop to the broker with at most one
// batch in flight: while one batch is produced the next fills, and it goes
// as soon as the first is acknowledged. A quiet stream thus sends each event
// at once (no linger), a busy one sends large batches, and memory stays
// bounded by two batches. Batches are acknowledged in order, so the
// acknowledged position only ever moves past events the broker holds.
type pipeline struct {
	prod *producer
	// ack is the checkpoint: it is called with each batch the broker
	// acknowledged (and every batch before it), in order.
	ack                     func(b *batch, took time.Duration)
	log                     *slog.Logger
	maxBatch, maxBatchBytes int

	ctx      context.Context
	cancel   context.CancelFunc
	pending  *batch
	spare    *batch
	inflight *flight
	vis      *visibility
	// whileWaiting runs about every second while the main loop waits for the
	// broker with a full batch (to keep the replication connection alive).
	whileWaiting func() error
	// inTx is set while the stream is inside a transaction: then a batch
	// that holds no committed transaction goes once a quarter full (or at
	// the commit), not with its first event, so a large transaction is produced in large batches rather
	// than in as many round trips as the broker can take (each costing it
	// and the reader CPU the WAL sender then lacks).
	inTx bool
}

// newPipeline returns a pipeline that produces with prod, holding each batch
// back until vis sees its transactions, and hands acknowledged batches to
// ack. Its producing outlives ctx until stop, so that a deliberate stop can
// let the batch in flight land.
func newPipeline(ctx context.Context, prod *producer, ack func(*batch, time.Duration), vis *visibility, maxBatch, maxBatchBytes int) *pipeline {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	return &pipeline{prod: prod, ack: ack, log: prod.log, maxBatch: maxBatch, maxBatchBytes: maxBatchBytes,
		ctx: ctx, cancel: cancel, pending: &batch{}, spare: &batch{}, vis: vis}
}

// add queues ev, sending it on at once when nothing is in flight.
func (pl *pipeline) add(ev event) error {
	pl.pending.evs = append(pl.pending.evs, ev)
	pl.pending.bytes += ev.size()
	if err := pl.poll(); err != nil {
		return err
	}
	if b := pl.pending; pl.inflight != nil && (len(b.evs) >= pl.maxBatch || b.bytes >= pl.maxBatchBytes) {
		if err := pl.wait(); err != nil {
			return err
		}
		pl.send()
	}
	return nil
}

// commit records the end of a transaction whose events have all been added.
func (pl *pipeline) commit(end pglogrepl.LSN, at time.Time) error {
	pl.inTx = false
	pl.pending.commit = end
	pl.pending.commitTimes = append(pl.pending.commitTimes, at)
	return pl.poll()
}

// poll, without blocking, collects a finished flight and sends what is
// pending when nothing is in flight.
func (pl *pipeline) poll() error {
	if f := pl.inflight; f != nil {
		if !f.finished() {
			return nil
		}
		if err := pl.land(); err != nil {
			return err
		}
	}
	switch {
	case len(pl.pending.evs) > 0:
		if b := pl.pending; !pl.inTx || b.commit > 0 || len(b.evs) >= pl.maxBatch/4 || b.bytes >= pl.maxBatchBytes/4 {
			pl.send()
		}
	case pl.pending.commit > 0:
		pl.ack(pl.pending, 0)
		pl.pending.reset()
	}
	return nil
}

// idle reports whether every event added has been acknowledged.
func (pl *pipeline) idle() bool {
	return pl.inflight == nil && len(pl.pending.evs) == 0 && pl.pending.commit == 0
}

// send starts producing the pending batch.
func (pl *pipeline) send() {
	f := &flight{b: pl.pending, start: time.Now(), done: make(chan struct{})}
	pl.pending, pl.spare = pl.spare, nil
	if pl.pending == nil {
		pl.pending = &batch{}
	}
	pl.inflight = f
	go func() {
		f.err = pl.vis.wait(pl.ctx, f.b.evs, func(err error, next time.Duration) {
			pl.log.Warn("cannot check that transactions are visible; retrying", "err", err, "retry_in", next)
		})
		if f.err == nil {
			f.err = pl.prod.produce(pl.ctx, f.b.evs)
		}
		close(f.done)
		if wake := f.wake.Swap(nil); wake != nil {
			(*wake)()
		}
	}()
}

// land takes the result of the finished flight.
func (pl *pipeline) land() error {
	f := pl.inflight
	pl.inflight = nil
	if f.err != nil {
		return f.err
	}
	pl.ack(f.b, time.Since(f.start))
	f.b.reset()
	pl.spare = f.b
	return nil
}

// wait blocks until the flight lands.
func (pl *pipeline) wait() error {
	f := pl.inflight
	if f == nil {
		return nil
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-f.done:
			return pl.land()
		case <-t.C:
			if pl.whileWaiting != nil {
				if err := pl.whileWaiting(); err != nil {
					return err
				}
			}
		}
	}
}

// drain blocks until every event added has been acknowledged.
func (pl *pipeline) drain() error {
	pl.inTx = false
	for !pl.idle() {
		if err := pl.wait(); err != nil {
			return err
		}
		if err := pl.poll(); err != nil {
			return err
		}
	}
	return nil
}

// stop waits up to grace for the batch in flight to be acknowledged, then
// abandons what is not, and waits for the producing goroutine to return, so
// no write of this session overlaps the next one.
func (pl *pipeline) stop(grace time.Duration) {
	if f := pl.inflight; f != nil && grace > 0 {
		select {
		case <-f.done:
		case <-time.After(grace):
		}
	}
	pl.cancel()
	defer pl.vis.close()
	if f := pl.inflight; f != nil {
		<-f.done
		pl.inflight = nil
		if f.err != nil {
			return
		}
		pl.ack(f.b, time.Since(f.start))
	}
	if len(pl.pending.evs) == 0 && pl.pending.commit > 0 {
		pl.ack(pl.pending, 0)
		pl.pending.reset()
	}
}

// checkpoint is the end of the chain: it keeps the two positions, received
// and acknowledged, and counts what the broker acknowledged. Only acked is
// ever reported to Postgres as flushed.
type checkpoint struct {
	stats *Stats
	hooks []Hook
	// received: the last WAL position seen. acked: the end of the last
	// transaction whose every event the broker acknowledged.
	received pglogrepl.LSN
	acked    pglogrepl.LSN
}

func (c *checkpoint) setReceived(lsn pglogrepl.LSN) {
	if lsn > c.received {
		c.received = lsn
		c.stats.ReceivedLSN.Store(uint64(lsn))
	}
}

func (c *checkpoint) setAcked(lsn pglogrepl.LSN) {
	if lsn > c.acked {
		c.acked = lsn
		c.stats.AckedLSN.Store(uint64(lsn))
	}
}

// acknowledge records that the broker acknowledged every event of b (and of
// every batch before it).
func (cp *checkpoint) acknowledge(b *batch, took time.Duration) {
	now := time.Now()
	if len(b.evs) > 0 {
		var c, u, d, rd, t, tomb, dead, unroutable int64
		for i := range b.evs {
			switch b.evs[i].op {
			case 'c':
				c++
			case 'u':
				u++
			case 'd':
				d++
			case 'r':
				rd++
			case 't':
				t++
			case opTombstone:
				tomb++
			default:
				dead++
				if b.evs[i].unroutable {
					unroutable++
				}
			}
		}
		cp.stats.Events.Add(int64(len(b.evs)))
		cp.stats.Inserts.Add(c)
		cp.stats.Updates.Add(u)
		cp.stats.Deletes.Add(d)
		cp.stats.SnapshotReads.Add(rd)
		cp.stats.Tombstones.Add(tomb)
		cp.stats.Truncates.Add(t)
		cp.stats.DeadLetters.Add(dead)
		cp.stats.Unroutable.Add(unroutable)
		for _, h := range cp.hooks {
			if h, ok := h.(HookProduced); ok {
				h.OnProduced(len(b.evs), took)
			}
		}
	}
	if b.commit > 0 {
		cp.setAcked(b.commit)
		if n := len(b.commitTimes); n > 0 {
			cp.stats.CommitToAckMicros.Store(now.Sub(b.commitTimes[n-1]).Microseconds())
		}
		for _, h := range cp.hooks {
			if h, ok := h.(HookCommitAcked); ok {
				for _, at := range b.commitTimes {
					h.OnCommitAcked(now.Sub(at))
				}
			}
		}
	}
}
