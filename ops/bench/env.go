package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jobstream/jobstream/ops/devstack"
	"github.com/jobstream/jobstream/ops/localpg"
	"github.com/jobstream/jobstream/schema"
	"github.com/jobstream/jobstream/schema/kafkaconn"
)

// env is what every scenario shares: the work folder, one Postgres, the
// jobstream binary, this program (for worker processes) and a log. Each
// scenario starts brokers of its own (startBroker).
type env struct {
	cfg      config
	dir      string
	stack    *devstack.Stack
	pg       *localpg.Postgres
	bin      string // jobstream
	self     string // this program
	logFile  *os.File
	log      *slog.Logger
	progress io.Writer
	start    time.Time
	machine  machine
	mu       sync.Mutex
	procs    map[*proc]bool
}

func newEnv(ctx context.Context, cfg config, progress io.Writer) (_ *env, err error) {
	e := &env{cfg: cfg, progress: progress, start: time.Now(), procs: map[*proc]bool{},
		log: slog.New(slog.DiscardHandler)} // until the work folder holds bench.log
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	// The work folder: cfg.Dir wiped, or a temporary one (removed by
	// close unless cfg.Keep); the server's log is pg.log in it.
	e.logf("starting Postgres")
	if e.stack, err = devstack.Start(ctx, devstack.Config{Dir: cfg.Dir, NoBroker: true}); err != nil {
		return nil, err
	}
	e.dir, e.pg = e.stack.Dir, e.stack.Postgres
	if e.logFile, err = os.Create(filepath.Join(e.dir, "bench.log")); err != nil {
		return nil, err
	}
	e.log = slog.New(slog.NewTextHandler(e.logFile, &slog.HandlerOptions{Level: slog.LevelInfo}))
	e.logf("Postgres in %s", filepath.Join(e.dir, "pg"))
	if cfg.Profile != "" {
		if err := os.MkdirAll(cfg.Profile, 0o755); err != nil {
			return nil, err
		}
	}
	if e.self, err = os.Executable(); err != nil {
		return nil, err
	}
	e.bin = cfg.Jobstream
	if e.bin == "" && needsJobstream(cfg) {
		e.logf("building jobstream (go build ./ops/jobstream)")
		if e.bin, err = buildJobstream(ctx, e.dir); err != nil {
			return nil, err
		}
	}
	if e.machine, err = describeMachine(ctx, e.stack.DatabaseURL); err != nil {
		return nil, err
	}
	e.logf("%s", e.machine)
	return e, nil
}

func needsJobstream(cfg config) bool {
	for _, s := range cfg.Only {
		if s != "micro" {
			return true
		}
	}
	return false
}

// moduleRoot returns the folder of go.mod.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("run the bench from inside the jobstream module (no go.mod found)")
	}
	return filepath.Dir(gomod), nil
}

func buildJobstream(ctx context.Context, dir string) (string, error) {
	root, err := moduleRoot(ctx)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "jobstream")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./ops/jobstream")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./ops/jobstream: %v: %s", err, out)
	}
	return bin, nil
}

// logf prints a progress line.
func (e *env) logf(format string, a ...any) {
	d := time.Since(e.start).Round(time.Second)
	fmt.Fprintf(e.progress, "[%02d:%02d] %s\n", int(d.Minutes()), int(d.Seconds())%60, fmt.Sprintf(format, a...))
	e.log.Info(fmt.Sprintf(format, a...))
}

func (e *env) close() {
	e.mu.Lock()
	procs := make([]*proc, 0, len(e.procs))
	for p := range e.procs {
		procs = append(procs, p)
	}
	e.mu.Unlock()
	for _, p := range procs {
		p.stop()
	}
	if e.stack == nil {
		return
	}
	e.stack.Stop()
	if e.logFile != nil {
		e.logFile.Close()
	}
	if e.cfg.Dir == "" && !e.cfg.Keep {
		e.stack.Close() // removes the temporary work folder
	} else {
		fmt.Fprintf(e.progress, "work folder kept: %s\n", e.dir)
	}
}

// profilePath returns where to write the CPU profile called name, or "".
func (e *env) profilePath(name string) string {
	if e.cfg.Profile == "" {
		return ""
	}
	p, _ := filepath.Abs(filepath.Join(e.cfg.Profile, name+".pprof"))
	return p
}

// database is one scenario's own database, migrated.
type database struct {
	e    *env
	name string
	url  string
}

// newDB creates a fresh, migrated database called name.
func (e *env) newDB(ctx context.Context, name string) (*database, error) {
	url, err := e.stack.CreateDatabase(ctx, name)
	if err != nil {
		return nil, err
	}
	return &database{e: e, name: name, url: url}, nil
}

// drop removes the database and its replication slots, so that no slot
// holds WAL (or decodes it) in later scenarios.
func (d *database) drop() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.e.stack.DropDatabase(ctx, d.name); err != nil {
		d.e.log.Warn("drop database", "db", d.name, "err", err)
	}
}

