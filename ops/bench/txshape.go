package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pglogrepl"
)

// txShapeResult is one run of scenario 10: one transaction of n updates,
// streamed by pg_recvlogical and by the reader from the same position.
type txShapeResult struct {
	updates          int
	recvSecs, rdSecs float64
	recvCPU, rdCPU   cpuSnap // CPU seconds by process over each pass
	batches          int64   // the reader's batches
	produce          float64 // seconds the batches took, send to acknowledgement
}

func (r txShapeResult) ratio() float64 { return r.recvSecs / r.rdSecs }

// txShapeSizes are the transaction sizes of scenario 10.
func txShapeSizes(quick bool) []int {
	if quick {
		return []int{10_000, 100_000}
	}
	return []int{100_000, 1_000_000}
}

// benchTxShape writes the rows first, creates both slots, then updates every
// row in one transaction, and streams it with pg_recvlogical and with the
// reader (every event acknowledged by a broker), each from its own slot.
func benchTxShape(ctx context.Context, e *env, run, n int) (res txShapeResult, err error) {
	res.updates = n
	db, conn, done, err := e.openDB(ctx, fmt.Sprintf("bench_tx_%d_%d", n, run), 1)
	if err != nil {
		return res, err
	}
	defer done()
	if _, err := conn.Exec(ctx, bulkInsertSQL(n, "tx-")); err != nil {
		return res, err
	}
	for _, slot := range []string{"bench_recvlogical_0", "bench_reader_0"} {
		if _, err := conn.Exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot); err != nil {
			return res, fmt.Errorf("create slot %s: %w", slot, err)
		}
	}
	if _, err := conn.Exec(ctx, `UPDATE jobs SET status = 'running', updated_at = now()`); err != nil {
		return res, err
	}
	var end pglogrepl.LSN
	if err := conn.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(lsnText{&end}); err != nil {
		return res, err
	}
	if _, err := conn.Exec(ctx, `INSERT INTO jobs (job_id, current_step, status) VALUES ('tx-marker', 'img_gen', 'pending')`); err != nil {
		return res, err
	}
	var wal, client float64
	if res.recvSecs, wal, client, err = recvlogical(ctx, e, conn.Config().ConnConfig, db.name, "bench_recvlogical_0", end); err != nil {
		return res, err
	}
	res.recvCPU = cpuSnap{by: map[string]float64{"walsender": wal, "pg_recvlogical": client}}
	// The broker keeps the events on disk: in its heap, a million
	// events (1.5 GB) make its garbage collector the bound, not the reader.
	rp, err := readUntil(ctx, e, db, 1000+run, 0, end, n, true)
	if err != nil {
		return res, err
	}
	res.rdSecs, res.rdCPU, res.batches, res.produce = rp.secs, rp.cpu, rp.batches, rp.produce
	return res, nil
}

// txShapeRows renders scenario 10.
func (r *results) txShapeRows() []row {
	var rows []row
	for i, n := range txShapeSizes(r.cfg.Quick) {
		runs := r.txShape[n]
		if len(runs) == 0 {
			continue
		}
		ratios := each(runs, txShapeResult.ratio)
		recv := median(each(runs, func(x txShapeResult) float64 { return float64(x.updates) / x.recvSecs }))
		rd := median(each(runs, func(x txShapeResult) float64 { return float64(x.updates) / x.rdSecs }))
		scen := ""
		if i == 0 {
			scen = "10. Transaction shape: one transaction of n updates"
		}
		rows = append(rows, row{scen, fmt.Sprintf("%s updates: pg_recvlogical %s/s, reader %s/s", thousands(float64(n)), thousands(recv), thousands(rd)),
			fmt.Sprintf("%.1f s / %.1f s", median(each(runs, func(x txShapeResult) float64 { return x.recvSecs })), median(each(runs, func(x txShapeResult) float64 { return x.rdSecs }))),
			"reader/pg_recvlogical " + f2(median(ratios)), "≥ 0.9", passMiss(median(ratios) >= 0.9), joinRuns(ratios, f2), r.cfg.command("txshape")})
		// CPU seconds by process over each pass: with the seconds, what bounds each.
		cpu := func(get func(txShapeResult) cpuSnap, parts ...string) string {
			var cells []string
			for _, part := range parts {
				cells = append(cells, part+" "+f1(median(each(runs, func(x txShapeResult) float64 { return get(x).by[part] }))))
			}
			return strings.Join(cells, ", ")
		}
		rows = append(rows, row{"", "  CPU seconds over the pass", "pg_recvlogical's: " + cpu(func(x txShapeResult) cpuSnap { return x.recvCPU }, "walsender", "pg_recvlogical") +
			" · the reader's: " + cpu(func(x txShapeResult) cpuSnap { return x.rdCPU }, "walsender", "reader", "broker", "postgres"), "", "", "", "", r.cfg.command("txshape")})
	}
	return rows
}
