package cdc_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
)

// TestKillNineLosesNothing is item 2: a stream of 20,000 changes while the
// reader process is killed with SIGKILL at random moments and restarted
// each time. Every change reaches its topic (duplicates are counted and
// reported, a gap fails the test), and per job the events in a topic are in
// commit order, apart from the replays that follow each restart.
func TestKillNineLosesNothing(t *testing.T) {
	t.Parallel()
	e := seqEnv(t)
	steps := []string{"img_gen", "vlm_analyze", "yolo_detect"}
	const (
		jobs    = 200
		changes = 20_000
		writers = 4
	)
	p := startProc(t, e, "--snapshot", "never", "--partitions", "4")
	waitSlotActive(t, e)

	// Writers: each owns jobs/writers jobs, inserts them, then updates them
	// (seq = seq + 1) in transactions of 1 to 6 changes, about 1,500
	// changes/s in all.
	var written atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- write(e, w, writers, jobs, changes/writers, steps, &written)
		}()
	}
	writing := make(chan struct{})
	go func() { wg.Wait(); close(writing) }()

	// The killer: SIGKILL at a random moment, restart at once, again and again.
	kills := 0
	for done := false; !done; {
		select {
		case <-writing:
			done = true
		case <-time.After(time.Duration(150+rand.IntN(900)) * time.Millisecond):
			p.Kill()
			kills++
			p = startProc(t, e, "--snapshot", "never", "--partitions", "4")
		}
	}
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := written.Load(); n != changes {
		t.Fatalf("wrote %d changes, want %d", n, changes)
	}
	final := committedSeqs(t, e)

	// Wait for the last reader to catch up, then check every topic.
	end := currentLSN(t, e)
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		got := confirmedLSN(t, e)
		return got >= end, fmt.Sprintf("slot at %s, want %s", got, end)
	})
	var events, dups, rewinds int
	seen := map[string]int{}
	for _, step := range steps {
		msgs := readAll(t, e, e.Topic(step))
		events += len(msgs)
		// Per job (one key, one partition, offset order): each new seq is
		// exactly the next one (no gap); a seq already seen is a replay.
		last, top := map[string]int{}, map[string]int{}
		for _, m := range msgs {
			env := decode(t, m)
			id := schema.JobIDFromKey(m.Key)
			s := seqOf(t, env)
			if env.After["current_step"] != step {
				t.Fatalf("event %s in %s", m.Value, step)
			}
			prev, ok := top[id]
			switch {
			case !ok && s != 0:
				t.Fatalf("job %s: first event in %s has seq %d, want 0 (the insert)", id, step, s)
			case ok && s > prev+1:
				t.Fatalf("job %s: gap in %s, seq %d after %d", id, step, s, prev)
			case ok && s <= prev:
				dups++
				if s != last[id]+1 {
					rewinds++
				}
			default:
				top[id] = s
			}
			last[id] = s
		}
		for id, s := range top {
			seen[id] = s
		}
	}
	for id, want := range final {
		if seen[id] != want {
			t.Errorf("job %s: last seq in its topic %d, committed %d", id, seen[id], want)
		}
	}
	if rewinds > (kills+1)*jobs {
		t.Errorf("%d replays started, more than %d restarts could cause", rewinds, kills+1)
	}
	t.Logf("%d changes, %d reader processes killed with SIGKILL and restarted: %d events, %d duplicates (%.2f%%), no gap",
		changes, kills, events, dups, 100*float64(dups)/float64(changes))
}

// write inserts writer w's share of jobs, then updates them until it has
// made n changes, pacing itself to about 375 changes/s.
func write(e *harness.Env, w, writers, jobs, n int, steps []string, written *atomic.Int64) error {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, e.DatabaseURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var mine []string
	for j := w; j < jobs; j += writers {
		id := fmt.Sprintf("job-%03d", j)
		mine = append(mine, id)
		if _, err := conn.Exec(ctx, `INSERT INTO jobs (job_id, current_step, status) VALUES ($1, $2, 'done')`, id, steps[j%len(steps)]); err != nil {
			return err
		}
	}
	done := len(mine)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for done < n {
		<-tick.C
		k := min(1+rand.IntN(6), n-done)
		tx, err := conn.Begin(ctx)
		if err != nil {
			return err
		}
		for i := 0; i < k; i++ {
			if _, err := tx.Exec(ctx, `UPDATE jobs SET seq = seq + 1 WHERE job_id = $1`, mine[rand.IntN(len(mine))]); err != nil {
				return err
			}
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
		done += k
	}
	written.Add(int64(done))
	return nil
}

// TestStandbyTakesOver is item 8's standby: a second reader of the same slot
// waits; when the first is killed, it takes over and nothing is lost.
func TestStandbyTakesOver(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	first := startProc(t, e)
	pid := waitSlotActive(t, e)
	second := startProc(t, e)
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		return strings.Contains(second.Log(), "waiting as standby"), "second reader not waiting as standby"
	})
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) SELECT 'a' || i, 'img_gen', 'done' FROM generate_series(1, 100) i`)
	waitMessages(t, e, e.Topic("img_gen"), 100)
	if second.Exited() || !strings.Contains(first.Log(), "streaming") {
		t.Fatal("the first reader is not the one streaming")
	}

	first.Kill()
	killed := time.Now()
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) SELECT 'b' || i, 'img_gen', 'done' FROM generate_series(1, 100) i`)
	var took time.Duration
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		now := e.Count(t, `SELECT coalesce((SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active), 0)`, e.Slot)
		if now != 0 && now != pid {
			took = time.Since(killed)
			return true, ""
		}
		return false, "standby has not taken the slot over"
	})
	msgs := waitMessages(t, e, e.Topic("img_gen"), 200)
	keys := map[string]bool{}
	for _, m := range msgs {
		keys[schema.JobIDFromKey(m.Key)] = true
	}
	if len(keys) != 200 {
		t.Fatalf("%d of 200 jobs in the topic", len(keys))
	}
	if !strings.Contains(second.Log(), "taking over") {
		t.Fatalf("the standby did not say it took over")
	}
	t.Logf("standby took the slot over %s after SIGKILL of the active reader", took.Round(time.Millisecond))
}

