package consumers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
)

// latencies is a HookClaimed that keeps every commit→claim latency.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) OnClaimed(_ string, d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

func (l *latencies) reset() {
	l.mu.Lock()
	l.d = l.d[:0]
	l.mu.Unlock()
}

// quantiles returns the q-quantiles of what was observed, in milliseconds.
func (l *latencies) quantiles(qs ...float64) []float64 {
	l.mu.Lock()
	d := slices.Clone(l.d)
	l.mu.Unlock()
	slices.Sort(d)
	out := make([]float64, len(qs))
	if len(d) == 0 {
		return out
	}
	for i, q := range qs {
		out[i] = float64(d[min(int(q*float64(len(d))), len(d)-1)]) / float64(time.Millisecond)
	}
	return out
}

// BenchmarkPipeline moves jobs through the whole default pipeline (four
// steps after img_gen) with in-process no-op handlers: the reader, one
// worker per step (Concurrency from JOBSTREAM_BENCH_CONCURRENCY, default
// 4), topics of 12 partitions, the embedded broker and Postgres, all on
// this machine.
//
//   - throughput: max(b.N, 2000) jobs inserted at once (100 per
//     transaction); reports jobs/s from the first insert until the last job
//     is (overlay, done), and the commit→claim latency of that backlog.
//   - latency: max(b.N, 1000) jobs inserted one per transaction at 200
//     jobs/s, well under capacity; reports the commit→claim latency of
//     every step's claims (trigger committed in Postgres → next step's
//     claim committed), p50 and p99.
//
// b.N only sets the batch size: each figure is a rate or a latency, not a
// time per operation. Run:
//
//	go test ./consumers -run '^$' -bench BenchmarkPipeline -benchtime 5000x
func BenchmarkPipeline(b *testing.B) {
	e := harness.New(b)
	startReader(b, e)
	conc := 4
	if v, err := strconv.Atoi(os.Getenv("JOBSTREAM_BENCH_CONCURRENCY")); err == nil {
		conc = v
	}
	obs := &latencies{}
	noop := func(context.Context, consumers.Job) (json.RawMessage, error) {
		return json.RawMessage(`{"ok":true}`), nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	b.Cleanup(func() { cancel(); wg.Wait() })
	p := schema.DefaultPipeline()
	for _, s := range p.Steps[1:] {
		w, err := consumers.New(consumers.Config{DatabaseURL: e.DatabaseURL, Brokers: e.Brokers, TopicPrefix: e.Prefix,
			Step: s, Concurrency: conc, Handler: noop, Hooks: []consumers.Hook{obs}, Logger: testLogger(b, "worker "+s), Grace: time.Second})
		if err != nil {
			b.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.Run(ctx); err != nil {
				b.Errorf("worker %s: %v", s, err)
			}
		}()
	}
	for _, s := range p.Steps[1:] {
		harness.Eventually(b, 60*time.Second, func() (bool, string) {
			n := groupMembers(b, e, s)
			return n == 1, fmt.Sprintf("group of %s has %d members", s, n)
		})
	}
	var batch atomic.Int64
	last := p.Last()
	// run inserts n jobs through insert and waits until all are done.
	run := func(b *testing.B, n int, insert func(prefix string, n int)) time.Duration {
		prefix := "b" + strconv.FormatInt(batch.Add(1), 10) + "-"
		start := time.Now()
		insert(prefix, n)
		// Wait until every job is done, or nothing moved for a minute.
		lastDone, moved := -1, time.Now()
		for {
			done := e.Count(b, `SELECT count(*) FROM jobs WHERE job_id LIKE $1 || '%' AND current_step = $2 AND status = 'done'`, prefix, last)
			if done == n {
				return time.Since(start)
			}
			if done != lastDone {
				lastDone, moved = done, time.Now()
			}
			if time.Since(moved) > time.Minute {
				b.Fatalf("%d of %d jobs done, none for a minute; the others:\n%s", done, n, stuck(b, e, p, prefix))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	bulk := func(prefix string, n int) {
		for i := 0; i < n; i += 100 {
			e.Exec(b, `INSERT INTO jobs (job_id, current_step, status, payload, results)
				SELECT $1 || g, $4, 'done', '{}', '{}' FROM generate_series($2::int, $3::int) g`, prefix, i, min(i+100, n)-1, p.Steps[0])
		}
	}
	paced := func(prefix string, n int) {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for i := range n {
			<-tick.C
			e.Exec(b, `INSERT INTO jobs (job_id, current_step, status, payload, results) VALUES ($1, $2, 'done', '{}', '{}')`,
				prefix+strconv.Itoa(i), p.Steps[0])
		}
	}
	run(b, 200, bulk) // warm up: connections, topics, groups

	b.Run("throughput", func(b *testing.B) {
		n := max(b.N, 2000)
		obs.reset()
		b.ResetTimer()
		took := run(b, n, bulk)
		b.StopTimer()
		q := obs.quantiles(0.5, 0.99)
		b.ReportMetric(float64(n)/took.Seconds(), "jobs/s")
		b.ReportMetric(q[0], "backlog-claim-p50-ms")
		b.ReportMetric(q[1], "backlog-claim-p99-ms")
		b.ReportMetric(0, "ns/op")
	})
	b.Run("latency", func(b *testing.B) {
		obs.reset()
		b.ResetTimer()
		run(b, max(b.N, 1000), paced)
		b.StopTimer()
		q := obs.quantiles(0.5, 0.99)
		b.ReportMetric(q[0], "claim-p50-ms")
		b.ReportMetric(q[1], "claim-p99-ms")
		b.ReportMetric(0, "ns/op")
	})
}

// stuck describes the jobs of prefix that are not through the pipeline:
// their row, their runs, and where their events are in every topic.
func stuck(b testing.TB, e *harness.Env, p schema.Pipeline, prefix string) string {
	var sb strings.Builder
	rows := e.Dump(b, `SELECT job_id, current_step, status, error, updated_at FROM jobs
		WHERE job_id LIKE $1 || '%' AND NOT (current_step = $2 AND status = 'done') ORDER BY job_id LIMIT 5`, prefix, p.Last())
	sb.WriteString(rows)
	ids := strings.Fields(e.Dump(b, `SELECT job_id FROM jobs WHERE job_id LIKE $1 || '%' AND NOT (current_step = $2 AND status = 'done') ORDER BY job_id LIMIT 5`, prefix, p.Last()))
	for _, id := range ids {
		sb.WriteString(e.Dump(b, `SELECT run_id, step, attempt, worker, outcome, error, started_at, finished_at, lease_expires_at FROM jobstream_runs WHERE job_id = $1 ORDER BY run_id`, id))
		for _, s := range p.Steps {
			for _, m := range e.ReadTopic(b, e.Topic(s)) {
				if schema.JobIDFromKey(m.Key) != id {
					continue
				}
				env, _ := schema.DecodeEnvelope(m.Value)
				row, _ := schema.Row(env.After)
				fmt.Fprintf(&sb, "  %s p%d@%d: %s/%s\n", e.Topic(s), m.Partition, m.Offset, row.CurrentStep, row.Status)
			}
		}
	}
	for _, s := range p.Steps[1:] {
		trig, _ := p.Trigger(s)
		committed, end := offsets(b, e, s, trig)
		fmt.Fprintf(&sb, "group %s: committed %v end %v\n", s, committed, end)
	}
	return sb.String()
}
