package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/schema"
)

// loop is a goroutine an actor can stop.
type loop struct {
	cancel context.CancelFunc
	done   chan error
}

func goLoop(ctx context.Context, f func(ctx context.Context) error) *loop {
	ctx, cancel := context.WithCancel(ctx)
	l := &loop{cancel: cancel, done: make(chan error, 1)}
	go func() { l.done <- f(ctx) }()
	return l
}

// waitReady waits up to a minute for ready, which the loop's part (what:
// "reader", "worker") closes once it is state ("streaming", "ready"). If
// the loop ends first, its error is kept for stop.
func (l *loop) waitReady(ready <-chan struct{}, what, state string) error {
	select {
	case <-ready:
		return nil
	case err := <-l.done:
		l.done <- err
		return fmt.Errorf("%s stopped: %v", what, err)
	case <-time.After(time.Minute):
		return fmt.Errorf("the %s was not %s within a minute", what, state)
	}
}

// stop ends the loop and returns its error (nil when it ended because it was stopped).
func (l *loop) stop() error {
	if l == nil {
		return nil
	}
	l.cancel()
	err := <-l.done
	if errors.Is(err, context.Canceled) || errors.Is(err, errStopped) {
		return nil
	}
	return err
}

// jobstreamActor is the reader (in this process, with its own broker
// process) and a vlm_analyze worker with an in-process handler; the outage
// stops the worker.
type jobstreamActor struct {
	t      *triggerEnv
	b      *broker
	reader *loop
	worker *loop
	r      *cdc.Reader
	ws     []*consumers.Worker

	mu       sync.Mutex
	acked    []float64 // commit → acknowledged by the broker, ms, per transaction
	produced []float64 // a batch's visibility check and produce round trip, ms
}

// ackedSince returns the commit → broker acknowledgement latencies and the
// batches' produce times (ms) recorded since the last call, sorted.
func (a *jobstreamActor) ackedSince() (acked, produced []float64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	acked, produced = a.acked, a.produced
	a.acked, a.produced = nil, nil
	slices.Sort(acked)
	slices.Sort(produced)
	return acked, produced
}

// OnProduced keeps each batch's time from its send to the broker's
// acknowledgement, the visibility check included (a cdc.HookProduced).
func (a *jobstreamActor) OnProduced(_ int, took time.Duration) {
	a.mu.Lock()
	a.produced = append(a.produced, ms(took))
	a.mu.Unlock()
}

// OnCommitAcked keeps each transaction's commit → acked latency (a
// cdc.HookCommitAcked).
func (a *jobstreamActor) OnCommitAcked(d time.Duration) {
	a.mu.Lock()
	a.acked = append(a.acked, ms(d))
	a.mu.Unlock()
}

func (a *jobstreamActor) prepare(ctx context.Context) error {
	t := a.t
	b, err := t.e.startBroker(ctx, fmt.Sprintf("broker-%s-%d", t.scen, t.run))
	if err != nil {
		return err
	}
	a.b = b
	r, err := cdc.New(cdc.Config{DatabaseURL: t.db.url, Brokers: []string{b.addr}, Slot: "bench", TopicPrefix: t.prefix,
		Snapshot: cdc.SnapshotNever, Logger: t.e.log.With("part", "reader", "db", t.db.name), Hooks: []cdc.Hook{a}})
	if err != nil {
		return err
	}
	a.r = r
	a.reader = goLoop(ctx, r.Run)
	return a.reader.waitReady(r.Ready(), "reader", "streaming")
}

func (a *jobstreamActor) start(ctx context.Context) error {
	t := a.t
	w, err := consumers.New(consumers.Config{
		DatabaseURL: t.db.url, Brokers: []string{a.b.addr}, Step: "vlm_analyze", TopicPrefix: t.prefix,
		Concurrency: t.e.cfg.LatencyMembers, Lease: 30 * time.Second, Grace: 5 * time.Second,
		Logger: t.e.log.With("part", "worker", "db", t.db.name),
		Handler: func(_ context.Context, job consumers.Job) (json.RawMessage, error) {
			t.rec.see(job.JobID)
			return json.RawMessage(`{"caption":"a lighthouse at dusk"}`), nil
		},
	})
	if err != nil {
		return err
	}
	a.ws = append(a.ws, w)
	a.worker = goLoop(ctx, w.Run)
	return a.worker.waitReady(w.Ready(), "worker", "ready")
}

func (a *jobstreamActor) stop() {
	if err := a.worker.stop(); err != nil {
		a.t.e.log.Warn("worker", "err", err)
	}
	a.worker = nil
}

