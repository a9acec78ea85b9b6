package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/schema"
)

// cdcResult is one run of scenario 1.
type cdcResult struct {
	changes    int
	txs        int
	walBytes   uint64
	recvSecs   []float64 // pg_recvlogical, start to exit at the end position, per pass
	readerSecs []float64 // reader, start to the last event acknowledged, per pass
	recvCPU    cpuSnap   // CPU seconds over the pg_recvlogical passes
	readerCPU  cpuSnap   // CPU seconds over the reader passes
}

// recvRate and readerRate are the medians over the run's passes.
func (r cdcResult) recvRate() float64   { return float64(r.changes) / median(r.recvSecs) }
func (r cdcResult) readerRate() float64 { return float64(r.changes) / median(r.readerSecs) }

// ratio is the median over the run's passes of reader rate / pg_recvlogical
// rate, each pass's two measured back to back.
func (r cdcResult) ratio() float64 {
	var rs []float64
	for i := range min(len(r.recvSecs), len(r.readerSecs)) {
		rs = append(rs, r.recvSecs[i]/r.readerSecs[i])
	}
	return median(rs)
}

// perTx is the number of inserts (and so of updates) per transaction of
// the scenario 1 workload.
const perTx = 5

// benchCDC streams the same changes with pg_recvlogical and with the
// reader, each from a slot of its own created before the changes were
// made, alternately, cfg.CDCPasses times each (so a passing load on the
// machine hits both alike).
func benchCDC(ctx context.Context, e *env, run int) (res cdcResult, err error) {
	db, conn, done, err := e.openDB(ctx, fmt.Sprintf("bench_cdc_%d", run), 1)
	if err != nil {
		return res, err
	}
	defer done()
	passes := e.cfg.CDCPasses
	for i := range passes {
		for _, slot := range []string{"bench_recvlogical", "bench_reader"} {
			slot := fmt.Sprintf("%s_%d", slot, i)
			if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot); err != nil {
				return res, fmt.Errorf("create slot %s: %w", slot, err)
			}
		}
	}
	if _, err := conn.Exec(ctx, workloadSQL()); err != nil {
		return res, fmt.Errorf("create workload procedure: %w", err)
	}
	var startLSN pglogrepl.LSN
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(lsnText{&startLSN}); err != nil {
		return res, err
	}
	res.changes = 2 * (e.cfg.Changes / 2)
	res.txs = (e.cfg.Changes/2 + min(50, e.cfg.Changes/2) + perTx - 1) / perTx
	began := time.Now()
	if _, err := conn.Exec(ctx, fmt.Sprintf("CALL bench_workload(%d, %d, 'cdc-')", e.cfg.Changes, perTx)); err != nil {
		return res, fmt.Errorf("run workload: %w", err)
	}
	// The end: every change is before it. The marker transaction after it
	// gives both clients a message past the end, so neither waits for a
	// keepalive to learn it is there.
	var end pglogrepl.LSN
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(lsnText{&end}); err != nil {
		return res, err
	}
	if _, err := conn.Exec(ctx, `INSERT INTO jobs (job_id, current_step, status) VALUES ('cdc-marker', 'img_gen', 'pending')`); err != nil {
		return res, err
	}
	res.walBytes = uint64(end - startLSN)
	e.logf("  %d changes in %d transactions written in %.1fs (%.0f MiB of WAL)", res.changes, res.txs, time.Since(began).Seconds(), float64(res.walBytes)/(1<<20))

	for i := range passes {
		secs, wal, client, err := recvlogical(ctx, e, conn.Config().ConnConfig, db.name, fmt.Sprintf("bench_recvlogical_%d", i), end)
		if err != nil {
			return res, err
		}
		res.recvSecs = append(res.recvSecs, secs)
		res.recvCPU.add(cpuSnap{by: map[string]float64{"walsender": wal, "pg_recvlogical": client}})
		e.log.Info("pg_recvlogical pass", "run", run, "pass", i, "seconds", secs)
		rp, err := readUntil(ctx, e, db, run, i, end, res.changes, false)
		if err != nil {
			return res, err
		}
		res.readerCPU.add(rp.cpu)
		res.readerSecs = append(res.readerSecs, rp.secs)
	}
	return res, nil
}

