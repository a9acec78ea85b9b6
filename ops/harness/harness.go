// Package harness is the test environment every jobstream test shares: one
// dev stack per test binary (ops/devstack: a throwaway Postgres with
// wal_level=logical, run as the postgres OS user when the tests run as root,
// and the embedded broker, in a temporary folder removed at the end), and
// for each test its own database, slot, publication and topic prefix, so
// tests run in parallel and clean up after themselves. It also runs what a
// test drives (an in-process reader, StartReader; any blocking function, Go;
// a jobstream process, Env.StartProcess) and stops it when the test ends.
package harness

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/ops/broker"
	"github.com/jobstream/jobstream/ops/devstack"
	"github.com/jobstream/jobstream/ops/localpg"
	"github.com/jobstream/jobstream/schema"
)

var (
	shared  *devstack.Stack
	counter atomic.Int64
)

// Main starts the shared Postgres and broker, runs the tests, and stops them.
// Call it from TestMain.
func Main(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	flag.Parse()
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		// Fuzzing runs pure functions in many worker processes: no servers.
		return m.Run()
	}
	st, err := devstack.Start(context.Background(), devstack.Config{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "harness: start postgres and broker:", err)
		return 1
	}
	defer st.Close()
	shared = st
	return m.Run()
}

// Env is one test's share of the environment.
type Env struct {
	// DB is the test's own database; DatabaseURL connects to it.
	DB          string
	DatabaseURL string
	// Brokers holds the shared broker's address.
	Brokers []string
	// Slot, Publication and Prefix are unique to the test.
	Slot        string
	Publication string
	Prefix      string
	// Postgres is the shared server (for tests that stop or crash it).
	Postgres *localpg.Postgres
	// Broker is the shared broker (for fault injection).
	Broker *broker.Broker
	// Dir is a folder the test may use, readable by the postgres OS user.
	Dir string

	mu   sync.Mutex // guards pool: the test and its goroutines may ask for it at once
	pool *pgxpool.Pool
}

var nonIdent = regexp.MustCompile(`[^a-z0-9_]+`)

// New gives t its own database (migrated), slot name, publication and topic
// prefix, all removed when t ends.
func New(t testing.TB) *Env {
	t.Helper()
	if shared == nil {
		t.Fatal("harness: call harness.Main(m) from TestMain")
	}
	n := counter.Add(1)
	name := nonIdent.ReplaceAllString(strings.ToLower(t.Name()), "_")
	if len(name) > 40 {
		name = name[:40]
	}
	id := fmt.Sprintf("t%d_%s_%d", os.Getpid()%100000, name, n)
	ctx := context.Background()
	url, err := shared.CreateDatabase(ctx, id)
	if err != nil {
		t.Fatalf("harness: %v", err)
	}
	e := &Env{
		DB:          id,
		DatabaseURL: url,
		Brokers:     slices.Clone(shared.Brokers),
		Slot:        id,
		Publication: schema.DefaultPublication,
		Prefix:      strings.ReplaceAll(id, "_", "-"),
		Postgres:    shared.Postgres,
		Broker:      shared.Broker,
	}
	t.Cleanup(func() {
		e.closePool()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		shared.DropDatabase(ctx, id) // fails only if the test stopped Postgres for good
	})
	dir, err := os.MkdirTemp(shared.Dir, "t-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755) // readable by the postgres OS user
	e.Dir = dir
	return e
}

// Pool returns a connection pool to the test's database, opened on first
// use; the test and its goroutines may call it at once.
func (e *Env) Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.pool == nil {
		p, err := pgxpool.New(context.Background(), e.DatabaseURL)
		if err != nil {
			t.Fatal(err)
		}
		e.pool = p
	}
	return e.pool
}

func (e *Env) closePool() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.pool != nil {
		e.pool.Close() // a second Close does nothing
	}
}

// Copy returns a copy of e's fields for a test that points some of them
// elsewhere (another database, another server). The copy has a pool of its
// own, opened on first use and closed when t ends.
func (e *Env) Copy(t testing.TB) *Env {
	c := &Env{DB: e.DB, DatabaseURL: e.DatabaseURL, Brokers: e.Brokers, Slot: e.Slot, Publication: e.Publication,
		Prefix: e.Prefix, Postgres: e.Postgres, Broker: e.Broker, Dir: e.Dir}
	t.Cleanup(c.closePool)
	return c
}

