package cdc_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/ops/localpg"
	"github.com/jobstream/jobstream/schema"
)

// server is a Postgres of the test's own.
type server struct {
	*localpg.Postgres
	once sync.Once
}

// stop stops the server once (localpg's Stop must not run twice, nor after
// Crash); crash stops it as a crash would.
func (s *server) stop()  { s.once.Do(func() { s.Postgres.Stop() }) }
func (s *server) crash() { s.once.Do(func() { s.Postgres.Crash() }) }

// privatePostgres starts a Postgres of the test's own in e.Dir/dir (for
// tests that restart it or need other settings), stopped when the test
// ends, and returns e pointed at its "postgres" database.
func privatePostgres(t *testing.T, e *harness.Env, dir string, opts localpg.Options) (*harness.Env, *server) {
	t.Helper()
	pg, err := localpg.Start(context.Background(), filepath.Join(e.Dir, dir), opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := &server{Postgres: pg}
	t.Cleanup(srv.stop)
	p := e.Copy(t)
	p.DB, p.DatabaseURL = "postgres", pg.URL("postgres")
	p.Postgres = pg
	return p, srv
}

// execOn runs sql on a connection of its own (a pool may hold connections a
// Postgres restart broke).
func execOn(t *testing.T, url, sql string) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), sql); err != nil {
		t.Fatalf("exec %q: %v", sql, err)
	}
}

// TestReconnectsWhenPostgresRestarts is item 8's reconnect: Postgres
// crashes and comes back; the reader reconnects with backoff and goes on
// from the slot's position, losing nothing.
func TestReconnectsWhenPostgresRestarts(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	p, pg := privatePostgres(t, e, "pg", localpg.Options{})
	harness.Migrate(t, p.DatabaseURL)
	r := startReader(t, p, nil)
	execOn(t, p.DatabaseURL, `INSERT INTO jobs (job_id, current_step, status) SELECT 'a' || i, 'img_gen', 'done' FROM generate_series(1, 50) i`)
	waitMessages(t, p, p.Topic("img_gen"), 50)

	pg.crash()
	privatePostgres(t, e, "pg", localpg.Options{Port: pg.Port})
	execOn(t, p.DatabaseURL, `INSERT INTO jobs (job_id, current_step, status) SELECT 'b' || i, 'img_gen', 'done' FROM generate_series(1, 50) i`)
	msgs := waitMessages(t, p, p.Topic("img_gen"), 100)
	keys := map[string]bool{}
	for _, m := range msgs {
		keys[schema.JobIDFromKey(m.Key)] = true
	}
	if len(keys) != 100 || r.Stats().Reconnects.Load() == 0 {
		t.Fatalf("%d of 100 jobs arrived; %d reconnects", len(keys), r.Stats().Reconnects.Load())
	}
}

