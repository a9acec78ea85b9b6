package ops_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
)

// TestLeastPrivilegeRoles: the reader and a worker do their whole job as the
// roles of schema/roles.sql, and the worker role cannot do more.
func TestLeastPrivilegeRoles(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	e.Exec(t, `SELECT pg_advisory_lock(42)`) // roles are cluster-wide; one test at a time creates them
	e.Exec(t, schema.RolesSQL)
	e.Exec(t, `SELECT pg_advisory_unlock(42)`)
	as := func(role string) string { return strings.Replace(e.DatabaseURL, "postgres@", role+"@", 1) }

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	harness.StartReader(t, ctx, cdc.Config{DatabaseURL: as("jobstream_reader"), Brokers: e.Brokers, Slot: e.Slot, TopicPrefix: e.Prefix})
	w, err := consumers.New(consumers.Config{DatabaseURL: as("jobstream_worker"), Brokers: e.Brokers, Step: "vlm_analyze", TopicPrefix: e.Prefix,
		Handler: func(context.Context, consumers.Job) (json.RawMessage, error) {
			return json.RawMessage(`{"ok": true}`), nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	werr := make(chan error, 1)
	go func() { werr <- w.Run(ctx) }()
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('r1', 'img_gen', 'done')`)
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		select {
		case err := <-werr:
			t.Fatalf("worker as jobstream_worker: %v", err)
		default:
		}
		n := e.Count(t, `SELECT count(*) FROM jobs WHERE job_id = 'r1' AND current_step = 'vlm_analyze' AND status = 'done'`)
		return n == 1, "r1 not at (vlm_analyze, done)"
	})
	conn, err := pgx.Connect(ctx, as("jobstream_worker"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, sql := range []string{`INSERT INTO jobs (job_id) VALUES ('x')`, `DELETE FROM jobs`, `UPDATE jobs SET payload = '{}'`} {
		if _, err := conn.Exec(ctx, sql); err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("worker role ran %q: %v", sql, err)
		}
	}
}