// Exec runs sql in the test's database.
func (e *Env) Exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	if _, err := e.Pool(t).Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("exec %q: %v", sql, err)
	}
}

// Count returns the single integer sql selects.
func (e *Env) Count(t testing.TB, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := e.Pool(t).QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("query %q: %v", sql, err)
	}
	return n
}

// Dump renders the rows sql selects, one per line, for failure messages.
func (e *Env) Dump(t testing.TB, sql string, args ...any) string {
	t.Helper()
	return DumpRows(e.Pool(t), sql, args...)
}

// DumpRows renders the rows sql selects through pool, one per line.
func DumpRows(pool *pgxpool.Pool, sql string, args ...any) string {
	rows, err := pool.Query(context.Background(), sql, args...)
	if err != nil {
		return "dump: " + err.Error()
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		vals, _ := rows.Values()
		fmt.Fprintln(&b, vals...)
	}
	return b.String()
}

// Topic returns the name of step's topic under the test's prefix.
func (e *Env) Topic(step string) string { return e.Topics().Step(step) }

// Topics returns the names of the test's topics and consumer groups.
func (e *Env) Topics() schema.Topics { return schema.Topics{Prefix: e.Prefix} }

// Migrate applies schema.Migrate to the database at url (a Postgres of

// StartBroker starts an embedded broker of the test's own (a cluster of
// cfg.Nodes), closed at the test's end; the test may close it sooner.
// Listen defaults to a free loopback port.
func StartBroker(t testing.TB, cfg broker.Config) *broker.Broker {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	b, err := broker.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

// the test's own, or a jobs table the test re-created).
func Migrate(t testing.TB, url string) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := schema.Migrate(context.Background(), conn, schema.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// ReadTopic returns every message now in topic, in partition then offset order.
func (e *Env) ReadTopic(t testing.TB, topic string) []kafka.Message {
	t.Helper()
	// A machine loaded by parallel tests can starve the broker for a
	// moment: a dial that times out is tried again.
	var err error
	for try := 0; try < 3; try++ {
		var out []kafka.Message
		if out, err = ReadTopicAt(e.Brokers[0], topic); err == nil {
			return out
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			break
		}
		time.Sleep(time.Second)
	}
	t.Fatal(err)
	return nil
}

// ReadTopicAt returns every message now in topic on the broker at addr, in
// partition then offset order. A topic that does not exist is an error
// wrapping kafka.UnknownTopicOrPartition.
func ReadTopicAt(addr, topic string) ([]kafka.Message, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := kafka.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil {
		return nil, fmt.Errorf("read partitions of %s: %w", topic, err)
	}
	var out []kafka.Message
	for _, p := range parts {
		pc, err := kafka.DialLeader(ctx, "tcp", addr, topic, p.ID)
		if err != nil {
			return nil, err
		}
		first, last, err := pc.ReadOffsets()
		if err == nil {
			_, err = pc.Seek(first, kafka.SeekAbsolute)
		}
		for off := first; err == nil && off < last; {
			pc.SetReadDeadline(time.Now().Add(10 * time.Second))
			var m kafka.Message
			if m, err = pc.ReadMessage(10 << 20); err != nil {
				err = fmt.Errorf("read %s/%d at %d: %w", topic, p.ID, off, err)
				break
			}
			out = append(out, m)
			off = m.Offset + 1
		}
		pc.Close()
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Eventually waits up to timeout for cond to hold, polling; on timeout it
// fails t with the last state cond described.
func Eventually(t testing.TB, timeout time.Duration, cond func() (ok bool, state string)) {
	t.Helper()
	if err := Poll(timeout, cond); err != nil {
		t.Fatal(err)
	}
}

// Poll is Eventually for a test that goes on after a timeout: it waits up
// to timeout for cond to hold and returns an error naming the last state
// cond described if it did not.
func Poll(timeout time.Duration, cond func() (ok bool, state string)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("condition not met within %s: %s", timeout, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Binary builds bin/jobstream once per test binary and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			buildErr = err
			return
		}
		root := filepath.Dir(strings.TrimSpace(string(out)))
		binPath = filepath.Join(shared.Dir, "jobstream")
		cmd := exec.Command("go", "build", "-o", binPath, "./ops/jobstream")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}