// recvlogical streams slot with pg_recvlogical (pgoutput) to /dev/null
// until end: what Postgres itself decodes. It returns the seconds it took
// and the CPU seconds of the WAL sender (sampled while it runs) and of
// pg_recvlogical.
func recvlogical(ctx context.Context, e *env, cfg *pgx.ConnConfig, db, slot string, end pglogrepl.LSN) (secs, walsender, client float64, err error) {
	cmd := exec.CommandContext(ctx, "pg_recvlogical", "-h", cfg.Host, "-p", strconv.Itoa(int(cfg.Port)), "-U", cfg.User, "-d", db,
		"--slot", slot, "--start", "--no-loop", "-o", "proto_version=1", "-o", "publication_names="+schema.DefaultPublication,
		"--endpos", end.String(), "-f", os.DevNull)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	_, wal0 := e.postgresCPU()
	began := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, 0, fmt.Errorf("pg_recvlogical: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	wal := wal0
	for {
		select {
		case err := <-done:
			secs = time.Since(began).Seconds()
			if err != nil {
				return 0, 0, 0, fmt.Errorf("pg_recvlogical: %v: %s", err, out.String())
			}
			st := cmd.ProcessState
			return secs, wal - wal0, (st.UserTime() + st.SystemTime()).Seconds(), nil
		case <-time.After(10 * time.Millisecond):
			// The WAL sender ends with its client: keep its last reading.
			if _, w := e.postgresCPU(); w > wal {
				wal = w
			}
		}
	}
}

// readPass is one pass of the reader.
type readPass struct {
	secs    float64 // from Run to the last event acknowledged
	cpu     cpuSnap // CPU seconds by process over the pass
	batches int64   // batches produced
	produce float64 // seconds they took, send to acknowledgement
}

// readUntil runs a reader (in this process, with a fresh broker process)
// on the pass's slot until the broker has acknowledged every event up to
// end. With onDisk, the broker keeps its data in a folder (removed after),
// as a deployed broker does, rather than in its heap.
func readUntil(ctx context.Context, e *env, db *database, run, pass int, end pglogrepl.LSN, changes int, onDisk bool) (readPass, error) {
	var none readPass
	name, dir := fmt.Sprintf("broker-cdc-%d-%d", run, pass), ""
	if onDisk {
		dir = filepath.Join(e.dir, name)
		defer os.RemoveAll(dir)
	}
	b, err := e.startBrokerIn(ctx, name, dir)
	if err != nil {
		return none, err
	}
	defer b.stop()
	var batches batchCount
	r, err := cdc.New(cdc.Config{DatabaseURL: db.url, Brokers: []string{b.addr}, Slot: fmt.Sprintf("bench_reader_%d", pass),
		TopicPrefix: fmt.Sprintf("cdc%d-%d", run, pass), Logger: e.log.With("part", "reader"), Hooks: []cdc.Hook{&batches}})
	if err != nil {
		return none, err
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if p := e.profilePath(fmt.Sprintf("reader-cdc-run%d-pass%d", run, pass)); p != "" {
		stopProfile, err := startCPUProfile(p)
		if err != nil {
			return none, err
		}
		defer stopProfile()
	}
	groups := map[string][]*proc{"broker": {b.proc}}
	cpu0 := e.cpuNow(groups)
	runErr := make(chan error, 1)
	began := time.Now()
	go func() { runErr <- r.Run(rctx) }()
	st := r.Stats()
	var ready time.Duration
	deadline := time.Now().Add(10 * time.Minute)
	for pglogrepl.LSN(st.AckedLSN.Load()) < end {
		if ready == 0 {
			select {
			case <-r.Ready():
				ready = time.Since(began)
			default:
			}
		}
		select {
		case err := <-runErr:
			return none, fmt.Errorf("reader stopped: %v", err)
		case <-ctx.Done():
			return none, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return none, fmt.Errorf("reader acknowledged only %d of %d events within 10 minutes", st.Events.Load(), changes)
		}
	}
	secs := time.Since(began).Seconds()
	cpu := e.cpuNow(groups).sub(cpu0)
	cpu.by["reader"] = cpu.by["bench"] // the reader runs in this process
	delete(cpu.by, "bench")
	cancel()
	<-runErr
	e.log.Info("reader pass", "run", run, "pass", pass, "seconds", secs, "ready_after", ready, "events", st.Events.Load(), "transactions", st.Transactions.Load(),
		"batches", batches.n.Load(), "produce_seconds", time.Duration(batches.took.Load()).Seconds(),
		"reconnects", st.Reconnects.Load(), "dead_letters", st.DeadLetters.Load())
	if n := st.Reconnects.Load(); n > 0 {
		e.logf("  the reader reconnected %d times in pass %d (see bench.log)", n, pass)
	}
	if n := st.Events.Load(); n < int64(changes) {
		return none, fmt.Errorf("reader passed the end position with %d of %d events acknowledged", n, changes)
	}
	return readPass{secs: secs, cpu: cpu, batches: batches.n.Load(), produce: time.Duration(batches.took.Load()).Seconds()}, nil
}

// batchCount counts the reader's batches and the time they took to
// produce (a cdc.HookProduced).
type batchCount struct{ n, took atomic.Int64 }

func (b *batchCount) OnProduced(_ int, took time.Duration) { b.n.Add(1); b.took.Add(int64(took)) }

// lsnText scans a pg_lsn rendered as text.
type lsnText struct{ p *pglogrepl.LSN }

func (l lsnText) Scan(src any) error {
	s, ok := src.(string)
	if !ok {
		return fmt.Errorf("lsn: want text, got %T", src)
	}
	v, err := pglogrepl.ParseLSN(s)
	*l.p = v
	return err
}

// startCPUProfile profiles this process into path until the returned
// function is called.
func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