// runOnce runs a reader for cfg and returns the error it stops with at
// start, or nil once it is ready (and stops it).
func runOnce(t *testing.T, cfg cdc.Config) error {
	t.Helper()
	r, err := cdc.New(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	select {
	case err := <-done:
		return err
	case <-r.Ready():
		cancel()
		return <-done
	case <-time.After(60 * time.Second):
		t.Fatal("reader neither ready nor failed within 60s")
	}
	return nil
}

// TestStartupErrorsAreClear is item 8's startup errors: a user without the
// REPLICATION privilege, and a table without primary key or replica
// identity, each stop the reader at once with one sentence naming the fix.
func TestStartupErrorsAreClear(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	role := e.DB + "_norepl"
	e.Exec(t, `CREATE ROLE `+role+` LOGIN`)
	t.Cleanup(func() { e.Exec(t, `DROP ROLE IF EXISTS `+role) })
	cfg := readerConfig(e)
	cfg.DatabaseURL = strings.Replace(e.DatabaseURL, "postgres@", role+"@", 1)
	if err := runOnce(t, cfg); err == nil || !strings.Contains(err.Error(), "lacks the REPLICATION privilege; run ALTER ROLE") {
		t.Errorf("without REPLICATION: %v", err)
	}

	e.Exec(t, `ALTER TABLE jobs DROP CONSTRAINT jobs_pkey`)
	err := runOnce(t, readerConfig(e))
	if err == nil || !strings.Contains(err.Error(), "has no primary key and no REPLICA IDENTITY") || !strings.Contains(err.Error(), "ADD PRIMARY KEY (job_id)") {
		t.Errorf("without primary key: %v", err)
	}
	e.Exec(t, `ALTER TABLE jobs REPLICA IDENTITY FULL`)
	if err := runOnce(t, readerConfig(e)); err != nil {
		t.Errorf("with REPLICA IDENTITY FULL and no primary key: %v", err)
	}
}

// TestWalLevelAndInvalidatedSlot is item 8's other startup errors, on a
// Postgres of the test's own: wal_level=replica; then, restarted with
// wal_level=logical and max_slot_wal_keep_size=1MB, a slot Postgres
// invalidated (wal_status=lost) is reported with how to re-snapshot, never
// skipped; doing as told (drop it, snapshot initial) works.
func TestWalLevelAndInvalidatedSlot(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	p, pg := privatePostgres(t, e, "pg", localpg.Options{Settings: map[string]string{"wal_level": "replica"}})
	err := runOnce(t, readerConfig(p))
	if err == nil || !strings.Contains(err.Error(), "wal_level=replica; logical replication needs wal_level=logical") {
		t.Fatalf("with wal_level=replica: %v", err)
	}
	pg.stop()
	privatePostgres(t, e, "pg", localpg.Options{Port: pg.Port,
		Settings: map[string]string{"max_slot_wal_keep_size": "1MB", "max_wal_size": "32MB", "min_wal_size": "32MB"}})
	harness.Migrate(t, p.DatabaseURL)
	execOn(t, p.DatabaseURL, `INSERT INTO jobs (job_id, current_step, status) VALUES ('before', 'img_gen', 'done')`)
	if err := runOnce(t, readerConfig(p)); err != nil { // creates the slot
		t.Fatal(err)
	}
	execOn(t, p.DatabaseURL, `CREATE TABLE filler (pad text)`)
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		execOn(t, p.DatabaseURL, `INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 20000)`)
		execOn(t, p.DatabaseURL, `SELECT pg_switch_wal()`)
		execOn(t, p.DatabaseURL, `CHECKPOINT`)
		status := ""
		conn, err := pgx.Connect(context.Background(), p.DatabaseURL)
		if err == nil {
			conn.QueryRow(context.Background(), `SELECT coalesce(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1`, p.Slot).Scan(&status)
			conn.Close(context.Background())
		}
		return status == "lost", "slot wal_status " + status
	})
	err = runOnce(t, readerConfig(p))
	if err == nil || !strings.Contains(err.Error(), "was invalidated by Postgres (wal_status=lost") ||
		!strings.Contains(err.Error(), fmt.Sprintf("SELECT pg_drop_replication_slot('%s')", p.Slot)) || !strings.Contains(err.Error(), "Snapshot initial") {
		t.Fatalf("with a lost slot: %v", err)
	}
	execOn(t, p.DatabaseURL, fmt.Sprintf(`SELECT pg_drop_replication_slot('%s')`, p.Slot))
	// The first reader's snapshot may be in the topic already: the
	// re-snapshot's event is the one after what is there now.
	had := int(topicCount(t, p, p.Topic("img_gen")))
	r := startReader(t, p, nil)
	msgs := waitMessages(t, p, p.Topic("img_gen"), had+1)
	if m := msgs[had]; decode(t, m).Op != "r" || schema.JobIDFromKey(m.Key) != "before" || r.Stats().SnapshotReads.Load() != 1 {
		t.Fatalf("after re-snapshot (%d events before it, snapshot reads %d): %s", had, r.Stats().SnapshotReads.Load(), m.Value)
	}
}

