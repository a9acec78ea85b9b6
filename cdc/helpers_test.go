package cdc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/ops/broker"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
)

// readerConfig is the configuration of a reader for e.
func readerConfig(e *harness.Env) cdc.Config {
	return cdc.Config{DatabaseURL: e.DatabaseURL, Brokers: e.Brokers, Slot: e.Slot, Publication: e.Publication,
		TopicPrefix: e.Prefix, StatusInterval: time.Second}
}

// startReader runs an in-process reader for e until the test ends and
// returns once it is ready.
func startReader(t testing.TB, e *harness.Env, tweak func(*cdc.Config)) *cdc.Reader {
	t.Helper()
	cfg := readerConfig(e)
	if tweak != nil {
		tweak(&cfg)
	}
	return harness.StartReader(t, context.Background(), cfg)
}

// proc is a `jobstream reader` process; cmd is its command.
type proc struct {
	*harness.Process
	cmd *exec.Cmd
}

// startProc starts `jobstream reader` for e with args; the test's end stops it.
func startProc(t testing.TB, e *harness.Env, args ...string) *proc {
	t.Helper()
	p := e.StartProcess(t, "reader", []string{"JOBSTREAM_STATUS_INTERVAL=1s"}, append([]string{"reader"}, args...)...)
	return &proc{Process: p, cmd: p.Cmd()}
}

// privateBroker starts a broker of the test's own with its data in
// e.Dir/broker, on listen ("127.0.0.1:0" for a new one, or the address of
// one the test restarts), points e at it and closes it when the test ends.
func privateBroker(t testing.TB, e *harness.Env, listen string, opts ...kfake.Opt) *broker.Broker {
	t.Helper()
	b := harness.StartBroker(t, broker.Config{Listen: listen, DataDir: filepath.Join(e.Dir, "broker"), Opts: opts})
	e.Brokers = []string{b.Addr()}
	return b
}

// waitSlotActive waits until the slot is consistent and streamed from by
// some process, and returns that walsender's pid.
func waitSlotActive(t testing.TB, e *harness.Env) int {
	t.Helper()
	var pid int
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		pid = e.Count(t, `SELECT coalesce((SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active), 0)`, e.Slot)
		if pid == 0 {
			return false, "slot " + e.Slot + " not active"
		}
		// A slot is active from its creation, before it is consistent:
		// rows committed before that are in the snapshot (or, with
		// --snapshot never, nowhere). The reader records the slot once
		// it is consistent.
		return e.Count(t, `SELECT count(*) FROM jobstream_slots WHERE slot_name = $1 AND completed_at IS NOT NULL`, e.Slot) == 1,
			"slot " + e.Slot + " not consistent yet (no completed row in jobstream_slots)"
	})
	return pid
}

// readAll returns every message now in topic, in partition then offset
// order, reading whole batches (harness.ReadTopic reads one at a time).
func readAll(t testing.TB, e *harness.Env, topic string) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n := partitionCount(t, e, topic)
	var out []kafka.Message
	for p := range n {
		pc, err := kafka.DialLeader(ctx, "tcp", e.Brokers[0], topic, p)
		if err != nil {
			t.Fatal(err)
		}
		first, last, err := pc.ReadOffsets()
		if err != nil {
			t.Fatal(err)
		}
		for off := first; off < last; {
			if _, err := pc.Seek(off, kafka.SeekAbsolute); err != nil {
				t.Fatal(err)
			}
			pc.SetReadDeadline(time.Now().Add(20 * time.Second))
			b := pc.ReadBatch(1, 64<<20)
			from := off
			for {
				m, err := b.ReadMessage()
				if err != nil {
					break
				}
				out = append(out, m)
				off = m.Offset + 1
			}
			if err := b.Close(); off == from {
				t.Fatalf("read %s/%d at %d of %d: no progress (%v)", topic, p, off, last, err)
			}
		}
		pc.Close()
	}
	return out
}

// client returns a kafka-go client with a fresh metadata cache.
func client(t testing.TB, e *harness.Env) *kafka.Client {
	tr := &kafka.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &kafka.Client{Addr: kafka.TCP(e.Brokers...), Timeout: 10 * time.Second, Transport: tr}
}

