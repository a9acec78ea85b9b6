package devstack

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/jobstream/jobstream/ops/broker"
	"github.com/jobstream/jobstream/ops/localpg"
	"github.com/jobstream/jobstream/schema"
)

// Config configures Start. Zero fields take their defaults.
type Config struct {
	// Dir is the stack's folder: Postgres data in Dir/pg (its log in
	// Dir/pg.log), broker data in Dir/broker. Start wipes it first, and the
	// caller owns it. Default: a fresh temporary folder that Close removes.
	Dir string
	// PostgresPort is Postgres's loopback port (default: a free one).
	PostgresPort int
	// PostgresSettings are extra -c name=value server settings, on top of
	// wal_level=logical and the rest localpg sets (later ones win).
	PostgresSettings map[string]string
	// PostgresLog receives the server's output (default: the file Dir/pg.log).
	PostgresLog io.Writer
	// Migrate applies schema.Migrate to the postgres database once the
	// server runs; Stack.Migrated says what it changed.
	Migrate bool
	// BrokerListen is the broker's host:port (default 127.0.0.1:0, a free port).
	BrokerListen string
	// BrokerDataDir persists the broker's topics, offsets and groups
	// (default Dir/broker).
	BrokerDataDir string
	// NoBroker starts Postgres alone, for a caller that runs brokers of its
	// own (the bench starts a fresh `jobstream broker` process per scenario).
	NoBroker bool
}

// Stack is a running Postgres and broker.
type Stack struct {
	// Dir is the stack's folder (Config.Dir, or the temporary one Start made).
	Dir string
	// Postgres is the server (for tests that stop or crash it).
	Postgres *localpg.Postgres
	// DatabaseURL connects to the postgres database as the superuser.
	DatabaseURL string
	// Migrated holds the changes Config.Migrate made, one sentence each.
	Migrated []string
	// Broker is the embedded broker; nil with Config.NoBroker.
	Broker *broker.Broker
	// Brokers holds the broker's address; empty with Config.NoBroker.
	Brokers []string

	temp     bool // Dir is ours: Close removes it
	stopOnce sync.Once
	stopErr  error
}

// Start wipes (or makes) the stack's folder, starts Postgres, migrates it
// if asked, and starts the broker. It returns once every part is ready; on
// an error, or if ctx ends first, it stops what it started.
func Start(ctx context.Context, cfg Config) (_ *Stack, err error) {
	s := &Stack{}
	if s.Dir, s.temp, err = prepare(cfg.Dir); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	s.Postgres, err = localpg.Start(ctx, filepath.Join(s.Dir, "pg"), localpg.Options{
		Port: cfg.PostgresPort, Settings: cfg.PostgresSettings, Log: cfg.PostgresLog,
	})
	if err != nil {
		return nil, err
	}
	s.DatabaseURL = s.Postgres.URL("postgres")
	if !cfg.NoBroker {
		s.Broker, err = broker.Start(broker.Config{
			Listen:  cmp.Or(cfg.BrokerListen, "127.0.0.1:0"),
			DataDir: cmp.Or(cfg.BrokerDataDir, filepath.Join(s.Dir, "broker")),
		})
		if err != nil {
			return nil, err
		}
		s.Brokers = []string{s.Broker.Addr()}
	}
	if cfg.Migrate {
		if s.Migrated, err = migrate(ctx, s.DatabaseURL); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// prepare returns the stack's folder, empty and enterable by the postgres
// OS user: dir wiped and made again, or a fresh temporary folder (temp).
func prepare(dir string) (_ string, temp bool, err error) {
	if dir == "" {
		if dir, err = os.MkdirTemp("", "jobstream-"); err != nil {
			return "", false, err
		}
		temp = true
	} else {
		if dir, err = filepath.Abs(dir); err != nil {
			return "", false, err
		}
		// A server left by a killed run is stopped, its files removed
		// (with the private folder it lived in if the postgres OS user
		// could not enter dir).
		localpg.StopStale(filepath.Join(dir, "pg"))
		if err := remove(dir); err != nil {
			return "", false, fmt.Errorf("clean %s: %w", dir, err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", false, err
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil { // MkdirTemp makes it 0700
		if temp {
			os.RemoveAll(dir)
		}
		return "", false, err
	}
	return dir, temp, nil
}

// remove deletes a stack's folder and the private folder its Postgres data
// may link to.
func remove(dir string) error {
	return errors.Join(localpg.Remove(filepath.Join(dir, "pg")), os.RemoveAll(dir))
}

// URL returns a connection URL for database db as the superuser.
func (s *Stack) URL(db string) string { return s.Postgres.URL(db) }

// Stop closes the broker, then shuts Postgres down; the folders stay.
// Later calls do nothing and return the first call's result.
func (s *Stack) Stop() error {
	s.stopOnce.Do(func() {
		if s.Broker != nil {
			s.Broker.Close()
		}
		if s.Postgres != nil {
			s.stopErr = s.Postgres.Stop()
		}
	})
	return s.stopErr
}

// Close stops the stack and removes its folder if Start made it; a Dir the
// caller named stays.
func (s *Stack) Close() error {
	err := s.Stop()
	if s.temp {
		err = errors.Join(err, remove(s.Dir))
	}
	return err
}

// CreateDatabase creates database name (dropping one left by an earlier
// run), migrates it with schema.Migrate, and returns its URL. Name must be
// a plain identifier (lower-case letters, digits, _).
func (s *Stack) CreateDatabase(ctx context.Context, name string) (string, error) {
	if !schema.ValidIdent(name) {
		return "", fmt.Errorf("database name %q is not a plain identifier (letters, digits, _)", name)
	}
	admin, err := pgx.Connect(ctx, s.DatabaseURL)
	if err != nil {
		return "", err
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
		return "", fmt.Errorf("drop database %s: %w", name, err)
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	url := s.URL(name)
	if _, err := migrate(ctx, url); err != nil {
		return "", fmt.Errorf("migrate %s: %w", name, err)
	}
	return url, nil
}

// DropDatabase drops database name and the replication slots in it or
// named after it, so that no slot holds WAL (or decodes it) afterwards. A
// client may still be letting go of a slot: it retries for up to 10s.
func (s *Stack) DropDatabase(ctx context.Context, name string) error {
	admin, err := pgx.Connect(ctx, s.DatabaseURL)
	if err != nil {
		return err
	}
	defer admin.Close(context.Background())
	for i := 0; i < 100; i++ {
		_, err := admin.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
			WHERE database = $1 OR slot_name = $1`, name)
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	return nil
}

// migrate applies schema.Migrate to the database at url.
func migrate(ctx context.Context, url string) ([]string, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	return schema.Migrate(ctx, conn, schema.MigrateOptions{})
}
