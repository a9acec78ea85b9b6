package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/ops/admin"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
	"github.com/jobstream/jobstream/schema/kafkaconn"
)

// events writes change events to topic as the reader would: each job done
// at step, keyed by job_id and hashed by murmur2, at LSNs from lsn on.
func events(t *testing.T, e *harness.Env, topic, step string, lsn int64, jobs ...string) {
	t.Helper()
	ctx := context.Background()
	b := kafkaconn.Broker{Addrs: e.Brokers}
	if err := b.EnsureTopics(ctx, 3, topic); err != nil {
		t.Fatal(err)
	}
	var msgs []kafka.Message
	for i, j := range jobs {
		v, err := json.Marshal(schema.Envelope{Op: "u", After: map[string]any{"job_id": j, "current_step": step, "status": "done"},
			Source: schema.Source{LSN: lsn + int64(i), TsMs: time.Now().UnixMilli()}})
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, kafka.Message{Key: []byte(j), Value: v})
	}
	// A transport of its own: kafka-go's default one may keep metadata from
	// before the topic was created.
	w := &kafka.Writer{Addr: kafka.TCP(e.Brokers...), Topic: topic, Balancer: &kafka.Murmur2Balancer{}, BatchTimeout: time.Millisecond, RequiredAcks: kafka.RequireAll,
		Transport: b.Transport()}
	defer w.Close()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
}

func jobState(t *testing.T, e *harness.Env, id string) string {
	t.Helper()
	return e.Dump(t, `SELECT current_step || ':' || status FROM jobs WHERE job_id = $1`, id)
}

