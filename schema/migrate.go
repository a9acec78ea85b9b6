package schema

import (
	"context"
	_ "embed"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Column is a column jobstream needs on the jobs table.
type Column struct {
	Name string
	// Type is the SQL type and default used when the column must be added.
	Type string
}

// JobsColumns lists the columns of the jobs table that jobstream reads or
// writes. A user's table may have more; the envelope carries them all.
var JobsColumns = []Column{
	{"job_id", "text"},
	{"current_step", "text"},
	{"status", "text NOT NULL DEFAULT 'pending'"},
	{"payload", "jsonb NOT NULL DEFAULT '{}'::jsonb"},
	{"results", "jsonb NOT NULL DEFAULT '{}'::jsonb"},
	{"error", "text"},
	{"updated_at", "timestamptz NOT NULL DEFAULT now()"},
}

//go:embed migrations/002_runs.sql
var runsSQL string

// SlotsSQL creates jobstream_slots, where the reader records whether a
// slot's initial snapshot completed. Idempotent; Migrate runs it, and the
// reader runs it too before its first snapshot.
//
//go:embed migrations/003_slots.sql
var SlotsSQL string

//go:embed migrations/004_console.sql
var consoleSQL string

// DefaultPublication is the publication name Migrate creates when none is given.
const DefaultPublication = "jobstream"

// MigrateOptions says what Migrate creates.
type MigrateOptions struct {
	// Publication is the name of the publication for the jobs table
	// (default "jobstream").
	Publication string
}

// Migrate creates the jobs table (or adds the columns it lacks), the
// jobstream_runs ledger, the jobstream_slots table and the publication,
// idempotently. It returns one
// sentence per change it made; an empty slice means nothing was missing.
func Migrate(ctx context.Context, conn *pgx.Conn, opts MigrateOptions) ([]string, error) {
	pub := opts.Publication
	if pub == "" {
		pub = DefaultPublication
	}
	if !ValidIdent(pub) {
		return nil, fmt.Errorf("publication name %q is not a plain identifier (letters, digits, _)", pub)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // no-op after commit

	// One migrator at a time.
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(7428091)`); err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	m := &migration{tx: tx}
	if err := m.jobs(ctx); err != nil {
		return nil, err
	}
	for _, t := range []struct{ name, sql string }{{"jobstream_runs", runsSQL}, {"jobstream_slots", SlotsSQL}} {
		if err := m.table(ctx, t.name, t.sql); err != nil {
			return nil, err
		}
	}
	if err := m.index(ctx, "jobs_current_step_status", consoleSQL); err != nil {
		return nil, err
	}
	if err := m.publication(ctx, pub); err != nil {
		return nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("commit: %w", err)
	}
	return m.changes, nil
}

// migration is one run of Migrate: its transaction and the changes made.
type migration struct {
	tx      pgx.Tx
	changes []string
}

// exec runs sql and records change, or fails saying what it was doing.
func (m *migration) exec(ctx context.Context, change, doing, sql string) error {
	if _, err := m.tx.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%s: %w", doing, err)
	}
	m.changes = append(m.changes, change)
	return nil
}

// jobs creates the jobs table, or adds the columns it lacks and checks its
// job_id and primary key.
func (m *migration) jobs(ctx context.Context) error {
	var exists bool
	if err := m.tx.QueryRow(ctx, `SELECT to_regclass('jobs') IS NOT NULL`).Scan(&exists); err != nil {
		return fmt.Errorf("look up jobs: %w", err)
	}
	if !exists {
		defs := make([]string, 0, len(JobsColumns)+1)
		for _, c := range JobsColumns {
			defs = append(defs, c.Name+" "+c.Type)
		}
		defs = append(defs, "PRIMARY KEY (job_id)")
		return m.exec(ctx, "created table jobs", "create jobs", "CREATE TABLE jobs (\n  "+strings.Join(defs, ",\n  ")+"\n)")
	}
	rows, err := m.tx.Query(ctx, `SELECT attname FROM pg_attribute
		WHERE attrelid = 'jobs'::regclass AND attnum > 0 AND NOT attisdropped`)
	if err != nil {
		return fmt.Errorf("read jobs columns: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("read jobs columns: %w", err)
	}
	have := map[string]bool{}
	for _, n := range names {
		have[n] = true
	}
	if !have["job_id"] {
		return fmt.Errorf("table jobs exists but has no job_id column; jobstream keys every event by job_id, so add it (text primary key) or point DATABASE_URL at another database")
	}
	for _, c := range JobsColumns[1:] {
		if have[c.Name] {
			continue
		}
		if err := m.exec(ctx, fmt.Sprintf("added column jobs.%s %s", c.Name, c.Type), "add column jobs."+c.Name,
			"ALTER TABLE jobs ADD COLUMN "+c.Name+" "+c.Type); err != nil {
			return err
		}
	}
	var hasPK bool
	if err := m.tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = 'jobs'::regclass AND indisprimary)`).Scan(&hasPK); err != nil {
		return fmt.Errorf("look up jobs primary key: %w", err)
	}
	if !hasPK {
		return fmt.Errorf("table jobs has no primary key; logical replication needs one to identify rows: ALTER TABLE jobs ADD PRIMARY KEY (job_id)")
	}
	return nil
}

// table runs the idempotent migration sql of table name, saying so when it
// created the table.
func (m *migration) table(ctx context.Context, name, sql string) error {
	var exists bool
	if err := m.tx.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, name).Scan(&exists); err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if _, err := m.tx.Exec(ctx, sql); err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	if !exists {
		m.changes = append(m.changes, "created table "+name)
	}
	return nil
}

// index runs the idempotent sql that creates index name, saying so when it
// created it.
func (m *migration) index(ctx context.Context, name, sql string) error {
	var exists bool
	if err := m.tx.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, name).Scan(&exists); err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if exists {
		return nil
	}
	return m.exec(ctx, "created index "+name, "create index "+name, sql)
}

// publication creates the publication of the jobs table, adds the table to
// it, or makes it publish every operation again.
func (m *migration) publication(ctx context.Context, pub string) error {
	var pubExists, pubHasJobs, pubAllOps bool
	if err := m.tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1),
		EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = current_schema() AND tablename = 'jobs'),
		coalesce((SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate FROM pg_publication WHERE pubname = $1), true)`, pub).
		Scan(&pubExists, &pubHasJobs, &pubAllOps); err != nil {
		return fmt.Errorf("look up publication: %w", err)
	}
	// The reader needs every change of the table: a publication that lacks
	// an operation (ALTER PUBLICATION ... SET (publish = 'insert')) has
	// Postgres drop those changes for good.
	if pubExists && !pubAllOps {
		if err := m.exec(ctx, "publication "+pub+" publishes insert, update, delete and truncate again",
			"set the operations of publication "+pub, "ALTER PUBLICATION "+pub+" SET (publish = 'insert, update, delete, truncate')"); err != nil {
			return err
		}
	}
	switch {
	case !pubExists:
		return m.exec(ctx, "created publication "+pub+" for table jobs", "create publication", "CREATE PUBLICATION "+pub+" FOR TABLE jobs")
	case !pubHasJobs:
		return m.exec(ctx, "added table jobs to publication "+pub, "add jobs to publication", "ALTER PUBLICATION "+pub+" ADD TABLE jobs")
	}
	return nil
}

// ValidIdent reports whether s can be used unquoted as a Postgres name
// (publication, slot): lower-case letters, digits and underscores, at most 63.
func ValidIdent(s string) bool {
	if s == "" || len(s) > 63 || (s[0] >= '0' && s[0] <= '9') {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			return false
		}
	}
	return true
}
