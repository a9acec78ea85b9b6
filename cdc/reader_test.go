package cdc_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/ops/broker"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
)

// startReader runs a reader for e until the test ends.
func startReader(t *testing.T, e *harness.Env, tweak func(*cdc.Config)) *cdc.Reader {
	t.Helper()
	cfg := cdc.Config{DatabaseURL: e.DatabaseURL, Brokers: e.Brokers, Slot: e.Slot, Publication: e.Publication,
		TopicPrefix: e.Prefix, StatusInterval: time.Second}
	if tweak != nil {
		tweak(&cfg)
	}
	r, err := cdc.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("reader: %v", err)
		}
	})
	select {
	case <-r.Ready():
	case err := <-done:
		t.Fatalf("reader stopped at start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("reader not ready within 30s")
	}
	return r
}

// waitMessages waits until topic holds at least n messages and returns them.
func waitMessages(t *testing.T, e *harness.Env, topic string, n int) []kafka.Message {
	t.Helper()
	var msgs []kafka.Message
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		msgs = e.ReadTopic(t, topic)
		return len(msgs) >= n, fmt.Sprintf("%s holds %d of %d messages", topic, len(msgs), n)
	})
	return msgs
}

func confirmedLSN(t *testing.T, e *harness.Env) pglogrepl.LSN {
	t.Helper()
	var s string
	if err := e.Pool(t).QueryRow(context.Background(), `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, e.Slot).Scan(&s); err != nil {
		t.Fatal(err)
	}
	lsn, err := pglogrepl.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

func currentLSN(t *testing.T, e *harness.Env) pglogrepl.LSN {
	t.Helper()
	var s string
	if err := e.Pool(t).QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&s); err != nil {
		t.Fatal(err)
	}
	lsn, _ := pglogrepl.ParseLSN(s)
	return lsn
}

// checkAgainstSchema checks an event against schema/envelope.schema.json:
// every required key present, no key the schema does not name.
func checkAgainstSchema(t *testing.T, value []byte) {
	t.Helper()
	var js struct {
		Required   []string                   `json:"required"`
		Properties map[string]json.RawMessage `json:"properties"`
	}
	if err := json.Unmarshal(schema.EnvelopeJSONSchema, &js); err != nil {
		t.Fatal(err)
	}
	var src struct {
		Required   []string                   `json:"required"`
		Properties map[string]json.RawMessage `json:"properties"`
	}
	json.Unmarshal(js.Properties["source"], &src)
	var ev map[string]json.RawMessage
	if err := json.Unmarshal(value, &ev); err != nil {
		t.Fatalf("event is not JSON: %s", value)
	}
	var evSrc map[string]json.RawMessage
	json.Unmarshal(ev["source"], &evSrc)
	check := func(where string, obj map[string]json.RawMessage, required []string, props map[string]json.RawMessage) {
		for _, k := range required {
			if _, ok := obj[k]; !ok {
				t.Errorf("%s lacks required %q: %s", where, k, value)
			}
		}
		for k := range obj {
			if _, ok := props[k]; !ok {
				t.Errorf("%s has %q, which the schema does not name", where, k)
			}
		}
	}
	check("event", ev, js.Required, js.Properties)
	check("source", evSrc, src.Required, src.Properties)
}

func TestEnvelopesForInsertUpdateDelete(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	startReader(t, e, nil)
	e.Exec(t, `ALTER TABLE jobs REPLICA IDENTITY FULL`)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status, payload) VALUES ('j1', 'img_gen', 'done', '{"prompt": "a cat"}')`)
	e.Exec(t, `UPDATE jobs SET current_step = 'vlm_analyze', status = 'running' WHERE job_id = 'j1'`)
	e.Exec(t, `DELETE FROM jobs WHERE job_id = 'j1'`)

	ins := waitMessages(t, e, e.Topic("img_gen"), 1)[0]
	vlm := waitMessages(t, e, e.Topic("vlm_analyze"), 2)
	for _, m := range append(vlm, ins) {
		checkAgainstSchema(t, m.Value)
		if string(m.Key) != "j1" {
			t.Fatalf("key %q, want j1", m.Key)
		}
	}
	env, err := schema.DecodeEnvelope(ins.Value)
	if err != nil {
		t.Fatal(err)
	}
	if env.Op != "c" || env.Before != nil || env.After["payload"] != `{"prompt": "a cat"}` || env.After["status"] != "done" {
		t.Fatalf("insert event: %s", ins.Value)
	}
	s := env.Source
	if s.Connector != "postgresql" || s.Name != e.Prefix || s.DB != e.DB || s.Schema != "public" || s.Table != "jobs" ||
		s.Snapshot != "false" || s.TxID == 0 || s.LSN == 0 || s.TsMs == 0 || !strings.HasPrefix(s.Sequence, `["`) {
		t.Fatalf("source block: %+v", s)
	}
	if _, err := time.Parse(time.RFC3339Nano, env.After["updated_at"].(string)); err != nil {
		t.Fatalf("updated_at is not ISO-8601: %v", env.After["updated_at"])
	}
	upd, _ := schema.DecodeEnvelope(vlm[0].Value)
	del, _ := schema.DecodeEnvelope(vlm[1].Value)
	if upd.Op != "u" || upd.Before["current_step"] != "img_gen" || upd.After["current_step"] != "vlm_analyze" {
		t.Fatalf("update event: %s", vlm[0].Value)
	}
	if del.Op != "d" || del.After != nil || del.Before["job_id"] != "j1" {
		t.Fatalf("delete event: %s", vlm[1].Value)
	}
	if !(upd.Source.LSN > env.Source.LSN && del.Source.LSN > upd.Source.LSN) {
		t.Fatalf("LSNs not increasing: %d %d %d", env.Source.LSN, upd.Source.LSN, del.Source.LSN)
	}
}