// TestReplay: a dry run plans and changes nothing; a replay rewinds the
// jobs that passed the trigger (a running one only with Force), skips the
// others with their reason, records one mark each, and Audit shows them.
func TestReplay(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	ctx := context.Background()
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES
		('past', 'overlay', 'done'), ('busy', 'planner', 'running'), ('behind', 'img_gen', 'done')`)
	events(t, e, e.Topic("vlm_analyze"), "vlm_analyze", 100, "past", "busy", "behind", "gone", "past")
	k := admin.NewKafka(kafkaconn.Broker{Addrs: e.Brokers})
	o := admin.ReplayOptions{Step: "yolo_detect", Deployment: admin.Deployment{TopicPrefix: e.Prefix}, All: true, DryRun: true, By: "tester"}

	plan, err := admin.Replay(ctx, e.Pool(t), k, o)
	if err != nil {
		t.Fatal(err)
	}
	skipped := map[string]admin.SkipReason{}
	for _, j := range plan.Skipped {
		skipped[j.JobID] = j.Reason
	}
	if len(plan.Replayed) != 1 || plan.Replayed[0].JobID != "past" || plan.Replayed[0].Step != "overlay" || plan.Trigger != "vlm_analyze" ||
		skipped["busy"] != admin.SkipRunning || skipped["behind"] != admin.SkipNotReached || skipped["gone"] != admin.SkipGone || plan.Range != "[beginning, end)" {
		t.Fatalf("plan: %+v", plan)
	}
	if got := jobState(t, e, "past"); got != "overlay:done\n" {
		t.Fatalf("the dry run moved past to %s", got)
	}

	o.All, o.DryRun, o.Force, o.Jobs = false, false, true, []string{"past", "busy"}
	res, err := admin.Replay(ctx, e.Pool(t), k, o)
	if err != nil || len(res.Replayed) != 2 || len(res.Skipped) != 0 {
		t.Fatalf("replay: %+v, %v", res, err)
	}
	for _, id := range []string{"past", "busy"} {
		if got := jobState(t, e, id); got != "vlm_analyze:done\n" {
			t.Errorf("%s is at %s after the replay, want vlm_analyze:done", id, got)
		}
	}
	marks := e.ReadTopic(t, e.Topics().Replays())
	if len(marks) != 2 {
		t.Fatalf("%d replay marks, want 2", len(marks))
	}
	for _, m := range marks {
		var mark admin.ReplayMark
		if err := json.Unmarshal(m.Value, &mark); err != nil || mark.By != "tester" || mark.Forced != (schema.JobIDFromKey(m.Key) == "busy") || mark.JobID != schema.JobIDFromKey(m.Key) {
			t.Errorf("mark %s: %+v, %v", m.Value, mark, err)
		}
	}

	// No reader runs here, so the rewind's own change event is not in the
	// topics: the mark stays a "replay" entry, after the job's two changes.
	// k learns of the replay topic within its metadata's lifetime.
	var kinds []string
	harness.Eventually(t, 10*time.Second, func() (bool, string) {
		hist, err := admin.Audit(ctx, k, e.Pool(t), admin.AuditOptions{JobID: "past", Deployment: admin.Deployment{TopicPrefix: e.Prefix}})
		kinds = nil
		for _, h := range hist {
			kinds = append(kinds, h.Kind+":"+h.Step)
		}
		return err == nil && len(hist) == 3, fmt.Sprintf("audit of past: %v, %v", kinds, err)
	})
	if kinds[0] != "change:vlm_analyze" || kinds[2] != "replay:" {
		t.Fatalf("audit of past: %v", kinds)
	}
	if _, err := admin.Audit(ctx, k, nil, admin.AuditOptions{}); !errors.Is(err, admin.ErrNoJobID) {
		t.Errorf("Audit without a job: %v", err)
	}
}

// TestReplayErrors: what a caller gets wrong is told apart from failures.
func TestReplayErrors(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	ctx := context.Background()
	events(t, e, e.Topic("vlm_analyze"), "vlm_analyze", 1, "j1")
	k := admin.NewKafka(kafkaconn.Broker{Addrs: e.Brokers})
	for _, c := range []struct {
		o    admin.ReplayOptions
		want error
	}{
		{admin.ReplayOptions{Step: "img_gen", All: true}, admin.ErrUnknownStep},
		{admin.ReplayOptions{Step: "nope", All: true}, admin.ErrUnknownStep},
		{admin.ReplayOptions{Step: "yolo_detect", From: admin.BoundOffset(7, 0)}, admin.ErrNoPartition},
	} {
		c.o.TopicPrefix = e.Prefix
		if _, err := admin.Replay(ctx, e.Pool(t), k, c.o); !errors.Is(err, c.want) || !admin.IsInvalid(err) {
			t.Errorf("Replay(%+v) = %v, want %v", c.o, err, c.want)
		}
	}
	_, err := admin.Replay(ctx, e.Pool(t), k, admin.ReplayOptions{Step: "planner", Deployment: admin.Deployment{TopicPrefix: e.Prefix}, All: true})
	if err == nil || admin.IsInvalid(err) {
		t.Errorf("Replay of a topic that does not exist: %v, want a failure", err)
	}
}

// TestResetOffsets: an empty group moves to the earliest or latest offsets;
// a dry run commits nothing.
func TestResetOffsets(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	ctx := context.Background()
	topic := e.Topic("vlm_analyze")
	events(t, e, topic, "vlm_analyze", 1, "j1", "j2", "j3", "j4")
	k := admin.NewKafka(kafkaconn.Broker{Addrs: e.Brokers})
	o := admin.ResetOptions{Step: "yolo_detect", Deployment: admin.Deployment{TopicPrefix: e.Prefix}, To: "latest", DryRun: true}
	committed := func() int64 {
		c, err := k.Committed(ctx, e.Topics().Group("yolo_detect"), topic, []int{0, 1, 2})
		if err != nil {
			t.Fatal(err)
		}
		var n int64
		for _, off := range c {
			n += max(off, 0)
		}
		return n
	}
	for _, dry := range []bool{true, false} {
		o.DryRun = dry
		res, err := admin.ResetOffsets(ctx, k, o)
		if err != nil {
			t.Fatal(err)
		}
		var sum int64
		for _, p := range res.Offsets {
			sum += p.Offset
		}
		if len(res.Offsets) != 3 || sum != 4 || res.Group != e.Topics().Group("yolo_detect") {
			t.Fatalf("reset (dry %v): %+v", dry, res)
		}
		if want := map[bool]int64{true: 0, false: 4}[dry]; committed() != want {
			t.Fatalf("after the reset (dry %v) the group committed %d, want %d", dry, committed(), want)
		}
	}
	o.To = "yesterday"
	if _, err := admin.ResetOffsets(ctx, k, o); !errors.Is(err, admin.ErrBadResetTarget) {
		t.Errorf("reset to yesterday: %v", err)
	}
}

// TestStatus on a deployment where no reader ever ran: no slot, every step
// with its group and no lag, the jobs per state.
func TestStatus(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('a', 'img_gen', 'done'), ('b', 'img_gen', 'done'), ('c', 'planner', 'failed')`)
	rep, err := admin.Status(context.Background(), e.Pool(t), admin.NewKafka(kafkaconn.Broker{Addrs: e.Brokers}),
		admin.StatusOptions{Deployment: admin.Deployment{TopicPrefix: e.Prefix}, Slot: e.Slot})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Slot.Exists || rep.Slot.Name != e.Slot || len(rep.Steps) != len(schema.DefaultSteps)-1 || rep.DeadLetters != 0 {
		t.Fatalf("status: %+v", rep)
	}
	if s := rep.Steps[0]; s.Step != "vlm_analyze" || s.Topic != e.Topic("img_gen") || s.Lag != 0 || s.Group != e.Topics().Group("vlm_analyze") {
		t.Errorf("first step: %+v", s)
	}
	if len(rep.Jobs) != 2 || rep.Jobs[0] != (admin.JobCount{Step: "img_gen", Status: "done", Count: 2}) {
		t.Errorf("jobs: %+v", rep.Jobs)
	}
}