func (a *jobstreamActor) close() {
	a.stop()
	if a.r != nil {
		st := a.r.Stats()
		a.t.e.log.Info("reader stats", "db", a.t.db.name, "events", st.Events.Load(), "inserts", st.Inserts.Load(), "updates", st.Updates.Load(),
			"transactions", st.Transactions.Load(), "dead_letters", st.DeadLetters.Load(), "reconnects", st.Reconnects.Load())
	}
	for _, w := range a.ws {
		st := w.Stats()
		a.t.e.log.Info("worker stats", "db", a.t.db.name, "claims", st.Claims.Load(), "completions", st.Completions.Load(),
			"skipped", st.Skipped.Load(), "fenced", st.Fenced.Load(), "retries", st.Retries.Load())
	}
	if err := a.reader.stop(); err != nil {
		a.t.e.log.Warn("reader", "err", err)
	}
	if a.b != nil {
		a.b.stop()
	}
}

// loopActor is an actor whose listener or worker is one loop; what names
// it in the log.
type loopActor struct {
	t    *triggerEnv
	l    *loop
	what string
}

func (a *loopActor) stop() {
	if err := a.l.stop(); err != nil {
		a.t.e.log.Warn(a.what, "err", err)
	}
	a.l = nil
}

func (a *loopActor) close() { a.stop() }

// listenActor is the seed design's option 1: an AFTER UPDATE trigger calls
// pg_notify when a job reaches (img_gen, done); a listener waits with
// WaitForNotification, claims the job by the same compare-and-set and
// starts the handler. The outage closes the listener's connection.
type listenActor struct{ loopActor }

// notifyTriggerSQL is the seed design's trigger: each time a job reaches
// (S, done), by an insert or an update, it notifies channel bench_done_S
// with the job's id.
const notifyTriggerSQL = `CREATE FUNCTION bench_notify_done() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.status = 'done' AND (TG_OP = 'INSERT' OR OLD.current_step IS DISTINCT FROM NEW.current_step OR OLD.status IS DISTINCT FROM NEW.status) THEN
		PERFORM pg_notify('bench_done_' || NEW.current_step, NEW.job_id);
	END IF;
	RETURN NULL;
END $$;
CREATE TRIGGER bench_notify_done AFTER INSERT OR UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION bench_notify_done();`

// claimOneSQL is the alternatives' claim: the compare-and-set on the job.
const claimOneSQL = `UPDATE jobs SET current_step = 'vlm_analyze', status = 'running', updated_at = now()
	WHERE job_id = $1 AND current_step = 'img_gen' AND status = 'done'`

func (a *listenActor) prepare(ctx context.Context) error {
	_, err := a.t.pool.Exec(ctx, notifyTriggerSQL)
	return err
}

func (a *listenActor) start(ctx context.Context) (err error) {
	a.l, err = listen(ctx, a.t.db.url, "img_gen", func(ctx context.Context, id string) error {
		tag, err := a.t.pool.Exec(ctx, claimOneSQL, id)
		if err == nil && tag.RowsAffected() == 1 {
			a.t.rec.see(id)
		}
		return err
	})
	return err
}

// listen connects to the database at url, listens for the jobs reaching
// (step, done) (notifyTriggerSQL) and calls handle with each job's id, one
// after another, until stopped; stopping closes the connection, and what
// is notified meanwhile is lost.
func listen(ctx context.Context, url, step string, handle func(ctx context.Context, jobID string) error) (*loop, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{"bench_done_" + step}.Sanitize()); err != nil {
		conn.Close(context.Background())
		return nil, err
	}
	return goLoop(ctx, func(ctx context.Context) error {
		defer conn.Close(context.Background())
		for {
			n, err := conn.WaitForNotification(ctx)
			if err == nil {
				err = handle(ctx, n.Payload)
			}
			if ctx.Err() != nil {
				return errStopped
			}
			if err != nil {
				return err
			}
		}
	}), nil
}

// pollActor claims every job at (img_gen, done) once per interval, as a
// polling worker does (FOR UPDATE SKIP LOCKED, so several may run). The
// outage stops the loop.
type pollActor struct{ loopActor }

// pollBatch is the most jobs a poll takes at once; a full batch is
// followed by another poll at once.
const pollBatch = 1000

var pollClaimSQL = fmt.Sprintf(`UPDATE jobs SET current_step = 'vlm_analyze', status = 'running', updated_at = now()
	WHERE job_id IN (SELECT job_id FROM jobs WHERE current_step = 'img_gen' AND status = 'done'
	                 ORDER BY updated_at LIMIT %d FOR UPDATE SKIP LOCKED)
	RETURNING job_id`, pollBatch)