// partitionCount returns topic's partition count, 0 when it does not exist.
// Unlike kafka-go's Conn.ReadPartitions it never creates the topic.
func partitionCount(t testing.TB, e *harness.Env, topic string) int {
	t.Helper()
	c := client(t, e)
	md, err := c.Metadata(context.Background(), &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tp := range md.Topics {
		if tp.Name == topic && tp.Error == nil {
			return len(tp.Partitions)
		}
	}
	return 0
}

// topicCount returns how many messages topic holds, from its offsets.
func topicCount(t testing.TB, e *harness.Env, topic string) int64 {
	t.Helper()
	n := partitionCount(t, e, topic)
	if n == 0 {
		return 0
	}
	c := client(t, e)
	req := &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{}}
	for p := range n {
		req.Topics[topic] = append(req.Topics[topic], kafka.FirstOffsetOf(p), kafka.LastOffsetOf(p))
	}
	res, err := c.ListOffsets(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, po := range res.Topics[topic] {
		if po.Error != nil {
			t.Fatalf("offsets of %s/%d: %v", topic, po.Partition, po.Error)
		}
		total += po.LastOffset - po.FirstOffset
	}
	return total
}

// waitMessages waits until topic holds at least n messages and returns them.
func waitMessages(t testing.TB, e *harness.Env, topic string, n int) []kafka.Message {
	t.Helper()
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		c := topicCount(t, e, topic)
		return c >= int64(n), fmt.Sprintf("%s holds %d of %d messages", topic, c, n)
	})
	return readAll(t, e, topic)
}

// waitOnlyEvent waits for topic's first message and fails the test unless
// it is the topic's only one and is jobID's event: the good row that went
// through among bad ones.
func waitOnlyEvent(t testing.TB, e *harness.Env, topic, jobID string) {
	t.Helper()
	got := waitMessages(t, e, topic, 1)
	if len(got) != 1 || schema.JobIDFromKey(got[0].Key) != jobID {
		t.Fatalf("%s: %d messages, first key %q, want only %s's event", topic, len(got), got[0].Key, jobID)
	}
}

// deadLetterReasons waits for the n dead letters the test expects and
// returns their reasons by job id ("; "-joined where a job has several).
// Every letter carries its reason in the HeaderReason header too, and its
// event, unless it was too large to carry (null) or the row had no job_id,
// is a valid envelope.
func deadLetterReasons(t *testing.T, e *harness.Env, n int) map[string]string {
	t.Helper()
	letters := waitMessages(t, e, e.Topics().DLQ(), n)
	reasons := map[string]string{}
	for _, m := range letters {
		v := deadLetter(t, m)
		if len(m.Headers) != 1 || m.Headers[0].Key != schema.HeaderReason || string(m.Headers[0].Value) != v.Reason {
			t.Errorf("dead letter headers %v, want only %s: %q", m.Headers, schema.HeaderReason, v.Reason)
		}
		if string(v.Event) != "null" && m.Key != nil { // a row without job_id is no envelope of ours
			validate(t, v.Event)
		}
		key := schema.JobIDFromKey(m.Key)
		if reasons[key] != "" {
			reasons[key] += "; "
		}
		reasons[key] += v.Reason
	}
	if len(letters) != n {
		t.Errorf("%d dead letters, want %d: %v", len(letters), n, reasons)
	}
	return reasons
}

// waitDeadLettered waits for r's dead-letter counter to reach n.
func waitDeadLettered(t testing.TB, r *cdc.Reader, n int64) {
	t.Helper()
	harness.Eventually(t, 20*time.Second, func() (bool, string) {
		got := r.Stats().DeadLetters.Load()
		return got == n, fmt.Sprintf("dead-letter counter %d, want %d", got, n)
	})
}