// TestSnapshotInterruptedByCrashStartsOver is item 3's crash: the reader is
// killed while its initial snapshot is part way through the broker; the next
// reader sees the snapshot never completed, drops the slot, and takes the
// snapshot again, after which streaming goes on with no gap.
func TestSnapshotInterruptedByCrashStartsOver(t *testing.T) {
	t.Parallel()
	e := seqEnv(t)
	// A private broker that acknowledges the first produce request and
	// then answers NOT_ENOUGH_REPLICAS until told otherwise: the snapshot
	// is stuck part way, deterministically.
	b := privateBroker(t, e, "127.0.0.1:0")
	var produced, refused atomic.Int64
	var blocked atomic.Bool
	blocked.Store(true)
	b.Cluster().ControlKey(int16(kmsg.Produce), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		if produced.Add(1) == 1 || !blocked.Load() {
			return nil, nil, false
		}
		b.Cluster().KeepControl()
		refused.Add(1)
		req := kreq.(*kmsg.ProduceRequest)
		resp := req.ResponseKind().(*kmsg.ProduceResponse)
		for _, rt := range req.Topics {
			st := kmsg.NewProduceResponseTopic()
			st.Topic, st.TopicID = rt.Topic, rt.TopicID
			for _, rp := range rt.Partitions {
				sp := kmsg.NewProduceResponseTopicPartition()
				sp.Partition, sp.ErrorCode = rp.Partition, 19 // NOT_ENOUGH_REPLICAS: retriable
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})

	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) SELECT 'j' || i, 'img_gen', 'done' FROM generate_series(1, 5000) i`)
	first := startProc(t, e)
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		n := topicCount(t, e, e.Topic("img_gen"))
		return n > 0 && refused.Load() > 0, fmt.Sprintf("%d snapshot events landed, %d produce requests refused", n, refused.Load())
	})
	if n := e.Count(t, `SELECT count(*) FROM jobstream_slots WHERE slot_name = $1 AND completed_at IS NULL`, e.Slot); n != 1 {
		t.Fatal("jobstream_slots does not show a snapshot in progress")
	}
	landed := topicCount(t, e, e.Topic("img_gen"))
	first.Kill()

	// While no reader runs: changes the new snapshot must contain.
	e.Exec(t, `UPDATE jobs SET seq = 1 WHERE job_id IN ('j1', 'j2500', 'j5000')`)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('late', 'img_gen', 'done')`)
	blocked.Store(false)
	second := startProc(t, e)
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		n := e.Count(t, `SELECT count(*) FROM jobstream_slots WHERE slot_name = $1 AND completed_at IS NOT NULL AND snapshot_rows = 5001`, e.Slot)
		return n == 1, "second snapshot not complete"
	})
	if !strings.Contains(second.Log(), "interrupted; dropping the slot") {
		t.Error("the second reader did not say it starts the snapshot over")
	}
	e.Exec(t, `UPDATE jobs SET seq = 2 WHERE job_id IN ('j1', 'late')`)

	msgs := waitMessages(t, e, e.Topic("img_gen"), int(landed)+5001+2)
	reads := map[string][]int{}
	var updates []string
	var markers []string
	for _, m := range msgs {
		env := decode(t, m)
		seq := seqOf(t, env)
		switch env.Op {
		case "r":
			reads[schema.JobIDFromKey(m.Key)] = append(reads[schema.JobIDFromKey(m.Key)], seq)
			if env.Source.Snapshot != "true" {
				markers = append(markers, env.Source.Snapshot)
			}
		case "u":
			updates = append(updates, fmt.Sprintf("%s=%d", schema.JobIDFromKey(m.Key), seq))
		default:
			t.Errorf("unexpected event %s", m.Value)
		}
	}
	if len(reads) != 5001 {
		t.Fatalf("%d rows read in the snapshots, want 5001", len(reads))
	}
	for _, id := range []string{"j1", "j2500", "j5000"} {
		if r := reads[id]; r[len(r)-1] != 1 {
			t.Errorf("%s: the last snapshot read seq %v, want 1 (its state before the second snapshot)", id, r)
		}
	}
	if len(updates) != 2 || !strings.Contains(strings.Join(updates, " "), "j1=2") || !strings.Contains(strings.Join(updates, " "), "late=2") {
		t.Errorf("updates after the snapshot: %v", updates)
	}
	t.Logf("first snapshot killed after %d of 5000 events reached the broker; the second emitted 5001 (%d duplicates in all); markers %v",
		landed, len(msgs)-5001-2, markers)
}
