package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// memResult is one run of scenario 5.
type memResult struct {
	rows      int
	insert    float64 // seconds the transaction took
	stream    float64 // seconds from its commit to the reader's acknowledgement of it
	readerHWM uint64  // VmHWM of the reader process
	readerMax uint64  // the largest VmRSS sampled while it streamed
}

// benchMemory runs a `jobstream reader` process, commits one transaction
// of cfg.BigTx inserted rows, and reads the reader's peak RSS once Postgres
// reports the transaction flushed by it (every event acknowledged).
func benchMemory(ctx context.Context, e *env, run int) (res memResult, err error) {
	res.rows = e.cfg.BigTx
	db, conn, done, err := e.openDB(ctx, fmt.Sprintf("bench_memory_%d", run), 1)
	if err != nil {
		return res, err
	}
	defer done()
	b, err := e.startBroker(ctx, fmt.Sprintf("broker-memory-%d", run))
	if err != nil {
		return res, err
	}
	defer b.stop()
	reader, err := e.startReader(ctx, fmt.Sprintf("reader-memory-%d", run), db, b.addr, "bench", fmt.Sprintf("memory%d", run))
	if err != nil {
		return res, err
	}
	defer reader.stop()

	began := time.Now()
	if _, err := conn.Exec(ctx, bulkInsertSQL(res.rows, "big-")); err != nil {
		return res, fmt.Errorf("insert %d rows: %w", res.rows, err)
	}
	committed := time.Now()
	res.insert = committed.Sub(began).Seconds()
	var end pglogrepl.LSN
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(lsnText{&end}); err != nil {
		return res, err
	}
	if _, err := conn.Exec(ctx, `INSERT INTO jobs (job_id, current_step, status) VALUES ('big-marker', 'img_gen', 'pending')`); err != nil {
		return res, err
	}
	e.logf("  %d rows committed in one transaction in %.1fs", res.rows, res.insert)
	deadline := time.Now().Add(20 * time.Minute)
	for {
		if rss, err := reader.rss(); err == nil {
			res.readerMax = max(res.readerMax, rss)
		}
		var confirmed *string
		if err := conn.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'bench'`).Scan(&confirmed); err != nil {
			return res, err
		}
		if confirmed != nil {
			if at, err := pglogrepl.ParseLSN(*confirmed); err == nil && at >= end {
				break
			}
		}
		if err := reader.exited(); err != nil {
			return res, err
		}
		if time.Now().After(deadline) {
			return res, fmt.Errorf("the reader did not acknowledge the transaction within 20 minutes")
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	res.stream = time.Since(committed).Seconds()
	if res.readerHWM, err = reader.peakRSS(); err != nil {
		return res, err
	}
	return res, nil
}
