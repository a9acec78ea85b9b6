package cdc_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
)

// running is a reader a test runs by hand, to see the error it stops with.
type running struct {
	r      *cdc.Reader
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// runReader starts a reader for cfg and returns once it is ready; a reader
// that stops first fails t. The test's end stops it.
func runReader(t *testing.T, cfg cdc.Config) *running {
	t.Helper()
	r, err := cdc.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	x := &running{r: r, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(x.done)
		x.err = r.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-x.done })
	select {
	case <-r.Ready():
	case <-x.done:
		t.Fatalf("reader stopped at start: %v", x.err)
	case <-time.After(time.Minute):
		t.Fatal("reader not ready within 1m")
	}
	return x
}

// stopped waits up to timeout for the reader to stop by itself and returns
// its error.
func (x *running) stopped(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case <-x.done:
		return x.err
	case <-time.After(timeout):
		t.Fatalf("reader still running after %s", timeout)
	}
	return nil
}

// stop stops the reader deliberately.
func (x *running) stop(t *testing.T) {
	t.Helper()
	x.cancel()
	if err := x.stopped(t, 30*time.Second); err != nil {
		t.Fatalf("reader stopped with %v", err)
	}
}

// logTo returns a debug logger writing to buf.
func logTo(buf *harness.Buffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func migrateChanges(t *testing.T, e *harness.Env) []string {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), e.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	changes, err := schema.Migrate(context.Background(), conn, schema.MigrateOptions{Publication: e.Publication})
	if err != nil {
		t.Fatal(err)
	}
	return changes
}

// TestPublicationMustPublishEveryOperation is issue 11 item 5a: a
// publication that lacks an operation (Postgres would drop those changes for
// good) stops the reader with one sentence naming the fix: at start, while
// it runs, and at a reconnect; jobstream migrate repairs it.
func TestPublicationMustPublishEveryOperation(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	fix := fmt.Sprintf("ALTER PUBLICATION %s SET (publish = 'insert, update, delete, truncate')", e.Publication)

	e.Exec(t, `ALTER PUBLICATION `+e.Publication+` SET (publish = 'insert')`)
	err := runOnce(t, readerConfig(e))
	if err == nil || !strings.Contains(err.Error(), "does not publish update, delete, truncate") || !strings.Contains(err.Error(), fix) ||
		!strings.Contains(err.Error(), "jobstream migrate") {
		t.Fatalf("started with publish = 'insert': %v", err)
	}
	if changes := migrateChanges(t, e); !strings.Contains(strings.Join(changes, ";"), "publishes insert, update, delete and truncate again") {
		t.Fatalf("migrate did not repair the publication: %q", changes)
	}
	if changes := migrateChanges(t, e); len(changes) != 0 {
		t.Fatalf("second migrate changed %q", changes)
	}

	// While it runs: the periodic check (every StatusInterval) stops it.
	x := runReader(t, readerConfig(e))
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('a', 'img_gen', 'done')`)
	waitMessages(t, e, e.Topic("img_gen"), 1)
	e.Exec(t, `ALTER PUBLICATION `+e.Publication+` SET (publish = 'insert')`)
	if err := x.stopped(t, 30*time.Second); err == nil || !strings.Contains(err.Error(), fix) {
		t.Fatalf("publication altered under a running reader: %v", err)
	}

	// At a reconnect: a status interval too long to see it first.
	migrateChanges(t, e)
	cfg := readerConfig(e)
	cfg.StatusInterval = time.Hour
	x = runReader(t, cfg)
	// Once this event is through, the session's first status update (and
	// check) is behind it.
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('b', 'img_gen', 'done')`)
	waitMessages(t, e, e.Topic("img_gen"), 2)
	e.Exec(t, `ALTER PUBLICATION `+e.Publication+` SET (publish = 'insert, update')`)
	pid := waitSlotActive(t, e)
	e.Exec(t, `SELECT pg_terminate_backend($1)`, pid)
	if err := x.stopped(t, 30*time.Second); err == nil || !strings.Contains(err.Error(), "does not publish delete, truncate") || !strings.Contains(err.Error(), fix) {
		t.Fatalf("publication altered, then a reconnect: %v", err)
	}
	if n := x.r.Stats().Reconnects.Load(); n != 1 {
		t.Fatalf("%d reconnects, want the one that found the publication changed", n)
	}
}

// TestDroppedPublicationStopsAndRecreateSlotRecovers is issue 11 item 5b:
// DROP PUBLICATION under a running reader stops it with one sentence naming
// jobstream migrate (no retry loop). After migrate the publication exists
// again, but the slot's WAL cannot be decoded past the moment it was gone:
// the reader says so, and how out (RecreateSlot), instead of looping.
// RecreateSlot drops the slot and takes a fresh snapshot, which re-reads
// every row, those changed in the gap included, as op "r" events.
func TestDroppedPublicationStopsAndRecreateSlotRecovers(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	x := runReader(t, readerConfig(e))
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('a', 'img_gen', 'done')`)
	waitMessages(t, e, e.Topic("img_gen"), 1)

	e.Exec(t, `DROP PUBLICATION `+e.Publication)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('b', 'img_gen', 'done')`)
	err := x.stopped(t, 30*time.Second)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("publication %q does not exist", e.Publication)) || !strings.Contains(err.Error(), "run jobstream migrate") {
		t.Fatalf("publication dropped under a running reader: %v", err)
	}

	migrateChanges(t, e)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('c', 'img_gen', 'done')`)
	start := time.Now()
	err = runReader(t, readerConfig(e)).stopped(t, 60*time.Second)
	if err == nil || !strings.Contains(err.Error(), "can no longer decode") || !strings.Contains(err.Error(), "RecreateSlot") ||
		!strings.Contains(err.Error(), "re-read from the table as snapshot events") {
		t.Fatalf("publication dropped and created again: %v", err)
	}
	t.Logf("stopped %s after start: %v", time.Since(start).Round(time.Millisecond), err)

	var logs harness.Buffer
	x = runReader(t, func() cdc.Config {
		cfg := readerConfig(e)
		cfg.RecreateSlot, cfg.Logger = true, logTo(&logs)
		return cfg
	}())
	msgs := waitMessages(t, e, e.Topic("img_gen"), 4) // a (streamed), then a, b, c (snapshot)
	reads := map[string]bool{}
	for _, m := range msgs {
		if env := decode(t, m); env.Op == "r" {
			reads[schema.JobIDFromKey(m.Key)] = true
		}
	}
	if !reads["a"] || !reads["b"] || !reads["c"] {
		t.Fatalf("snapshot after RecreateSlot read %v, want a, b, c", reads)
	}
	if !strings.Contains(logs.String(), "re-reads every row's current state as op r events") {
		t.Fatalf("RecreateSlot did not say what it does:\n%s", logs.String())
	}
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('d', 'img_gen', 'done')`)
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		return x.r.Stats().Inserts.Load() == 1, "the insert after the new snapshot was not streamed"
	})
	if n := x.r.Stats().SlotGaps.Load(); n != 1 {
		t.Fatalf("%d slot gaps counted, want 1", n)
	}
	// A reconnect does not recreate the slot again.
	pid := waitSlotActive(t, e)
	e.Exec(t, `SELECT pg_terminate_backend($1)`, pid)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('e', 'img_gen', 'done')`)
	waitMessages(t, e, e.Topic("img_gen"), 6)
	if n := x.r.Stats().SnapshotReads.Load(); n != 3 {
		t.Fatalf("%d snapshot reads, want 3 (the slot was recreated at the reconnect)", n)
	}
}
