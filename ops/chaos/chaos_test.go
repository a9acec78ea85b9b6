// Package chaos kills real jobstream processes at random moments, and moves
// partition leaders and group coordinators of a three-node broker, and
// checks that no transition is lost and no step completes twice. `make
// chaos` runs the full scenarios; `make test` runs smaller ones.
package chaos

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/ops/localpg"
	"github.com/jobstream/jobstream/schema"
	"github.com/jobstream/jobstream/schema/kafkaconn"
)

var (
	full = flag.Bool("chaos.full", false, "run the full scenario (2,000 jobs, more kills) instead of the small one")
	seed = flag.Uint64("chaos.seed", 0, "seed of the schedule (default: from the clock; printed)")
	logs = flag.String("chaos.logs", "", "keep the processes' logs, at debug level, in a folder named after the seed under this one")
)

func TestMain(m *testing.M) { harness.Main(m) }

// proc is a jobstream process the controller may kill and restart.
type proc struct {
	name string
	args []string
	env  []string
	log  *os.File
	mu   sync.Mutex
	cmd  *exec.Cmd
}

func (p *proc) start(t *testing.T, bin string) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	cmd := exec.Command(bin, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = p.log, p.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	p.cmd = cmd
	go cmd.Wait()
}

// kill sends SIGKILL to the process and its children (the step scripts).
func (p *proc) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && p.cmd.Process != nil {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
}

func (p *proc) signal(sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil && p.cmd.Process != nil {
		p.cmd.Process.Signal(sig)
	}
}

type scenario struct {
	jobs        int
	duration    time.Duration // the schedule's length
	kills       int           // reader and worker kills
	brokerKills int
	pgCrashes   int
	faults      int
	settle      time.Duration // how long the pipeline may take to finish after the schedule
}

// event is one entry of the seeded schedule.
type event struct {
	at   time.Duration
	kind string // kill, broker, postgres, fault
	who  int    // index into the killable processes, for kill
}

func (s scenario) schedule(r *rand.Rand, procs int) []event {
	var evs []event
	add := func(n int, kind string) {
		for range n {
			evs = append(evs, event{at: time.Duration(r.Int64N(int64(s.duration))), kind: kind, who: r.IntN(procs)})
		}
	}
	add(s.kills, "kill")
	add(s.brokerKills, "broker")
	add(s.pgCrashes, "postgres")
	add(s.faults, "fault")
	sort.Slice(evs, func(i, j int) bool { return evs[i].at < evs[j].at })
	return evs
}

const stepScript = `#!/bin/sh
# A chaos step: reads the job, sleeps 0-200 ms (fixed per job and step), prints JSON.
cat >/dev/null
n=$(printf '%s' "$JOBSTREAM_JOB_ID$JOBSTREAM_STEP" | cksum | cut -d' ' -f1)
sleep "$(printf '0.%03d' $((n % 200)))"
printf '{"step":"%s","attempt":%s}\n' "$JOBSTREAM_STEP" "$JOBSTREAM_ATTEMPT"
`