// TestAuditFindsJobsOfATableInAnotherSchema: with the jobs table in a
// schema of its own (found by search_path) and the reader writing Kafka
// Connect's form, whose key struct is named after the table's schema, audit
// and a replay's plan find every job in the partition its key hashes to.
func TestAuditFindsJobsOfATableInAnotherSchema(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	e.Exec(t, `CREATE SCHEMA pipeline; ALTER TABLE jobs SET SCHEMA pipeline; ALTER DATABASE `+e.DB+` SET search_path = pipeline, public`)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, e.DatabaseURL) // new connections take the search_path
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	harness.StartReader(t, ctx, cdc.Config{DatabaseURL: e.DatabaseURL, Brokers: e.Brokers, Slot: e.Slot,
		TopicPrefix: e.Prefix, Publication: e.Publication, Schemas: true, Partitions: 8})
	const n = 24
	if _, err := pool.Exec(ctx, `INSERT INTO jobs (job_id, current_step, status) SELECT 'j' || i, 'img_gen', 'done' FROM generate_series(1, $1) i`, n); err != nil {
		t.Fatal(err)
	}
	k := admin.NewKafka(kafkaconn.Broker{Addrs: e.Brokers})
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		offs, err := k.Offsets(ctx, e.Topic("img_gen"))
		var total int64
		for _, o := range offs {
			total += o.End
		}
		return total == n, fmt.Sprintf("%d of %d events (%v)", total, n, err)
	})
	var jobs []string
	for i := 1; i <= n; i++ {
		id := fmt.Sprintf("j%d", i)
		jobs = append(jobs, id)
		tl, err := admin.Audit(ctx, k, pool, admin.AuditOptions{JobID: id, Deployment: admin.Deployment{TopicPrefix: e.Prefix}})
		if err != nil || len(tl) != 1 || tl[0].Step != "img_gen" || tl[0].Status != "done" {
			t.Errorf("audit of %s: %+v, %v; want its one event", id, tl, err)
		}
	}
	plan, err := admin.Replay(ctx, pool, k, admin.ReplayOptions{Step: "vlm_analyze", Jobs: jobs, DryRun: true, Force: true,
		Deployment: admin.Deployment{TopicPrefix: e.Prefix}})
	if err != nil || len(plan.Replayed) != n {
		t.Errorf("replay plan: %d of %d jobs (%v)", len(plan.Replayed), n, err)
	}
}
