package ops_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jobstream/jobstream/ops"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/ops/localpg"
)

func runMain(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	code = ops.Main(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

// TestBadUsage: one clear sentence naming the fix, exit 2 for usage and 1 for
// a runtime failure.
func TestBadUsage(t *testing.T) {
	e := harness.New(t)
	t.Setenv("DATABASE_URL", "")
	t.Setenv("KAFKA_BROKERS", "")
	db, kafka := "--database-url="+e.DatabaseURL, "--brokers="+e.Brokers[0]
	pipeline := func(name, body string) string {
		p := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	unknownKey := pipeline("unknown.json", `{"steps": ["img_gen", "planner"], "retries": 3}`)
	cycle := pipeline("cycle.json", `{"steps": ["img_gen", "planner", "overlay", "planner"]}`)
	badWorker := pipeline("worker.json", `{"steps": ["img_gen", "planner"], "workers": {"planner": {"bacth": 8}}}`)
	worker := func(extra ...string) []string {
		return append(append([]string{"worker", db, kafka, "--step", "planner"}, extra...), "--", "true")
	}
	// The README's URL form (no sslmode): pgx tries TLS, which the test
	// server refuses, then plaintext, where the server names the cause.
	plainURL := strings.TrimSuffix(e.DatabaseURL, "?sslmode=disable")
	nobody := "--database-url=" + strings.Replace(plainURL, "postgres://postgres@", "postgres://nobody:secret@", 1)
	noDB := "--database-url=" + plainURL[:strings.LastIndex(plainURL, "/")] + "/no_such_db"
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown command", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"unknown flag", []string{"reader", "--nope"}, 2, "reader has no flag --nope; its flags are --brokers, --database-url"},
		{"misspelt flag", worker("--stepp", "planner"), 2, "worker has no flag --stepp; did you mean --step?"},
		{"flag cut short", worker("--conc", "2"), 2, "did you mean --concurrency?"},
		{"duration without unit", worker("--lease", "1"), 2, `--lease "1" is not a duration; use a number with a unit, such as 30s or 2m`},
		{"flag without its value", []string{"worker", "--lease"}, 2, "--lease needs a duration after it"},
		{"not a boolean", []string{"reader", db, kafka, "--tombstones=maybe"}, 2, `--tombstones "maybe" is not true or false`},
		{"number too large", worker("--concurrency", "99999999999999999999"), 2, "too large"},
		{"gpu that is no id", worker("--gpus", "0,x"), 2, `"x" is not a GPU id`},
		{"gpu uuid", worker("--gpus", "GPU-8f6c0f2a-1b2c-3d4e-5f60-123456789abc,GPU-8f6c0f2a-1b2c-3d4e-5f60-123456789abc"), 2, "repeated GPU"},
		{"migrate with an argument", []string{"migrate", db, "extra"}, 2, `migrate takes no arguments, got "extra"`},
		{"reader with an argument", []string{"reader", db, kafka, "--", "slot2"}, 2, `reader takes no arguments, got "slot2"`},
		{"status with an argument", []string{"status", db, kafka, "now"}, 2, `status takes no arguments, got "now"`},
		{"broker with an argument", []string{"broker", "9092"}, 2, `broker takes no arguments, got "9092"`},
		{"database url without scheme", []string{"migrate", "--database-url=localhost:33077"}, 2, `"localhost:33077" is not a postgres:// URL or a key=value DSN; use postgres://`},
		{"database url with a password and no scheme", []string{"migrate", "--database-url=u:secret@localhost/db"}, 2, "is not a postgres:// URL"},
		{"database url with a bad port", []string{"status", "--database-url=postgres://u:secret@127.0.0.1:abc/x", kafka}, 2, "cannot be parsed (invalid port)"},
		{"unknown role, no sslmode", []string{"migrate", nobody}, 1, `role "nobody" does not exist`},
		{"unknown database, no sslmode", []string{"migrate", noDB}, 1, `database "no_such_db" does not exist`},
		{"replay without a range", []string{"replay", db, kafka, "--step", "planner", "--dry-run"}, 2, "no range given"},
		{"replay of all with a range", []string{"replay", db, kafka, "--step", "planner", "--all", "--job", "j1"}, 2, "--all replays the whole topic"},
		{"unknown step", []string{"worker", db, kafka, "--step", "paint", "--", "true"}, 2, `unknown step "paint"`},
		{"first step", []string{"worker", db, kafka, "--step", "img_gen", "--", "true"}, 2, "first step"},
		{"no command", []string{"worker", db, kafka, "--step", "planner"}, 2, "pass it after --"},
		{"concurrency out of range", []string{"worker", db, kafka, "--step", "planner", "--concurrency", "0", "--", "true"}, 2, "out of range"},
		{"missing DATABASE_URL", []string{"reader", kafka}, 2, "DATABASE_URL"},
		{"missing KAFKA_BROKERS", []string{"reader", db}, 2, "KAFKA_BROKERS"},
		{"broker unreachable", []string{"reader", db, "--brokers=127.0.0.1:1", "--slot", e.Slot}, 1, "cannot reach a Kafka broker"},
		{"postgres unreachable", []string{"migrate", "--database-url=postgres://u:secret@127.0.0.1:1/x"}, 1, "cannot connect to Postgres"},
		{"bad pipeline file", []string{"worker", db, kafka, "--step", "planner", "--pipeline", "/nonexistent.json", "--", "true"}, 2, "pipeline config"},
		{"pipeline with an unknown key", worker("--pipeline", unknownKey), 2, `no key "retries"; its keys are steps, workers`},
		{"pipeline worker setting misspelt", worker("--pipeline", badWorker), 2, `workers.planner has no key "bacth"; did you mean "batch"?`},
		{"batch of a command", worker("--batch", "4"), 2, "--batch 4 needs --serve or --http"},
		{"batch out of range", []string{"worker", db, kafka, "--step", "planner", "--batch", "0", "--serve", "--", "true"}, 2, "--batch 0 is out of range 1..1024"},
		{"serve and http", []string{"worker", db, kafka, "--step", "planner", "--serve", "--http", "http://127.0.0.1:1/"}, 2, "--serve runs a command, not a URL"},
		{"serve without a command", []string{"worker", db, kafka, "--step", "planner", "--serve"}, 2, "pass it after --"},
		{"serve command not found", []string{"worker", db, kafka, "--step", "planner", "--serve", "--", "./no-such-model-server"}, 2, `"./no-such-model-server" cannot be run`},
		{"negative start timeout", worker("--start-timeout", "-1s"), 2, "--start-timeout -1s is negative"},
		{"reader with an unknown key form", []string{"reader", db, kafka, "--key", "avro"}, 2, `--key "avro": use struct`},
		{"reader --schemas not a boolean", []string{"reader", db, kafka, "--schemas=maybe"}, 2, `--schemas "maybe" is not true or false; write --schemas=true or --schemas=false`},
		{"console on a bad address", []string{"ui", db, kafka, "--listen", "127.0.0.1:99999"}, 2, "--listen 127.0.0.1:99999"},
		{"pipeline with a cycle", worker("--pipeline", cycle), 2, "appears twice"},
		{"reader pipeline with a cycle", []string{"reader", db, kafka, "--pipeline", cycle}, 2, "appears twice"},
		{"max-attempts out of range", worker("--max-attempts", "0"), 2, "out of range"},
		{"lease too short", worker("--lease", "10ms"), 2, "too short"},
		{"negative timeout", worker("--timeout", "-1s"), 2, "negative"},
		{"negative grace", worker("--grace", "-5s"), 2, "negative"},
		{"runs retention zero", worker("--runs-retention", "0"), 2, "--runs-retention 0"},
		{"cancel without a job", []string{"cancel", db}, 2, "no job given"},
		{"cancel of an unknown job", []string{"cancel", db, "no-such-job"}, 1, "not found"},
		{"prune with an argument", []string{"prune", db, "old"}, 2, "takes no arguments"},
		{"prune of age zero", []string{"prune", db, "--older-than", "0s"}, 2, "positive age"},
		{"recreate-slot with snapshot never", []string{"reader", db, kafka, "--recreate-slot", "--snapshot", "never"}, 2, "--recreate-slot"},
		{"stall timeout too short", worker("--stall-timeout", "100ms"), 2, "too short"},
		{"repeated gpu", worker("--gpus", "0,0"), 2, "repeated GPU"},
		{"not a number", worker("--concurrency", "many"), 2, `--concurrency "many" is not a whole number`},
		{"partitions out of range", []string{"reader", db, kafka, "--partitions", "0"}, 2, "out of range"},
		{"broker partitions out of range", []string{"broker", "--partitions", "20000"}, 2, "out of range"},
		{"broker nodes out of range", []string{"broker", "--nodes", "17"}, 2, "--nodes 17 is out of range 1..16"},
		{"broker listen not host:port", []string{"broker", "--listen", "nowhere"}, 2, `--listen "nowhere" is not host:port`},
		{"broker nodes past the last port", []string{"broker", "--listen", "127.0.0.1:65535", "--nodes", "3"}, 2, `--listen "127.0.0.1:65535" leaves no port for node 2 of --nodes 3`},
		{"dev jobs out of range", []string{"dev", "--jobs", "0"}, 2, "--jobs 0 is out of range 1..1000000"},
		{"unknown SASL mechanism", []string{"reader", db, kafka, "--kafka-sasl", "GSSAPI"}, 2, `--kafka-sasl "GSSAPI" is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512`},
		{"SASL without a user", []string{"reader", db, kafka, "--kafka-sasl", "PLAIN"}, 2, "--kafka-user is empty; SASL PLAIN needs one"},
		{"CA bundle missing", []string{"reader", db, kafka, "--kafka-ca", "/nonexistent/ca.pem"}, 2, "--kafka-ca cannot be read: open /nonexistent/ca.pem"},
		{"CA bundle without a certificate", []string{"reader", db, kafka, "--kafka-ca", unknownKey}, 2, "holds no PEM certificate"},
		{"no database", []string{"reader", kafka}, 2, "no database given: set DATABASE_URL or --database-url"},
		{"no broker", []string{"reader", db}, 2, "no Kafka broker given: set KAFKA_BROKERS or --brokers"},
		{"status interval too short", []string{"reader", db, kafka, "--status-interval", "1ms"}, 2, "too short"},
		{"step that is no topic name", []string{"reader", db, kafka, "--topic-prefix", "jobs/bad"}, 2, "topic"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, stderr := runMain(t, c.args...)
			if code != c.code || !strings.Contains(stderr, c.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d naming %q", code, stderr, c.code, c.want)
			}
			if strings.Contains(stderr, "secret") {
				t.Fatalf("password printed: %q", stderr)
			}
			if lines := strings.Count(strings.TrimSpace(stderr), "\n"); lines > 1 {
				t.Fatalf("more than one sentence and a hint: %q", stderr)
			}
		})
	}
	// Environment twins: one variable, one meaning; a bulk rewind never
	// takes its scope from the environment.
	envCases := []struct {
		name, env, value string
		args             []string
		code             int
		want             string
	}{
		{"twin that is not a duration", "JOBSTREAM_LEASE", "abc", worker(), 2, `JOBSTREAM_LEASE="abc" is not a duration; use a number with a unit`},
		{"url from the environment", "DATABASE_URL", "localhost:33077", []string{"migrate"}, 2, "is not a postgres:// URL"},
		{"status refresh has its own twin", "JOBSTREAM_STATUS_REFRESH", "abc", []string{"status"}, 2, `JOBSTREAM_STATUS_REFRESH="abc" is not a duration`},
		{"dev members have their own twin", "JOBSTREAM_DEV_MEMBERS", "abc", []string{"dev", "--jobs", "0"}, 2, `JOBSTREAM_DEV_MEMBERS="abc" is not a whole number`},
		{"replay step not from the environment", "JOBSTREAM_STEP", "planner", []string{"replay", db, kafka, "--dry-run"}, 2, "no step given"},
	}
	for _, c := range envCases {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv(c.env, c.value)
			code, _, stderr := runMain(t, c.args...)
			if code != c.code || !strings.Contains(stderr, c.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d naming %q", code, stderr, c.code, c.want)
			}
		})
	}
	if code, _, _ := runMain(t, "worker", "--help"); code != 0 {
		t.Fatalf("--help exit %d", code)
	}
}