func TestChaos(t *testing.T) {
	sc := scenario{jobs: 300, duration: 45 * time.Second, kills: 10, brokerKills: 2, pgCrashes: 1, faults: 1, settle: 90 * time.Second}
	if *full {
		sc = scenario{jobs: 2000, duration: 3 * time.Minute, kills: 30, brokerKills: 2, pgCrashes: 1, faults: 2, settle: 5 * time.Minute}
	}
	s, rng := seeded(t, "chaos", 1, "%d jobs, %d kills, %d broker kills, %d Postgres crashes, %d fault windows over %s", sc.jobs, sc.kills, sc.brokerKills, sc.pgCrashes, sc.faults, sc.duration)
	bin := harness.Binary(t)
	dir := harness.New(t).Dir
	ctx := context.Background()
	began := time.Now()

	// Postgres of our own, to crash.
	pg, url, pool := migratedPostgres(t, ctx, dir)
	defer func() { pg.Stop() }()
	defer pool.Close()

	// A broker process of our own, to kill.
	port, _ := localpg.FreePort()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	logDir, logLevel := procLogDir(t, dir, s)
	logf := logFiles(t, logDir)
	const faultWindow = 3 * time.Second
	broker := &proc{name: "broker", args: []string{"broker", "--listen", addr, "--data-dir", filepath.Join(dir, "broker"), "--fault-on-usr1", faultWindow.String()}, log: logf("broker")}
	broker.start(t, bin)
	defer broker.kill()
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		return (kafkaconn.Broker{Addrs: []string{addr}}).Ping(ctx, time.Second) == nil, "broker not up"
	})

	script := filepath.Join(dir, "step.sh")
	if err := os.WriteFile(script, []byte(stepScript), 0o755); err != nil {
		t.Fatal(err)
	}
	env := []string{"DATABASE_URL=" + url, "KAFKA_BROKERS=" + addr, "JOBSTREAM_LOG_LEVEL=" + logLevel}
	killable := []*proc{{name: "reader", args: []string{"reader"}, env: env, log: logf("reader")}}
	for _, step := range schema.DefaultSteps[1:] {
		for i := range 2 {
			name := fmt.Sprintf("worker-%s-%d", step, i)
			killable = append(killable, &proc{name: name, env: env, log: logf(name),
				// A stall watchdog quicker than the default bounds the
				// recovery from the embedded broker's inconsistent
				// rebalances (see consumers/watchdog.go).
				args: []string{"worker", "--step", step, "--lease", "3s", "--max-attempts", "50", "--stall-timeout", "10s", "--", script}})
		}
	}
	for _, p := range killable {
		p.start(t, bin)
		defer p.kill()
	}
	logTailsOnFailure(t, logDir, "reader", "broker", "worker-overlay-0")

	// The reader's initial snapshot must be complete before the first job,
	// or that job is seen by the snapshot rather than streamed: a slot is
	// listed (and active) while Postgres still looks for its consistent
	// point, and a row committed meanwhile is in the snapshot.
	waitSnapshotDone(t, ctx, pool)

	// Load: jobs inserted at a steady pace over the first 60% of the schedule.
	loadDone := make(chan error, 1)
	var loaded atomic.Bool // every job inserted
	go func() {
		every := sc.duration * 6 / 10 / time.Duration(sc.jobs)
		for i := 1; i <= sc.jobs; i++ {
			id := fmt.Sprintf("c%05d", i)
			for {
				_, err := pool.Exec(ctx, `INSERT INTO jobs (job_id, current_step, status) VALUES ($1, 'img_gen', 'done') ON CONFLICT DO NOTHING`, id)
				if err == nil {
					break
				}
				time.Sleep(200 * time.Millisecond) // Postgres is being restarted
			}
			time.Sleep(every)
		}
		loaded.Store(true)
		loadDone <- nil
	}()

	// The schedule.
	var kills, restarts int
	var slowest time.Duration
	var slowestWhat string
	var faultsOver time.Time // when the last fault window ends
	recovery := func(what string, from time.Time) {
		// Recovery: until the pipeline completes a step again. When no job
		// is left to move (the load is over and every job is done), there is
		// nothing to recover and nothing to measure.
		var before int
		pool.QueryRow(ctx, `SELECT count(*) FROM jobstream_runs WHERE outcome = 'done'`).Scan(&before)
		for time.Since(from) < 30*time.Second {
			var n, left int
			if pool.QueryRow(ctx, `SELECT count(*) FROM jobstream_runs WHERE outcome = 'done'`).Scan(&n) == nil && n > before {
				break
			}
			if loaded.Load() && pool.QueryRow(ctx, `SELECT count(*) FROM jobs WHERE NOT (current_step = 'overlay' AND status = 'done')`).Scan(&left) == nil && left == 0 {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		if d := time.Since(from); d > slowest {
			slowest, slowestWhat = d, what
		}
	}
	start := time.Now()
	for _, ev := range sc.schedule(rng, len(killable)) {
		time.Sleep(time.Until(start.Add(ev.at)))
		at := time.Now()
		switch ev.kind {
		case "kill":
			p := killable[ev.who]
			t.Logf("%6.1fs kill -9 %s", time.Since(start).Seconds(), p.name)
			p.kill()
			kills++
			time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
			p.start(t, bin)
			restarts++
			recovery("kill of "+p.name, at)
		case "broker":
			t.Logf("%6.1fs kill -9 broker", time.Since(start).Seconds())
			broker.kill()
			kills++
			time.Sleep(time.Duration(500+rng.IntN(2000)) * time.Millisecond)
			broker.start(t, bin)
			// Up before the next event: a fault signal must find it running.
			if err := harness.Poll(30*time.Second, func() (bool, string) {
				return (kafkaconn.Broker{Addrs: []string{addr}}).Ping(ctx, time.Second) == nil, "broker not up"
			}); err != nil {
				t.Errorf("the broker did not come back: %v", err)
			}
			restarts++
			recovery("broker restart", at)
		case "postgres":
			t.Logf("%6.1fs Postgres immediate shutdown and restart", time.Since(start).Seconds())
			pg.Crash()
			time.Sleep(time.Duration(rng.IntN(1000)) * time.Millisecond)
			again, err := localpg.Start(ctx, filepath.Join(dir, "pg"), localpg.Options{Port: pg.Port})
			if err != nil {
				t.Fatalf("restart Postgres: %v", err)
			}
			pg = again
			restarts++
			recovery("Postgres restart", at)
		case "fault":
			t.Logf("%6.1fs broker answers produce and fetch with errors for %s", time.Since(start).Seconds(), faultWindow)
			broker.signal(syscall.SIGUSR1)
			faultsOver = time.Now().Add(faultWindow + time.Second)
			recovery("broker faults", at)
		}
	}
	<-loadDone

	// Every job reaches the end. If one does not, the checks below still run
	// and say where its transitions went.
	if err := harness.Poll(sc.settle, func() (bool, string) {
		var n int
		pool.QueryRow(ctx, `SELECT count(*) FROM jobs WHERE current_step = 'overlay' AND status = 'done'`).Scan(&n)
		return n == sc.jobs, fmt.Sprintf("%d of %d jobs at (overlay, done); the others: %s", n, sc.jobs, harness.DumpRows(pool,
			`SELECT j.job_id, j.current_step, j.status, j.updated_at, r.step, r.attempt, r.outcome, r.worker, r.started_at, r.finished_at
			FROM jobs j LEFT JOIN jobstream_runs r USING (job_id) WHERE NOT (j.current_step = 'overlay' AND j.status = 'done')
			ORDER BY j.job_id, r.run_id LIMIT 40`))
	}); err != nil {
		t.Error(err)
	}
	// The checks read the topics: not while the broker still refuses
	// fetches (a fault window at the end of the schedule, with every job
	// already done).
	time.Sleep(time.Until(faultsOver))
	wall := time.Since(began)
	env0 := &harness.Env{Brokers: []string{addr}}
	rep := check(t, pool, env0, sc.jobs)
	t.Logf("chaos report (seed %d): %d jobs done; kills %d, restarts %d; duplicate deliveries seen %d; re-run attempts %d; slowest recovery %s (%s); wall time %s",
		s, sc.jobs, kills, restarts, rep.duplicates, rep.reruns, slowest.Round(time.Millisecond), slowestWhat, wall.Round(time.Second))
}

type report struct {
	duplicates int
	reruns     int
}

// check verifies the invariants at the end and returns what it counted.
func check(t *testing.T, pool *pgxpool.Pool, e *harness.Env, jobs int) report {
	t.Helper()
	ctx := context.Background()
	var rep report
	q := func(sql string) int {
		var n int
		if err := pool.QueryRow(ctx, sql).Scan(&n); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return n
	}
	// Exactly one completed attempt chain per job and step.
	if n := q(`SELECT count(*) FROM (SELECT job_id, step FROM jobstream_runs WHERE outcome = 'done' GROUP BY 1, 2 HAVING count(*) > 1) x`); n != 0 {
		t.Errorf("%d (job, step) pairs completed more than once", n)
	}
	if n := q(`SELECT count(*) FROM (SELECT job_id, step FROM jobstream_runs WHERE outcome = 'done' GROUP BY 1, 2) x`); n != jobs*4 {
		t.Errorf("%d completed (job, step) pairs, want %d", n, jobs*4)
	}
	if n := q(`SELECT count(*) FROM jobstream_runs WHERE finished_at IS NULL`); n != 0 {
		t.Errorf("%d runs left open", n)
	}
	rep.reruns = q(`SELECT count(*) FROM jobstream_runs WHERE attempt > 1`)

	// Every committed transition is in the topics, per job in commit order.
	want := map[string]bool{}
	for i := 1; i <= jobs; i++ {
		id := fmt.Sprintf("c%05d", i)
		want["img_gen/"+id+"/done"] = true
		for _, s := range schema.DefaultSteps[1:] {
			want[s+"/"+id+"/running"] = true
			want[s+"/"+id+"/done"] = true
		}
	}
	for _, step := range schema.DefaultSteps {
		seen := map[int64]bool{}
		lastLSN := map[string]int64{}
		for _, m := range e.ReadTopic(t, schema.Topics{Prefix: schema.DefaultTopicPrefix}.Step(step)) {
			env, err := schema.DecodeEnvelope(m.Value)
			if err != nil {
				t.Errorf("unreadable event in %s: %v", step, err)
				continue
			}
			if seen[env.Source.LSN] {
				rep.duplicates++
				continue
			}
			seen[env.Source.LSN] = true
			row, _ := schema.Row(env.After)
			if env.Source.LSN < lastLSN[row.JobID] {
				t.Errorf("%s: events of %s out of commit order (LSN %d after %d)", step, row.JobID, env.Source.LSN, lastLSN[row.JobID])
			}
			lastLSN[row.JobID] = env.Source.LSN
			delete(want, step+"/"+row.JobID+"/"+row.Status)
		}
	}
	if len(want) > 0 {
		var missing []string
		for k := range want {
			missing = append(missing, k)
		}
		sort.Strings(missing)
		if len(missing) > 10 {
			missing = missing[:10]
		}
		t.Errorf("%d committed transitions missing from the topics, e.g. %s", len(want), strings.Join(missing, ", "))
	}

	// The slot holds no WAL it does not need.
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		pool.Exec(ctx, `SELECT pg_switch_wal()`) // keep the server's WAL moving
		n := q(`SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint FROM pg_replication_slots WHERE slot_name = 'jobstream'`)
		return n < 16<<20, fmt.Sprintf("slot retains %d bytes of WAL", n)
	})
	return rep
}