// TestLargeTransactionAckedWhole is item 5's rule, at a size a test affords:
// a transaction of 100,000 updates is produced in bounded batches while it
// streams, and the slot does not pass its commit before its last event is
// acknowledged (the benchmark BenchmarkLargeTransaction measures memory on
// 1,000,000).
func TestLargeTransactionAckedWhole(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	const n = 100_000
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) SELECT 'j' || i, 'img_gen', 'pending' FROM generate_series(1, $1) i`, n)
	var biggest, batches atomic.Int64
	r := startReader(t, e, func(c *cdc.Config) {
		c.Snapshot = cdc.SnapshotNever
		c.MaxBatch = 1000
		c.Hooks = []cdc.Hook{produced(func(events int, _ time.Duration) {
			batches.Add(1)
			for b := biggest.Load(); int64(events) > b && !biggest.CompareAndSwap(b, int64(events)); b = biggest.Load() {
			}
		})}
	})
	e.Exec(t, `UPDATE jobs SET status = 'done'`)
	end := currentLSN(t, e) // at or past the transaction's commit
	harness.Eventually(t, 90*time.Second, func() (bool, string) {
		confirmed := confirmedLSN(t, e)
		acked := r.Stats().Updates.Load()
		if confirmed >= end && acked < n {
			t.Fatalf("slot confirmed %s, past the transaction's commit, with %d of %d events acknowledged", confirmed, acked, n)
		}
		return confirmed >= end, fmt.Sprintf("%d of %d events acknowledged, slot at %s", acked, n, confirmed)
	})
	if got := topicCount(t, e, e.Topic("img_gen")); got < n {
		t.Fatalf("topic holds %d events, want %d", got, n)
	}
	if b := biggest.Load(); b > 1000 {
		t.Fatalf("a batch of %d events, over MaxBatch", b)
	}
	t.Logf("%d events in %d batches, the largest %d", n, batches.Load(), biggest.Load())
}

// TestEventsWaitUntilCommitsAreVisible: Postgres writes a commit to the WAL
// a moment before other sessions can see it; an event must not reach the
// broker in that moment, or a consumer that reads the row (a worker's
// claim) sees it as it was. Synchronous replication to a standby that never
// comes holds that moment open: the commit is in the WAL, decoded by the
// reader, and invisible until the wait is cancelled.
func TestEventsWaitUntilCommitsAreVisible(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	p, _ := privatePostgres(t, e, "pg", localpg.Options{Settings: map[string]string{"synchronous_standby_names": "nobody"}})
	local := p.DatabaseURL + "&synchronous_commit=local" // commits that do not wait for the standby
	harness.Migrate(t, local)
	p.DatabaseURL = local
	r := startReader(t, p, nil)

	held, err := pgx.Connect(context.Background(), strings.TrimSuffix(local, "&synchronous_commit=local"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close(context.Background())
	committed := make(chan error, 1)
	go func() {
		_, err := held.Exec(context.Background(), `INSERT INTO jobs (job_id, current_step, status) VALUES ('held', 'img_gen', 'done')`)
		committed <- err
	}()
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		return r.Stats().Transactions.Load() >= 1, "the reader has not decoded the held commit"
	})
	execOn(t, local, `INSERT INTO jobs (job_id, current_step, status) VALUES ('later', 'img_gen', 'done')`)
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		return r.Stats().Transactions.Load() >= 2, "the reader has not decoded the later commit"
	})
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if n := topicCount(t, p, p.Topic("img_gen")); n != 0 {
			t.Fatalf("%d events reached the broker while the first commit was invisible", n)
		}
	}
	execOn(t, local, fmt.Sprintf(`SELECT pg_cancel_backend(%d)`, held.PgConn().PID()))
	if err := <-committed; err != nil {
		t.Fatalf("held insert: %v", err)
	}
	msgs := waitMessages(t, p, p.Topic("img_gen"), 2)
	if len(msgs) != 2 {
		t.Fatalf("%d events, want 2", len(msgs))
	}
}

// TestBrokerDownIsSaidSo: while the broker is down the reader says it cannot
// reach the broker, naming its address, once and then at most every
// brokerDownEvery (not "topic not found" at every retry); when the broker
// is back, it says so and the change held meanwhile arrives.
func TestBrokerDownIsSaidSo(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	b := privateBroker(t, e, "127.0.0.1:0")
	addr := b.Addr()
	var logs harness.Buffer
	startReader(t, e, func(c *cdc.Config) { c.Logger = slog.New(slog.NewTextHandler(&logs, nil)) })
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('before', 'img_gen', 'done')`)
	waitMessages(t, e, e.Topic("img_gen"), 1)

	b.Close()
	down := time.Now()
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('while-down', 'img_gen', 'done')`)
	want := "cannot reach the Kafka broker at " + addr + "; retrying"
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		return strings.Contains(logs.String(), want), "no " + want + " in the log:\n" + logs.String()
	})
	// Keep it down long enough for several retries (their backoff is at
	// most 2s), then bring it back on the same address.
	time.Sleep(time.Until(down.Add(6 * time.Second)))
	privateBroker(t, e, addr)
	waitMessages(t, e, e.Topic("img_gen"), 2)
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		return strings.Contains(logs.String(), "the Kafka broker is reachable again"), "no recovery line in the log:\n" + logs.String()
	})
	log := logs.String()
	if strings.Contains(log, "topic not found") || strings.Count(log, want) != 1 {
		t.Fatalf("want one %q and no \"topic not found\" while the broker was down:\n%s", want, log)
	}
}