func TestWalLevelNotLogical(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	pg, err := localpg.Start(context.Background(), filepath.Join(e.Dir, "replica-pg"), localpg.Options{Settings: map[string]string{"wal_level": "replica"}})
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Stop()
	code, _, stderr := runMain(t, "reader", "--database-url", pg.URL("postgres"), "--brokers", e.Brokers[0])
	if code != 1 || !strings.Contains(stderr, "wal_level=logical") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

// TestMigrateAddsOnlyWhatIsMissing: on a user's existing jobs table, migrate
// adds the missing columns and says so; a second run changes nothing.
func TestMigrateAddsOnlyWhatIsMissing(t *testing.T) {
	t.Parallel()
	e := usersTableEnv(t, `CREATE TABLE jobs (job_id text PRIMARY KEY, current_step text, status text, gpu_hours numeric)`)
	e.Exec(t, `INSERT INTO jobs VALUES ('old', 'img_gen', 'done', 1.5)`)
	code, out, stderr := runMain(t, "migrate", "--database-url", e.DatabaseURL)
	if code != 0 {
		t.Fatalf("migrate: exit %d: %s", code, stderr)
	}
	for _, want := range []string{"added column jobs.payload", "added column jobs.results", "added column jobs.error",
		"added column jobs.updated_at", "created table jobstream_runs", "created publication jobstream"} {
		if !strings.Contains(out, want) {
			t.Errorf("migrate output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "column jobs.status") || strings.Contains(out, "created table jobs\n") {
		t.Errorf("migrate touched what existed:\n%s", out)
	}
	if n := e.Count(t, `SELECT count(*) FROM jobs WHERE job_id = 'old' AND gpu_hours = 1.5 AND results = '{}'`); n != 1 {
		t.Fatal("existing row or column changed")
	}
	code, out, _ = runMain(t, "migrate", "--database-url", e.DatabaseURL)
	if code != 0 || !strings.Contains(out, "nothing changed") {
		t.Fatalf("second migrate: exit %d: %s", code, out)
	}
}

// usersTableEnv returns a fresh harness.Env as before a first migrate: its
// jobs table is the user's own, made by createJobs, and there is neither
// jobstream_runs nor the publication.
func usersTableEnv(t *testing.T, createJobs string) *harness.Env {
	t.Helper()
	e := harness.New(t)
	e.Exec(t, `DROP PUBLICATION jobstream; DROP TABLE jobs, jobstream_runs`)
	e.Exec(t, createJobs)
	return e
}

func TestMigrateRefusesTableWithoutPrimaryKey(t *testing.T) {
	t.Parallel()
	e := usersTableEnv(t, `CREATE TABLE jobs (job_id text, current_step text, status text)`)
	code, _, stderr := runMain(t, "migrate", "--database-url", e.DatabaseURL)
	if code != 1 || !strings.Contains(stderr, "ADD PRIMARY KEY (job_id)") {
		t.Fatalf("exit %d: %s", code, stderr)
	}
}

// TestDev is `make run`: the whole local stack completes the demo batch and
// exits 0; a second run starts clean.
func TestDev(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	dir := filepath.Join(e.Dir, "dev")
	for run := 1; run <= 2; run++ {
		code, out, stderr := runMain(t, "dev", "--jobs", "40", "--dir", dir)
		if code != 0 || !strings.Contains(out, "all 40 jobs reached (overlay, done)") || !strings.Contains(out, "commit→claim") {
			t.Fatalf("run %d: exit %d\nstdout:\n%s\nstderr:\n%s", run, code, out, stderr)
		}
		pngs, _ := filepath.Glob(filepath.Join(dir, "out", "*.png"))
		if len(pngs) != 40 {
			t.Fatalf("run %d: %d PNGs, want 40", run, len(pngs))
		}
	}
}

// TestCancelAndPruneCommands: jobstream cancel reports each job's state and
// sets it cancelled (a second cancel says so); jobstream prune counts with
// --dry-run, then deletes finished runs older than the age and keeps the rest.
func TestCancelAndPruneCommands(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	db := "--database-url=" + e.DatabaseURL
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('c1', 'img_gen', 'done'), ('c2', 'planner', 'running')`)
	code, out, stderr := runMain(t, "cancel", db, "c1", "c2")
	if code != 0 || !strings.Contains(out, "c1: cancelled at (img_gen, done)") || !strings.Contains(out, "c2: cancelled at (planner, running)") {
		t.Fatalf("cancel: exit %d: %s %s", code, out, stderr)
	}
	if n := e.Count(t, `SELECT count(*) FROM jobs WHERE status = 'cancelled'`); n != 2 {
		t.Fatalf("%d jobs cancelled, want 2", n)
	}
	if code, out, _ := runMain(t, "cancel", db, "c1"); code != 0 || !strings.Contains(out, "already cancelled") {
		t.Fatalf("second cancel: exit %d: %s", code, out)
	}

	e.Exec(t, `INSERT INTO jobstream_runs (job_id, step, attempt, worker, lease_expires_at, started_at, finished_at, outcome)
		SELECT 'p' || i, 'planner', 1, 'w', now(), now() - interval '5 days', now() - interval '5 days', 'done' FROM generate_series(1, 5) i
		UNION ALL SELECT 'fresh', 'planner', 1, 'w', now(), now(), now(), 'done'`)
	if code, out, _ := runMain(t, "prune", db, "--older-than", "72h", "--dry-run"); code != 0 || !strings.Contains(out, "would prune 5 run(s)") {
		t.Fatalf("prune --dry-run: exit %d: %s", code, out)
	}
	if code, out, _ := runMain(t, "prune", db, "--older-than", "72h"); code != 0 || !strings.Contains(out, "pruned 5 run(s)") {
		t.Fatalf("prune: exit %d: %s", code, out)
	}
	if n := e.Count(t, `SELECT count(*) FROM jobstream_runs`); n != 1 {
		t.Fatalf("%d runs left, want the fresh one", n)
	}
}