// TestScheduleReplaysFromSeed: the printed seed is enough to replay a run's
// schedule; another seed gives another schedule.
func TestScheduleReplaysFromSeed(t *testing.T) {
	sc := scenario{duration: 3 * time.Minute, kills: 30, brokerKills: 2, pgCrashes: 1, faults: 2}
	at := func(seed uint64) []event { return sc.schedule(rand.New(rand.NewPCG(seed, 1)), 9) }
	a, b, c := at(42), at(42), at(43)
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("seed 42 gave two schedules:\n%v\n%v", a, b)
	}
	if reflect.DeepEqual(a, c) {
		t.Fatal("seeds 42 and 43 gave the same schedule")
	}
	if len(a) != 35 {
		t.Fatalf("%d events, want 35", len(a))
	}
}

// seeded returns the run's seed and random source, from -chaos.seed or else the
// clock, on the test's own stream, and logs the seed that replays the run
// with what the run is made of (format and args).
func seeded(t *testing.T, what string, stream uint64, format string, args ...any) (uint64, *rand.Rand) {
	s := *seed
	if s == 0 {
		s = uint64(time.Now().UnixNano())
	}
	t.Logf("%s seed %d (rerun the same schedule with -chaos.seed %d): %s", what, s, s, fmt.Sprintf(format, args...))
	return s, rand.New(rand.NewPCG(s, stream))
}

