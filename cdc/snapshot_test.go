package cdc_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
)

// TestInitialSnapshotThenStream is item 3: rows that existed before the
// slot are emitted once each as op "r", from a snapshot consistent with the
// slot's start point, and the changes committed meanwhile follow as
// streamed events with no gap and no duplicate in between, although a
// writer keeps updating the table the whole time.
func TestInitialSnapshotThenStream(t *testing.T) {
	t.Parallel()
	e := seqEnv(t)
	const rows = 3000
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) SELECT 'j' || i, 'img_gen', 'done' FROM generate_series(1, $1) i`, rows)

	// A writer bumps seq of random rows, one transaction each, before,
	// during and after the slot's creation and the snapshot.
	ctx := context.Background()
	var updates atomic.Int64
	var stopping atomic.Bool
	writerDone := make(chan error, 1)
	go func() {
		conn, err := pgx.Connect(ctx, e.DatabaseURL)
		if err != nil {
			writerDone <- err
			return
		}
		defer conn.Close(ctx)
		for !stopping.Load() {
			if _, err := conn.Exec(ctx, `UPDATE jobs SET seq = seq + 1 WHERE job_id = $1`, fmt.Sprintf("j%d", 1+rand.IntN(rows))); err != nil {
				writerDone <- err
				return
			}
			updates.Add(1)
		}
		writerDone <- nil
	}()
	harness.Eventually(t, 30*time.Second, func() (bool, string) { return updates.Load() > 100, "writer not writing" })
	r := startReader(t, e, nil)
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		n := r.Stats().SnapshotReads.Load()
		return n == rows && updates.Load() > 500, fmt.Sprintf("%d snapshot reads", n)
	})
	at := updates.Load()
	harness.Eventually(t, 60*time.Second, func() (bool, string) { return updates.Load() > at+300, "writer stalled" })
	stopping.Store(true)
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}
	final := committedSeqs(t, e)
	total := 0
	for _, s := range final {
		total += s
	}
	// Every row once as "r" with the seq it had at the snapshot; after it,
	// exactly the later seqs, each once.
	msgs := waitMessages(t, e, e.Topic("img_gen"), 0)
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		msgs = readAll(t, e, e.Topic("img_gen"))
		return len(msgs) >= rows+total-snapshotSum(t, msgs), fmt.Sprintf("%d events", len(msgs))
	})
	var lsn int64
	markers := map[string]int{}
	next := map[string]int{}
	for _, m := range msgs {
		env := decode(t, m)
		id := schema.JobIDFromKey(m.Key)
		s := seqOf(t, env)
		switch env.Op {
		case "r":
			validate(t, m.Value)
			if _, dup := next[id]; dup {
				t.Fatalf("%s: read twice, or read after a streamed event", id)
			}
			if lsn == 0 {
				lsn = env.Source.LSN
			}
			if env.Before != nil || env.Source.LSN != lsn || env.Source.TxID == 0 {
				t.Fatalf("snapshot event %s", m.Value)
			}
			markers[env.Source.Snapshot]++
			next[id] = s + 1
		case "u":
			want, ok := next[id]
			if !ok {
				t.Fatalf("%s: update seq %d before its snapshot read", id, s)
			}
			if s != want {
				t.Fatalf("%s: update seq %d after %d: a gap or a duplicate at the snapshot's edge", id, s, want-1)
			}
			next[id] = s + 1
		default:
			t.Fatalf("unexpected event %s", m.Value)
		}
	}
	for id, s := range final {
		if next[id] != s+1 {
			t.Errorf("%s: last event seq %d, committed %d", id, next[id]-1, s)
		}
	}
	if markers["first"] != 1 || markers["last"] != 1 || markers["true"] != rows-2 {
		t.Errorf("snapshot markers %v", markers)
	}
	if n := e.Count(t, `SELECT count(*) FROM jobstream_slots WHERE slot_name = $1 AND snapshot = 'initial' AND completed_at IS NOT NULL AND snapshot_rows = $2`, e.Slot, rows); n != 1 {
		t.Error("jobstream_slots does not record the completed snapshot")
	}
	t.Logf("%d rows snapshotted while %d updates ran; %d events, no gap, no duplicate", rows, updates.Load(), len(msgs))
}

// snapshotSum is the sum of the seqs the snapshot read: the updates before it.
func snapshotSum(t testing.TB, msgs []kafka.Message) int {
	sum := 0
	for _, m := range msgs {
		if env := decode(t, m); env.Op == "r" {
			sum += seqOf(t, env)
		}
	}
	return sum
}

// TestSnapshotNever: with --snapshot never, rows that existed before the
// slot are not emitted; later changes are.
func TestSnapshotNever(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('old', 'img_gen', 'done')`)
	r := startReader(t, e, func(c *cdc.Config) { c.Snapshot = cdc.SnapshotNever })
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('new', 'img_gen', 'done')`)
	msgs := waitMessages(t, e, e.Topic("img_gen"), 1)
	if len(msgs) != 1 || schema.JobIDFromKey(msgs[0].Key) != "new" || r.Stats().SnapshotReads.Load() != 0 {
		t.Fatalf("%d events, first key %q", len(msgs), msgs[0].Key)
	}
	if n := e.Count(t, `SELECT count(*) FROM jobstream_slots WHERE slot_name = $1 AND snapshot = 'never'`, e.Slot); n != 1 {
		t.Error("jobstream_slots does not record the slot")
	}
}