// proc is a child process: the broker, a reader or a worker.
type proc struct {
	e    *env
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// startProc starts cmd with its output in the work folder's log.
func (e *env) startProc(name string, cmd *exec.Cmd) (*proc, error) {
	f, err := os.OpenFile(filepath.Join(e.dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{e: e, name: name, cmd: cmd, done: make(chan struct{})}
	e.mu.Lock()
	e.procs[p] = true
	e.mu.Unlock()
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// exited returns an error when the process is gone.
func (p *proc) exited() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s exited (%v): %s", p.name, p.err, p.logTail())
	default:
		return nil
	}
}

func (p *proc) logTail() string {
	b, _ := os.ReadFile(filepath.Join(p.e.dir, p.name+".log"))
	if len(b) > 800 {
		b = b[len(b)-800:]
	}
	return strings.TrimSpace(string(b))
}

// stop asks the process to stop (SIGTERM), killing it after 15s.
func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	p.e.mu.Lock()
	delete(p.e.procs, p)
	p.e.mu.Unlock()
}

// peakRSS returns the process's peak resident set size (VmHWM), in bytes.
func (p *proc) peakRSS() (uint64, error) { return procStatus(p.cmd.Process.Pid, "VmHWM") }

// rss returns the process's resident set size now (VmRSS), in bytes.
func (p *proc) rss() (uint64, error) { return procStatus(p.cmd.Process.Pid, "VmRSS") }

func procStatus(pid int, field string) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(v)
			if len(f) == 0 {
				break
			}
			kb, err := strconv.ParseUint(f[0], 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// broker is a `jobstream broker` process, memory only.
type broker struct {
	*proc
	addr string
}

// startBroker starts a fresh broker, memory only, and waits until it answers.
func (e *env) startBroker(ctx context.Context, name string) (*broker, error) {
	return e.startBrokerIn(ctx, name, "")
}

// startBrokerIn starts a fresh broker keeping its data in dir ("": memory
// only) and waits until it answers.
func (e *env) startBrokerIn(ctx context.Context, name, dir string) (*broker, error) {
	port, err := localpg.FreePort()
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	p, err := e.startProc(name, exec.Command(e.bin, "broker", "--listen", addr, "--data-dir="+dir, "--partitions", strconv.Itoa(schema.DefaultPartitions)))
	if err != nil {
		return nil, err
	}
	b := &broker{proc: p, addr: addr}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := p.exited(); err != nil {
			return nil, err
		}
		if err := (kafkaconn.Broker{Addrs: []string{addr}}).Ping(ctx, time.Second); err == nil {
			return b, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.stop()
			return nil, fmt.Errorf("broker at %s did not answer within 30s", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startReader starts a `jobstream reader` process on slot and waits until
// it streams (its slot exists and is active).
func (e *env) startReader(ctx context.Context, name string, db *database, brokerAddr, slot, prefix string) (*proc, error) {
	p, err := e.startProc(name, exec.Command(e.bin, "reader", "--database-url", db.url, "--brokers", brokerAddr,
		"--slot", slot, "--topic-prefix", prefix, "--publication", schema.DefaultPublication, "--log-level", "warn"))
	if err != nil {
		return nil, err
	}
	conn, err := pgx.Connect(ctx, db.url)
	if err != nil {
		p.stop()
		return nil, err
	}
	defer conn.Close(context.Background())
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := p.exited(); err != nil {
			return nil, err
		}
		var active bool
		err := conn.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active)
		if err == nil && active {
			return p, nil
		}
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			p.stop()
			return nil, err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.stop()
			return nil, fmt.Errorf("%s did not start streaming within 60s: %s", name, p.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// machine is what the figures ran on.
type machine struct {
	CPU      string
	Cores    int
	RAM      uint64
	Postgres string
	Go       string
	Kernel   string
}

func (m machine) String() string {
	return fmt.Sprintf("%s, %d cores, %.1f GiB RAM, PostgreSQL %s, %s, Linux %s", m.CPU, m.Cores, float64(m.RAM)/(1<<30), m.Postgres, m.Go, m.Kernel)
}

func describeMachine(ctx context.Context, url string) (machine, error) {
	m := machine{CPU: "unknown CPU", Cores: runtime.NumCPU(), Go: runtime.Version()}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				if f := strings.Fields(v); len(f) > 0 {
					kb, _ := strconv.ParseUint(f[0], 10, 64)
					m.RAM = kb * 1024
				}
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = string(bytes.TrimSpace(b))
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return m, err
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(ctx, `SHOW server_version`).Scan(&m.Postgres); err != nil {
		return m, err
	}
	return m, nil
}

// openDB creates a fresh, migrated database called name and a pool on it
// of at most maxConns connections (0: pgxpool's default). done closes the
// pool and drops the database.
func (e *env) openDB(ctx context.Context, name string, maxConns int) (db *database, pool *pgxpool.Pool, done func(), err error) {
	if db, err = e.newDB(ctx, name); err != nil {
		return nil, nil, nil, err
	}
	pcfg, err := pgxpool.ParseConfig(db.url)
	if err == nil {
		if maxConns > 0 {
			pcfg.MaxConns = int32(maxConns)
		}
		pool, err = pgxpool.NewWithConfig(ctx, pcfg)
	}
	if err != nil {
		db.drop()
		return nil, nil, nil, err
	}
	return db, pool, func() { pool.Close(); db.drop() }, nil
}