// migratedPostgres starts a Postgres server of the test's own in dir/pg,
// migrated, and opens a pool on it. The caller stops both: a test that
// crashes and restarts the server stops the newest one.
func migratedPostgres(t *testing.T, ctx context.Context, dir string) (*localpg.Postgres, string, *pgxpool.Pool) {
	t.Helper()
	pg, err := localpg.Start(ctx, filepath.Join(dir, "pg"), localpg.Options{})
	if err != nil {
		t.Fatal(err)
	}
	url := pg.URL("postgres")
	harness.Migrate(t, url)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		pg.Stop()
		t.Fatal(err)
	}
	return pg, url, pool
}

// procLogDir is where a test's processes log, and at what level: the test's
// own folder at info, or with -logs a folder per seed below it at debug.
func procLogDir(t *testing.T, dir string, seed uint64) (logDir, logLevel string) {
	if *logs == "" {
		return dir, "info"
	}
	logDir = filepath.Join(*logs, fmt.Sprint(seed))
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("process logs in %s", logDir)
	return logDir, "debug"
}

// logFiles opens a process's log, <name>.log in logDir, for appending;
// restarts of the process append to the same file.
func logFiles(t *testing.T, logDir string) func(name string) *os.File {
	return func(name string) *os.File {
		f, err := os.OpenFile(filepath.Join(logDir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
}

// logTailsOnFailure shows the last lines of the named processes' logs (in
// logDir) when t fails.
func logTailsOnFailure(t *testing.T, logDir string, names ...string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, name := range names {
			b, _ := os.ReadFile(filepath.Join(logDir, name+".log"))
			if len(b) > 3000 {
				b = b[len(b)-3000:]
			}
			t.Logf("--- %s log (tail) ---\n%s", name, b)
		}
	})
}

// waitSnapshotDone waits for the reader's initial snapshot to complete.
func waitSnapshotDone(t *testing.T, ctx context.Context, pool *pgxpool.Pool) {
	t.Helper()
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		var n int
		pool.QueryRow(ctx, `SELECT count(*) FROM jobstream_slots WHERE slot_name = 'jobstream' AND completed_at IS NOT NULL`).Scan(&n)
		return n == 1, "the reader has not completed its initial snapshot"
	})
}