func TestBadRowsGoToDeadLetterTopic(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	r := startReader(t, e, func(c *cdc.Config) { c.MaxMessageBytes = 4000 })
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('bad-name', 'no such/step!', 'done')`)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('no-step', NULL, 'pending')`)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status, payload) VALUES ('too-big', 'img_gen', 'done', jsonb_build_object('blob', repeat('x', 8000)))`)
	e.Exec(t, `DELETE FROM jobs WHERE job_id = 'no-step'`)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('fine', 'img_gen', 'done')`)

	ok := waitMessages(t, e, e.Topic("img_gen"), 1)
	if len(ok) != 1 || string(ok[0].Key) != "fine" {
		t.Fatalf("img_gen topic: %d messages, first key %q", len(ok), ok[0].Key)
	}
	dlq := waitMessages(t, e, schema.DLQTopic(e.Prefix), 4)
	reasons := map[string]string{}
	for _, m := range dlq {
		var v struct {
			Reason string `json:"reason"`
		}
		if err := json.Unmarshal(m.Value, &v); err != nil || v.Reason == "" {
			t.Fatalf("dead letter without reason: %s", m.Value)
		}
		reasons[string(m.Key)] += v.Reason + ";"
	}
	for key, want := range map[string]string{"bad-name": "topic name", "no-step": "current_step", "too-big": "over the broker's message limit"} {
		if !strings.Contains(reasons[key], want) {
			t.Errorf("dead letter for %s: reason %q, want it to mention %q", key, reasons[key], want)
		}
	}
	if !strings.Contains(reasons["no-step"], "REPLICA IDENTITY FULL") {
		t.Errorf("delete without step: reason %q", reasons["no-step"])
	}
	if n := r.Stats().DeadLetters.Load(); n != 4 {
		t.Errorf("dead-letter counter %d, want 4", n)
	}
	// The slot moved past every bad row.
	want := currentLSN(t, e)
	harness.Eventually(t, 20*time.Second, func() (bool, string) {
		got := confirmedLSN(t, e)
		return got >= want, fmt.Sprintf("confirmed %s, want >= %s", got, want)
	})
}

