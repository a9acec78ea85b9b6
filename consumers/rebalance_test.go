package consumers_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
	"github.com/jobstream/jobstream/schema/kafkaconn"
)

// TestRebalanceChurnLosesNothing: while 2,000 jobs flow in, members join
// and leave the step's group every second or two (each a Worker with its
// own group membership in the broker), so partitions keep moving between
// members mid-stream. No job is lost, no step runs twice: every job is
// claimed once and completed once, and when the last member leaves, every
// event's offset is committed.
func TestRebalanceChurnLosesNothing(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	const n = 2000
	rec := &recorder{}
	// Most steps are quick; one in 50 takes a second, so rebalances also
	// catch steps mid-run: they are detached from their partition, finish,
	// and the partition's next owner reads their event again and skips it.
	handler := func(_ context.Context, job consumers.Job) (json.RawMessage, error) {
		rec.record(job)
		d := 2 * time.Millisecond
		if strings.HasSuffix(job.JobID, "00") || strings.HasSuffix(job.JobID, "50") {
			d = time.Second
		}
		time.Sleep(d)
		return json.Marshal(map[string]int{"attempt": job.Attempt})
	}

	type member struct {
		name   string
		w      *consumers.Worker
		cancel context.CancelFunc
		done   chan error
	}
	var all []*member
	start := func(i int) *member {
		name := "churn-" + strconv.Itoa(i)
		w, err := consumers.New(consumers.Config{DatabaseURL: e.DatabaseURL, Brokers: e.Brokers, TopicPrefix: e.Prefix,
			Step: step, Concurrency: 2, Grace: 20 * time.Second, WorkerID: name, Handler: handler, Logger: testLogger(t, name)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		m := &member{name: name, w: w, cancel: cancel, done: make(chan error, 1)}
		go func() { m.done <- w.Run(ctx) }()
		all = append(all, m)
		return m
	}
	stop := func(m *member) {
		m.cancel()
		select {
		case err := <-m.done:
			if err != nil {
				t.Errorf("member %s: %v", m.name, err)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("member %s did not stop within 60s", m.name)
		}
	}
	live := []*member{start(0), start(1)}
	t.Cleanup(func() {
		for _, m := range live {
			m.cancel()
			<-m.done
		}
	})

	// Jobs flow in over about ten seconds, 50 per transaction.
	inserted := make(chan error, 1)
	pool := e.Pool(t)
	go func() {
		for i := 0; i < n; i += 50 {
			_, err := pool.Exec(context.Background(), `INSERT INTO jobs (job_id, current_step, status, payload)
				SELECT 'churn-' || g, $3, 'done', '{}' FROM generate_series($1::int, $2::int) g`, i, i+49, trigger)
			if err != nil {
				inserted <- err
				return
			}
			time.Sleep(250 * time.Millisecond)
		}
		inserted <- nil
	}()

	// Members join and leave until every job is done (and at least eight
	// changes happened).
	rnd := rand.New(rand.NewPCG(1, 2))
	changes, joins, leaves := 0, 0, 0
	deadline := time.Now().Add(150 * time.Second)
	for {
		done := e.Count(t, `SELECT count(*) FROM jobs WHERE current_step = $1 AND status = 'done'`, step)
		if done == n && changes >= 8 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d jobs done after %d membership changes; the others: %s", done, n, changes,
				e.Dump(t, `SELECT job_id, current_step, status FROM jobs WHERE NOT (current_step = $1 AND status = 'done') LIMIT 20`, step))
		}
		time.Sleep(time.Duration(1000+rnd.IntN(1000)) * time.Millisecond)
		if len(live) < 2 || (len(live) < 4 && rnd.IntN(2) == 0) {
			live = append(live, start(len(all)))
			joins++
		} else {
			i := rnd.IntN(len(live))
			m := live[i]
			live = slices.Delete(live, i, i+1)
			stop(m)
			leaves++
		}
		changes++
	}
	if err := <-inserted; err != nil {
		t.Fatal(err)
	}
	for _, m := range live {
		stop(m)
	}
	live = nil

	var claims, skipped int64
	for _, m := range all {
		claims += m.w.Stats().Claims.Load()
		skipped += m.w.Stats().Skipped.Load()
	}
	t.Logf("%d jobs, %d members over the run, %d joins, %d leaves; %d claims, %d events skipped (delivered again after a rebalance, or no trigger)",
		n, len(all), joins, leaves, claims, skipped)

	if claims != n {
		t.Errorf("%d claims for %d jobs", claims, n)
	}
	if got := rec.total(); got != n {
		t.Errorf("handler called %d times for %d jobs", got, n)
	}
	if bad := e.Count(t, `SELECT count(*) FROM jobs j WHERE (SELECT count(*) FROM jobstream_runs r
		WHERE r.job_id = j.job_id AND r.step = $1 AND r.attempt = 1 AND r.outcome = 'done') <> 1
		OR EXISTS (SELECT FROM jobstream_runs r WHERE r.job_id = j.job_id AND r.attempt <> 1)`, step); bad != 0 {
		t.Errorf("%d jobs do not have exactly one run, done at attempt 1: %s", bad, e.Dump(t,
			`SELECT job_id, attempt, worker, outcome, error FROM jobstream_runs WHERE job_id IN
			(SELECT job_id FROM jobstream_runs GROUP BY job_id HAVING count(*) > 1) ORDER BY job_id, attempt LIMIT 20`))
	}
	var ids []string
	for i := range n {
		ids = append(ids, fmt.Sprintf("churn-%d", i))
	}
	events := settledTransitions(t, e, ids)
	twice := 0
	for _, id := range ids {
		if got := events[id]; !slices.Equal(got, []string{step + "/running", step + "/done"}) {
			twice++
			if twice < 5 {
				t.Errorf("job %s's events on %s: %v, want running then done", id, e.Topic(step), got)
			}
		}
	}
	// The members committed all they did before leaving.
	committed, end := offsets(t, e, step, trigger)
	for p, off := range end {
		if committed[p] != off {
			t.Errorf("partition %d: committed %d, end %d", p, committed[p], off)
		}
	}
	harness.Eventually(t, 10*time.Second, func() (bool, string) {
		n := groupMembers(t, e, step)
		return n == 0, fmt.Sprintf("the group has %d members after every member left", n)
	})
}

// TestStallWatchdogRejoins: a member that holds partitions but never reads
// them (a ghost, as a dead member the coordinator did not drop) stalls the
// jobs routed there. The worker's stall watchdog sees those partitions not
// move while their next job waits unclaimed and makes its members rejoin;
// when the ghost is gone, every job completes, each once.
func TestStallWatchdogRejoins(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := (kafkaconn.Broker{Addrs: e.Brokers}).EnsureTopics(ctx, schema.DefaultPartitions, e.Topic(trigger)); err != nil {
		t.Fatal(err)
	}
	ghost, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{ID: e.Topics().Group(step), Brokers: e.Brokers,
		Topics: []string{e.Topic(trigger)}, HeartbeatInterval: 500 * time.Millisecond, SessionTimeout: 10 * time.Second,
		RebalanceTimeout: 10 * time.Second, JoinGroupBackoff: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ghostDone := make(chan struct{})
	go func() { // takes every generation, reads nothing
		defer close(ghostDone)
		for {
			if _, err := ghost.Next(ctx); errors.Is(err, kafka.ErrGroupClosed) || ctx.Err() != nil {
				return
			}
		}
	}()
	waitMembers(t, e, step, 1)

	rec := &recorder{}
	w := startWorker(t, e, consumers.Config{StallTimeout: time.Second, Handler: rec.attemptResult})
	waitMembers(t, e, step, 2)
	var ids []string
	for i := range 24 {
		ids = append(ids, fmt.Sprintf("stall-%d", i))
	}
	insertJobs(t, e, ids...)
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		return w.Stats().Rejoins.Load() >= 1, fmt.Sprintf("no rejoin yet; %s", stats(w))
	})
	ghost.Close()
	<-ghostDone
	for _, id := range ids {
		waitJob(t, e, id, step, "done", 60*time.Second)
	}
	if got := rec.total(); got != len(ids) {
		t.Errorf("handler called %d times for %d jobs", got, len(ids))
	}
	checkOneCompletion(t, e, ids...)
}
