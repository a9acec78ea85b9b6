package cdc_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/jobstream/jobstream/ops/harness"
)

// TestLostSlotIsReportedLoudly is issue 11 item 9: a slot dropped under a
// running reader is created again with a fresh snapshot, and the gap is
// said loudly: an ERROR naming its LSN range (from at least the position
// the old slot confirmed to the new slot's consistent point),
// Stats.SlotGaps, the range in jobstream_slots, and a line in jobstream
// status. Every job's latest state still arrives (as op "r").
func TestLostSlotIsReportedLoudly(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	var logs harness.Buffer
	cfg := readerConfig(e)
	cfg.Logger = logTo(&logs)
	x := runReader(t, cfg)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) SELECT 'a' || i, 'img_gen', 'done' FROM generate_series(1, 50) i`)
	waitMessages(t, e, e.Topic("img_gen"), 50)
	if n := x.r.Stats().SlotGaps.Load(); n != 0 {
		t.Fatalf("%d gaps at the first start", n)
	}
	// The slot's position once the inserts are confirmed: the gap starts
	// at or after it.
	var confirmed pglogrepl.LSN
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		confirmed = confirmedLSN(t, e)
		return x.r.Stats().AckedLSN.Load() > 0 && uint64(confirmed) >= x.r.Stats().AckedLSN.Load(), "slot not confirmed up to the acknowledged position"
	})

	// Drop the slot under the reader: end its walsender and drop the slot
	// before the reader reconnects, while jobs keep changing.
	load, stopLoad := context.WithCancel(context.Background())
	loaded := make(chan struct{})
	go func() {
		defer close(loaded)
		for i := 0; load.Err() == nil; i++ {
			e.Pool(t).Exec(load, `UPDATE jobs SET status = 'running', updated_at = now() WHERE job_id = $1`, fmt.Sprintf("a%d", i%50+1))
		}
	}()
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		e.Pool(t).Exec(context.Background(), `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active`, e.Slot)
		_, err := e.Pool(t).Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, e.Slot)
		return err == nil, fmt.Sprintf("drop slot: %v", err)
	})
	stopLoad()
	<-loaded

	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		return x.r.Stats().SlotGaps.Load() == 1, fmt.Sprintf("%d gaps counted", x.r.Stats().SlotGaps.Load())
	})
	var from, to string
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		err := e.Pool(t).QueryRow(context.Background(), `SELECT coalesce(gap_from_lsn::text, ''), coalesce(gap_to_lsn::text, '')
			FROM jobstream_slots WHERE slot_name = $1`, e.Slot).Scan(&from, &to)
		return err == nil && from != "" && to != "", fmt.Sprintf("gap in jobstream_slots: %q..%q (%v)", from, to, err)
	})
	fromLSN, _ := pglogrepl.ParseLSN(from)
	toLSN, _ := pglogrepl.ParseLSN(to)
	if fromLSN < confirmed || toLSN <= fromLSN {
		t.Fatalf("gap %s..%s; the old slot had confirmed %s", from, to, confirmed)
	}
	var errLine string
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "level=ERROR") && strings.Contains(l, "was lost") {
			errLine = l
		}
	}
	if !strings.Contains(errLine, "between "+from+" ") || !strings.Contains(errLine, "and "+to+" ") {
		t.Fatalf("no ERROR naming the gap %s..%s:\n%s", from, to, logs.String())
	}
	// Every job's latest state arrives, as a snapshot read.
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		n := x.r.Stats().SnapshotReads.Load()
		return n >= 50, fmt.Sprintf("%d of 50 rows re-read", n)
	})

	status := e.StartProcess(t, "status", nil, "status")
	if code := status.Wait(t, 60*time.Second); code != 0 {
		t.Fatalf("status exited %d:\n%s", code, status.Log())
	}
	if out := status.Log(); !strings.Contains(out, "GAP recorded") || !strings.Contains(out, from) || !strings.Contains(out, to) {
		t.Fatalf("status does not show the gap %s..%s:\n%s", from, to, out)
	}
}