func (a *pollActor) prepare(ctx context.Context) error {
	_, err := a.t.pool.Exec(ctx, `CREATE INDEX bench_jobs_step_status ON jobs (current_step, status)`)
	return err
}

func (a *pollActor) start(ctx context.Context) error {
	a.l = poll(ctx, a.t.e.cfg.PollInterval, func(ctx context.Context) (int, error) {
		rows, _ := a.t.pool.Query(ctx, pollClaimSQL)
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		for _, id := range ids {
			a.t.rec.see(id)
		}
		return len(ids), err
	})
	return nil
}

// poll calls batch once per interval, and again at once while it returns
// a full batch (pollBatch), until stopped.
func poll(ctx context.Context, interval time.Duration, batch func(ctx context.Context) (int, error)) *loop {
	return goLoop(ctx, func(ctx context.Context) error {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return errStopped
			case <-tick.C:
			}
			for {
				n, err := batch(ctx)
				if ctx.Err() != nil {
					return errStopped
				}
				if err != nil {
					return err
				}
				if n < pollBatch {
					break
				}
			}
		}
	})
}

// floorActor is the physical floor: a bare pglogrepl client on a slot of
// its own, noting when the change of a job to (img_gen, done) arrives.
type floorActor struct{ loopActor }

func (a *floorActor) prepare(ctx context.Context) error {
	_, err := a.t.pool.Exec(ctx, `SELECT pg_create_logical_replication_slot('bench_floor', 'pgoutput')`)
	return err
}

func (a *floorActor) start(ctx context.Context) error {
	cfg, err := pgconn.ParseConfig(a.t.db.url)
	if err != nil {
		return err
	}
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	err = pglogrepl.StartReplication(ctx, conn, "bench_floor", 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + schema.DefaultPublication + "'"},
	})
	if err != nil {
		conn.Close(context.Background())
		return err
	}
	a.l = goLoop(ctx, func(ctx context.Context) error {
		defer conn.Close(context.Background())
		return a.receive(ctx, conn)
	})
	return nil
}

func (a *floorActor) receive(ctx context.Context, conn *pgconn.PgConn) error {
	rels := map[uint32]*pglogrepl.RelationMessage{}
	var pos pglogrepl.LSN
	next := time.Now().Add(time.Second)
	for {
		if !time.Now().Before(next) {
			if err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: pos}); err != nil {
				return err
			}
			next = time.Now().Add(time.Second)
		}
		rctx, cancel := context.WithDeadline(ctx, next)
		msg, err := conn.ReceiveMessage(rctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return errStopped
		case err != nil && pgconn.Timeout(err):
			continue
		case err != nil:
			return err
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok {
			if er, ok := msg.(*pgproto3.ErrorResponse); ok {
				return pgconn.ErrorResponseToPgError(er)
			}
			continue
		}
		switch cd.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			pkm, err := pglogrepl.ParsePrimaryKeepaliveMessage(cd.Data[1:])
			if err == nil && pkm.ReplyRequested {
				next = time.Time{}
			}
		case pglogrepl.XLogDataByteID:
			xld, err := pglogrepl.ParseXLogData(cd.Data[1:])
			if err != nil {
				return err
			}
			pos = max(pos, xld.WALStart+pglogrepl.LSN(len(xld.WALData)))
			m, err := pglogrepl.Parse(xld.WALData)
			if err != nil {
				return err
			}
			switch m := m.(type) {
			case *pglogrepl.RelationMessage:
				rels[m.RelationID] = m
			case *pglogrepl.UpdateMessage:
				if id, ok := finishedImgGen(rels[m.RelationID], m.NewTuple); ok {
					a.t.rec.see(id)
				}
			}
		}
	}
}

// finishedImgGen returns the job_id of a new row at (img_gen, done).
func finishedImgGen(rel *pglogrepl.RelationMessage, tup *pglogrepl.TupleData) (string, bool) {
	if rel == nil || tup == nil {
		return "", false
	}
	var id, step, status string
	for i, c := range rel.Columns {
		if i >= len(tup.Columns) {
			break
		}
		switch c.Name {
		case "job_id":
			id = string(tup.Columns[i].Data)
		case "current_step":
			step = string(tup.Columns[i].Data)
		case "status":
			status = string(tup.Columns[i].Data)
		}
	}
	return id, step == "img_gen" && status == "done"
}
