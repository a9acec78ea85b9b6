package consumers_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/ops/localpg"
)

// ownPostgres is a Postgres server of the test's own, migrated and with a
// reader streaming from it, which the test may take down and start again
// without disturbing the shared one.
type ownPostgres struct {
	e       *harness.Env
	dir     string
	port    int
	running *localpg.Postgres
}

func newOwnPostgres(t *testing.T) *ownPostgres {
	t.Helper()
	base := harness.New(t)
	o := &ownPostgres{dir: filepath.Join(base.Dir, "pg")}
	pg, err := localpg.Start(context.Background(), o.dir, localpg.Options{})
	if err != nil {
		t.Fatal(err)
	}
	o.running, o.port = pg, pg.Port
	t.Cleanup(func() {
		if o.running != nil {
			o.running.Stop()
		}
	})
	o.e = base.Copy(t)
	o.e.DB, o.e.DatabaseURL, o.e.Postgres = "postgres", pg.URL("postgres"), pg
	harness.Migrate(t, o.e.DatabaseURL)
	startReader(t, o.e)
	return o
}

// crash stops the server at once (a fast shutdown would wait for the
// reader's replication connection); the test's pool forgets its connections.
func (o *ownPostgres) crash(t *testing.T) {
	t.Helper()
	o.e.Pool(t).Reset()
	o.running.Crash()
	o.running = nil
}

// restart starts the server again on its port.
func (o *ownPostgres) restart(t *testing.T) {
	t.Helper()
	pg, err := localpg.Start(context.Background(), o.dir, localpg.Options{Port: o.port})
	if err != nil {
		t.Fatal(err)
	}
	o.running = pg
}

// TestServeAcrossPostgresOutage: Postgres goes away for three leases while
// a serve process runs a batch. The process, its model loaded, is kept: no
// restart, no job failed or fenced; the batch's answers are written once
// Postgres is back, and jobs that come after run on the same process.
func TestServeAcrossPostgresOutage(t *testing.T) {
	t.Parallel()
	pg := newOwnPostgres(t)
	e := pg.e
	const lease = 2 * time.Second
	marker := "pg-outage"
	log, sink := logSink(t, "worker")
	w := startWorker(t, e, consumers.Config{Logger: log, Lease: lease, MaxAttempts: 3, Concurrency: 1, Batch: 4,
		BatchWait: 100 * time.Millisecond, BatchHandler: consumers.Serve(serveArgv(t, marker, "MODEL_LOAD_SECONDS=0.2")...)})
	<-w.Ready()
	pids := servePids(marker)
	insertN(t, e, "k", 4, `{"sleep": 2}`)
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		return strings.Contains(sink.String(), `line="running `), "the serve process has not started a batch"
	})
	pg.crash(t)
	time.Sleep(3 * lease)
	pg.restart(t)
	insertN(t, e, "after", 6, `{}`)
	harness.Eventually(t, 90*time.Second, func() (bool, string) {
		done := e.Count(t, `SELECT count(*) FROM jobs WHERE current_step = $1 AND status = 'done'`, step)
		return done == 10, fmt.Sprintf("%d of 10 jobs done; %s", done, stats(w))
	})
	runs := e.Dump(t, `SELECT job_id, chain, attempt, outcome, error FROM jobstream_runs ORDER BY job_id, attempt`)
	if n := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE outcome = 'done'`); n != 10 {
		t.Errorf("%d runs done for 10 jobs, want one each:\n%s", n, runs)
	}
	if n := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE outcome = 'failed'`); n != 0 {
		t.Errorf("%d attempts failed across the outage, want none:\n%s", n, runs)
	}
	if n := w.Stats().Fenced.Load() + w.Stats().Expired.Load(); n != 0 {
		t.Errorf("%d runs fenced or expired, want none", n)
	}
	if r := w.Stats().ServeRestarts.Load(); r != 0 {
		t.Errorf("ServeRestarts = %d: the outage restarted the serve process (its model reloaded)", r)
	}
	for id, r := range serveResults(t, e) {
		if len(pids) != 1 || r.PID != pids[0] {
			t.Errorf("job %s ran in process %d, want the one started before the outage (%v)", id, r.PID, pids)
		}
	}
}
