package cdc_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/ops/harness"
)

// BenchmarkLargeTransaction is item 5: one transaction updating 1,000,000
// rows, streamed by a real `jobstream reader` process. It reports the
// process's peak RSS (VmHWM), the time from commit to the last event
// acknowledged, and the event rate; it fails if the slot passes the
// commit before the broker holds every event.
func BenchmarkLargeTransaction(b *testing.B) {
	const rows = 1_000_000
	e := harness.New(b)
	dropTopicsAtEnd(b, e)
	e.Exec(b, `INSERT INTO jobs (job_id, current_step, status, payload)
		SELECT 'job-' || lpad(i::text, 7, '0'), 'img_gen', 'pending', jsonb_build_object('prompt', 'a red square', 'seed', i)
		FROM generate_series(1, $1) i`, rows)
	p := startProc(b, e, "--snapshot", "never")
	waitSlotActive(b, e)
	var peak, secs, rate float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		before := topicCount(b, e, e.Topic("img_gen"))
		start := time.Now()
		e.Exec(b, `UPDATE jobs SET status = CASE WHEN status = 'done' THEN 'pending' ELSE 'done' END`)
		committed := time.Now()
		end := currentLSN(b, e)
		harness.Eventually(b, 5*time.Minute, func() (bool, string) {
			confirmed := confirmedLSN(b, e)
			n := topicCount(b, e, e.Topic("img_gen")) - before
			if confirmed >= end && n < rows {
				b.Fatalf("slot confirmed %s, past the commit, with %d of %d events in the broker", confirmed, n, rows)
			}
			return n >= rows && confirmed >= end, fmt.Sprintf("%d of %d events in the broker", n, rows)
		})
		secs = time.Since(committed).Seconds()
		rate = rows / secs
		peak = vmHWM(b, p.cmd.Process.Pid)
		b.Logf("UPDATE of %d rows took %s; commit → last event acknowledged %.1fs (%.0f events/s); reader peak RSS %.1f MB",
			rows, committed.Sub(start).Round(time.Millisecond), secs, rate, peak)
	}
	b.ReportMetric(peak, "peak-rss-MB")
	b.ReportMetric(secs, "commit-to-last-ack-s")
	b.ReportMetric(rate, "events/s")
}

// vmHWM returns the peak resident set size of process pid in MB.
func vmHWM(b *testing.B, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	b.Fatal("no VmHWM in /proc/pid/status")
	return 0
}

// BenchmarkCommitToAck is item 9's latency: single-row transactions at 200
// changes/s for 10s; for each, the time from its commit in Postgres (the
// commit timestamp in the WAL) to the broker's acknowledgement of its event.
// The reader runs in this process to observe the acknowledgement
// (a HookCommitAcked); the broker is the embedded one, over TCP.
func BenchmarkCommitToAck(b *testing.B) {
	e := harness.New(b)
	e.Exec(b, `INSERT INTO jobs (job_id, current_step, status) SELECT 'j' || i, 'img_gen', 'pending' FROM generate_series(1, 200) i`)
	var mu sync.Mutex
	var lat []time.Duration
	startReader(b, e, func(c *cdc.Config) {
		c.Snapshot = cdc.SnapshotNever
		c.Hooks = []cdc.Hook{commitAcked(func(d time.Duration) {
			mu.Lock()
			lat = append(lat, d)
			mu.Unlock()
		})}
	})
	const rate, seconds = 200, 10
	var p50, p99, max float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		mu.Lock()
		lat = lat[:0]
		mu.Unlock()
		tick := time.NewTicker(time.Second / rate)
		for n := 0; n < rate*seconds; n++ {
			<-tick.C
			e.Exec(b, `UPDATE jobs SET status = 'done', updated_at = now() WHERE job_id = $1`, fmt.Sprintf("j%d", 1+n%200))
		}
		tick.Stop()
		harness.Eventually(b, time.Minute, func() (bool, string) {
			mu.Lock()
			defer mu.Unlock()
			return len(lat) >= rate*seconds, fmt.Sprintf("%d of %d acknowledged", len(lat), rate*seconds)
		})
		mu.Lock()
		ms := make([]float64, len(lat))
		for i, d := range lat {
			ms[i] = float64(d.Microseconds()) / 1000
		}
		mu.Unlock()
		slices.Sort(ms)
		p50, p99, max = ms[len(ms)/2], ms[len(ms)*99/100], ms[len(ms)-1]
		b.Logf("%d transactions at %d/s: commit → acknowledged p50 %.2f ms, p99 %.2f ms, max %.2f ms", len(ms), rate, p50, p99, max)
	}
	b.ReportMetric(p50, "p50-ms")
	b.ReportMetric(p99, "p99-ms")
	b.ReportMetric(max, "max-ms")
}

// BenchmarkBurst is item 9's throughput: 200,000 changes (2,000
// transactions of 100 inserts) committed while the reader is stopped; the
// reader then starts and drains them. It reports the sustained rate from
// its start to the last event acknowledged.
func BenchmarkBurst(b *testing.B) {
	const txs, per = 2000, 100
	var rate float64
	for i := 0; i < b.N; i++ {
		e := harness.New(b)
		dropTopicsAtEnd(b, e)
		// Create the slot, then stop the reader.
		r, err := cdc.New(func() cdc.Config { c := readerConfig(e); c.Snapshot = cdc.SnapshotNever; return c }())
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		<-r.Ready()
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		conn := e.Pool(b)
		for t := 0; t < txs; t++ {
			if _, err := conn.Exec(context.Background(), `INSERT INTO jobs (job_id, current_step, status, payload)
				SELECT 'job-' || $1::int || '-' || i, 'img_gen', 'done', jsonb_build_object('prompt', 'a red square', 'seed', i)
				FROM generate_series(1, $2) i`, t, per); err != nil {
				b.Fatal(err)
			}
		}
		var lastAck atomic.Int64
		start := time.Now()
		r2 := startReader(b, e, func(c *cdc.Config) {
			c.Snapshot = cdc.SnapshotNever
			c.Hooks = []cdc.Hook{produced(func(int, time.Duration) { lastAck.Store(time.Now().UnixNano()) })}
		})
		harness.Eventually(b, 5*time.Minute, func() (bool, string) {
			n := r2.Stats().Events.Load()
			return n >= txs*per, fmt.Sprintf("%d of %d events", n, txs*per)
		})
		secs := time.Unix(0, lastAck.Load()).Sub(start).Seconds()
		rate = txs * per / secs
		b.Logf("%d changes in %d transactions drained in %.2fs: %.0f changes/s", txs*per, txs, secs, rate)
	}
	b.ReportMetric(rate, "changes/s")
}

// dropTopicsAtEnd deletes e's topics when the benchmark ends, so the
// embedded broker does not keep millions of events in memory for the rest
// of the run.
func dropTopicsAtEnd(b *testing.B, e *harness.Env) {
	b.Cleanup(func() {
		c := client(b, e)
		md, err := c.Metadata(context.Background(), &kafka.MetadataRequest{})
		if err != nil {
			return
		}
		var topics []string
		for _, t := range md.Topics {
			if strings.HasPrefix(t.Name, e.Prefix+".") {
				topics = append(topics, t.Name)
			}
		}
		c.DeleteTopics(context.Background(), &kafka.DeleteTopicsRequest{Topics: topics})
	})
}
