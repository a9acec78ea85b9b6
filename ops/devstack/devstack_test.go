package devstack

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/jobstream/jobstream/ops/localpg"
	"github.com/jobstream/jobstream/schema/kafkaconn"
)

// TestStackTemporary: a stack with no Dir runs a logical-replication
// Postgres and a broker in a folder of its own, creates and drops migrated
// databases with their slots, stops twice without harm, and Close removes
// its folder.
func TestStackTemporary(t *testing.T) {
	if _, err := localpg.BinDir(); err != nil {
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := Start(ctx, Config{Migrate: true, PostgresSettings: map[string]string{"application_name": "devstack_test"}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if len(st.Migrated) == 0 || len(st.Brokers) != 1 || st.Broker == nil {
		t.Errorf("migrated %q, brokers %q", st.Migrated, st.Brokers)
	}
	if err := (kafkaconn.Broker{Addrs: st.Brokers}).Ping(ctx, 5*time.Second); err != nil {
		t.Errorf("broker: %v", err)
	}
	url, err := st.CreateDatabase(ctx, "devstack_one")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	var level string
	var jobs bool
	err = conn.QueryRow(ctx, `SELECT current_setting('wal_level'), to_regclass('jobs') IS NOT NULL`).Scan(&level, &jobs)
	if err == nil {
		_, err = conn.Exec(ctx, `SELECT pg_create_logical_replication_slot('devstack_slot', 'pgoutput')`)
	}
	conn.Close(ctx)
	if err != nil || level != "logical" || !jobs {
		t.Fatalf("wal_level %q, jobs table %v: %v", level, jobs, err)
	}
	if err := st.DropDatabase(ctx, "devstack_one"); err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(ctx, st.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	var left int
	err = admin.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_replication_slots)
		+ (SELECT count(*) FROM pg_database WHERE datname = 'devstack_one')`).Scan(&left)
	admin.Close(ctx)
	if err != nil || left != 0 {
		t.Errorf("%d slots or databases left after DropDatabase (%v)", left, err)
	}
	if _, err := st.CreateDatabase(ctx, "Not-Plain"); err == nil {
		t.Error("CreateDatabase took a name that is not a plain identifier")
	}
	if err := st.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := st.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(st.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Close left the temporary folder %s (%v)", st.Dir, err)
	}
}

// TestStackDirStartsClean: a stack in a named folder wipes what an earlier
// run left there (a file, a server's data), and leaves the folder after Close.
func TestStackDirStartsClean(t *testing.T) {
	if _, err := localpg.BinDir(); err != nil {
		t.Skip(err)
	}
	dir := filepath.Join(t.TempDir(), "stack")
	t.Cleanup(func() { localpg.Remove(filepath.Join(dir, "pg")) })
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, "left-over")
	if err := os.WriteFile(stale, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := Start(ctx, Config{Dir: dir, NoBroker: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s survived Start (%v)", stale, err)
	}
	if st.Broker != nil || len(st.Brokers) != 0 {
		t.Errorf("NoBroker started a broker at %q", st.Brokers)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "pg", "PG_VERSION")); err != nil {
		t.Errorf("Close removed the caller's folder: %v", err)
	}
}