// TestFlushWaitsForBrokerAck is the acknowledgement rule: with the broker
// down, the slot never confirms a position past the changes it could not
// deliver; once the broker is back (same data folder), every change arrives
// and only then the slot moves.
func TestFlushWaitsForBrokerAck(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	dir := filepath.Join(e.Dir, "broker")
	b, err := broker.Start(broker.Config{Listen: "127.0.0.1:0", DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	addr := b.Addr()
	t.Cleanup(func() { b.Close() })
	e.Brokers = []string{addr}
	startReader(t, e, nil)

	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) SELECT 'j' || i, 'img_gen', 'done' FROM generate_series(1, 100) i`)
	waitMessages(t, e, e.Topic("img_gen"), 100)
	b.Close()

	before := currentLSN(t, e)
	for i := 1; i <= 100; i++ {
		e.Exec(t, `UPDATE jobs SET status = 'running' WHERE job_id = $1`, fmt.Sprintf("j%d", i))
	}
	after := currentLSN(t, e)
	// For a while (several status intervals), the slot must not pass `before`.
	for end := time.Now().Add(4 * time.Second); time.Now().Before(end); {
		if got := confirmedLSN(t, e); got > before {
			t.Fatalf("slot confirmed %s past %s while the broker was down", got, before)
		}
		time.Sleep(100 * time.Millisecond)
	}

	b2, err := broker.Start(broker.Config{Listen: addr, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b2.Close() })
	msgs := waitMessages(t, e, e.Topic("img_gen"), 200)
	running := map[string]bool{}
	for _, m := range msgs {
		env, _ := schema.DecodeEnvelope(m.Value)
		if env.After["status"] == "running" {
			running[string(m.Key)] = true
		}
	}
	if len(running) != 100 {
		t.Fatalf("%d of 100 updates arrived after the broker came back", len(running))
	}
	harness.Eventually(t, 20*time.Second, func() (bool, string) {
		got := confirmedLSN(t, e)
		return got >= after, fmt.Sprintf("confirmed %s, want >= %s", got, after)
	})
}

// TestIdleSlotFollowsWAL: with jobs idle and WAL written elsewhere, the slot
// still advances, so it never pins WAL it does not need.
func TestIdleSlotFollowsWAL(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	startReader(t, e, nil)
	e.Exec(t, `CREATE TABLE other (id serial, pad text)`)
	e.Exec(t, `INSERT INTO other (pad) SELECT repeat('x', 1000) FROM generate_series(1, 20000)`)
	target := currentLSN(t, e)
	harness.Eventually(t, 40*time.Second, func() (bool, string) {
		// Keep WAL moving a little, as a busy server does.
		e.Exec(t, `INSERT INTO other (pad) VALUES ('tick')`)
		got := confirmedLSN(t, e)
		return got >= target, fmt.Sprintf("confirmed %s, want >= %s (%d bytes retained)", got, target, target-got)
	})
}

func TestConfigErrorsAreOneSentence(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		cfg  cdc.Config
		want string
	}{
		{cdc.Config{Brokers: []string{"x:1"}}, "DATABASE_URL"},
		{cdc.Config{DatabaseURL: "postgres://x"}, "KAFKA_BROKERS"},
		{cdc.Config{DatabaseURL: "postgres://x", Brokers: []string{"x:1"}, Slot: "Bad-Slot"}, "slot name"},
	} {
		_, err := cdc.New(c.cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%+v) = %v, want an error naming %s", c.cfg, err, c.want)
		}
	}
	e := harness.New(t)
	r, err := cdc.New(cdc.Config{DatabaseURL: e.DatabaseURL, Brokers: []string{"127.0.0.1:1"}, Slot: e.Slot})
	if err != nil {
		t.Fatal(err)
	}
	err = r.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "cannot reach a Kafka broker") {
		t.Fatalf("Run with no broker = %v", err)
	}
	if errors.Is(err, context.Canceled) {
		t.Fatal("not a clean error")
	}
}