func confirmedLSN(t testing.TB, e *harness.Env) pglogrepl.LSN {
	t.Helper()
	var s *string
	if err := e.Pool(t).QueryRow(context.Background(), `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, e.Slot).Scan(&s); err != nil {
		t.Fatal(err)
	}
	if s == nil {
		return 0
	}
	lsn, err := pglogrepl.ParseLSN(*s)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

func currentLSN(t testing.TB, e *harness.Env) pglogrepl.LSN {
	t.Helper()
	var s string
	if err := e.Pool(t).QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&s); err != nil {
		t.Fatal(err)
	}
	lsn, _ := pglogrepl.ParseLSN(s)
	return lsn
}

func decode(t testing.TB, m kafka.Message) *schema.Envelope {
	t.Helper()
	env, err := schema.DecodeEnvelope(m.Value)
	if err != nil {
		t.Fatalf("event is not an envelope: %v: %s", err, m.Value)
	}
	return env
}

// The crash and snapshot tests count changes per job in a seq column they
// add to jobs; an event's seq is the row's after it.

// seqEnv returns a fresh harness.Env whose jobs table has the seq column.
func seqEnv(t testing.TB) *harness.Env {
	t.Helper()
	e := harness.New(t)
	e.Exec(t, `ALTER TABLE jobs ADD COLUMN seq int NOT NULL DEFAULT 0`)
	return e
}

// seqOf returns the seq in env's after; the test fails if it has none.
func seqOf(t testing.TB, env *schema.Envelope) int {
	t.Helper()
	s, err := strconv.Atoi(fmt.Sprint(env.After["seq"]))
	if err != nil {
		t.Fatalf("event without an integer seq (%v): %v", err, env.After)
	}
	return s
}

// committedSeqs returns every job's seq as committed in the database.
func committedSeqs(t testing.TB, e *harness.Env) map[string]int {
	t.Helper()
	final := map[string]int{}
	rows, err := e.Pool(t).Query(context.Background(), `SELECT job_id, seq FROM jobs`)
	if err != nil {
		t.Fatal(err)
	}
	var id string
	var seq int
	if _, err := pgx.ForEachRow(rows, []any{&id, &seq}, func() error { final[id] = seq; return nil }); err != nil || len(final) == 0 {
		t.Fatalf("read the final rows: %v (%d rows)", err, len(final))
	}
	return final
}

// deadLetter decodes m, a record of the dead-letter topic; the test fails
// if it is no letter (not JSON, or without a reason).
func deadLetter(t testing.TB, m kafka.Message) schema.DeadLetter {
	t.Helper()
	var l schema.DeadLetter
	if err := json.Unmarshal(m.Value, &l); err != nil || l.Reason == "" {
		t.Fatalf("a message in the dead-letter topic that is no dead letter (%v): %s", err, m.Value)
	}
	return l
}

// validate checks value against schema/envelope.schema.json with a
// validator of the JSON Schema keywords that schema uses: type, enum,
// const, pattern, required, properties, additionalProperties and local $ref.
func validate(t testing.TB, value []byte) {
	t.Helper()
	var root map[string]any
	if err := json.Unmarshal(schema.EnvelopeJSONSchema, &root); err != nil {
		t.Fatal(err)
	}
	var doc any
	dec := json.NewDecoder(bytes.NewReader(value))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("event is not JSON: %v: %s", err, value)
	}
	if errs := check(root, root, doc, "$"); len(errs) > 0 {
		t.Errorf("event does not match the envelope's JSON Schema:\n  %s\nevent: %s", strings.Join(errs, "\n  "), value)
	}
}

func check(root, s map[string]any, v any, path string) []string {
	if ref, ok := s["$ref"].(string); ok {
		node := any(root)
		for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
			node = node.(map[string]any)[part]
		}
		return check(root, node.(map[string]any), v, path)
	}
	var errs []string
	if ty, ok := s["type"]; ok {
		var types []any
		if l, ok := ty.([]any); ok {
			types = l
		} else {
			types = []any{ty}
		}
		match := false
		for _, want := range types {
			match = match || isType(v, want.(string))
		}
		if !match {
			return append(errs, fmt.Sprintf("%s: %v is not of type %v", path, v, ty))
		}
	}
	if c, ok := s["const"]; ok && fmt.Sprint(c) != fmt.Sprint(v) {
		errs = append(errs, fmt.Sprintf("%s: %v is not %v", path, v, c))
	}
	if enum, ok := s["enum"].([]any); ok {
		found := false
		for _, e := range enum {
			found = found || fmt.Sprint(e) == fmt.Sprint(v)
		}
		if !found {
			errs = append(errs, fmt.Sprintf("%s: %v is not one of %v", path, v, enum))
		}
	}
	if pat, ok := s["pattern"].(string); ok {
		if str, ok := v.(string); ok && !regexp.MustCompile(pat).MatchString(str) {
			errs = append(errs, fmt.Sprintf("%s: %q does not match %s", path, str, pat))
		}
	}
	obj, isObj := v.(map[string]any)
	if !isObj {
		return errs
	}
	props, _ := s["properties"].(map[string]any)
	if req, ok := s["required"].([]any); ok {
		for _, k := range req {
			if _, ok := obj[k.(string)]; !ok {
				errs = append(errs, fmt.Sprintf("%s: lacks required %q", path, k))
			}
		}
	}
	for k, val := range obj {
		ps, ok := props[k].(map[string]any)
		if !ok {
			if s["additionalProperties"] == false {
				errs = append(errs, fmt.Sprintf("%s: has %q, which the schema does not name", path, k))
			}
			continue
		}
		errs = append(errs, check(root, ps, val, path+"."+k)...)
	}
	return errs
}

func isType(v any, want string) bool {
	switch want {
	case "null":
		return v == nil
	case "string":
		_, ok := v.(string)
		return ok
	case "object":
		_, ok := v.(map[string]any)
		return ok
	case "array":
		_, ok := v.([]any)
		return ok
	case "boolean":
		_, ok := v.(bool)
		return ok
	case "integer":
		n, ok := v.(json.Number)
		if !ok {
			return false
		}
		_, err := n.Int64()
		return err == nil
	case "number":
		_, ok := v.(json.Number)
		return ok
	}
	return false
}

// sqlASCIIDatabase gives the test a second database, encoded SQL_ASCII (so
// text may hold any bytes), migrated, with its own slot and topic prefix.
func sqlASCIIDatabase(t testing.TB, e *harness.Env) *harness.Env {
	t.Helper()
	ctx := context.Background()
	a := e.Copy(t)
	a.DB = e.DB + "_ascii"
	a.DatabaseURL = e.Postgres.URL(a.DB)
	a.Slot = e.Slot + "_ascii"
	a.Prefix = e.Prefix + "-ascii"
	admin, err := pgx.Connect(ctx, e.Postgres.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+a.DB+" ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Pool(t).Close()
		admin, err := pgx.Connect(ctx, e.Postgres.URL("postgres"))
		if err != nil {
			return
		}
		defer admin.Close(ctx)
		harness.Eventually(t, 30*time.Second, func() (bool, string) {
			_, err := admin.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, a.Slot)
			return err == nil, fmt.Sprintf("drop slot: %v", err)
		})
		admin.Exec(ctx, "DROP DATABASE IF EXISTS "+a.DB+" WITH (FORCE)")
	})
	conn, err := pgx.Connect(ctx, a.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := schema.Migrate(ctx, conn, schema.MigrateOptions{Publication: a.Publication}); err != nil {
		t.Fatal(err)
	}
	return a
}

// produced adapts a func to a HookProduced.
type produced func(events int, took time.Duration)

func (f produced) OnProduced(events int, took time.Duration) { f(events, took) }

// commitAcked adapts a func to a HookCommitAcked.
type commitAcked func(latency time.Duration)

func (f commitAcked) OnCommitAcked(latency time.Duration) { f(latency) }

// historyOf says, per key in order of their first message, "key: op op"
// of msgs, "; "-separated: a partition's order, which is a key's. Op
// "tombstone" is a null value; the key-change headers are named after
// the op they go with, as "op>newkey" and "op<oldkey".
func historyOf(t *testing.T, msgs []kafka.Message) string {
	t.Helper()
	var keys []string
	ops := map[string][]string{}
	for _, m := range msgs {
		key, op := schema.JobIDFromKey(m.Key), "tombstone"
		if m.Value != nil {
			op = decode(t, m).Op
		}
		for _, h := range m.Headers {
			switch h.Key {
			case schema.HeaderNewKey:
				op += ">" + schema.JobIDFromKey(h.Value)
			case schema.HeaderOldKey:
				op += "<" + schema.JobIDFromKey(h.Value)
			}
		}
		if ops[key] == nil {
			keys = append(keys, key)
		}
		ops[key] = append(ops[key], op)
	}
	slices.Sort(keys)
	var out []string
	for _, k := range keys {
		out = append(out, k+": "+strings.Join(ops[k], " "))
	}
	return strings.Join(out, "; ")
}

// only returns the one event of key with op among msgs.
func only(t *testing.T, msgs []kafka.Message, key, op string) kafka.Message {
	t.Helper()
	var found []kafka.Message
	for _, m := range msgs {
		if schema.JobIDFromKey(m.Key) == key && m.Value != nil && decode(t, m).Op == op {
			found = append(found, m)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d events %s of %s, want 1", len(found), op, key)
	}
	return found[0]
}
