package cdc_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/ops/localpg"
	"github.com/jobstream/jobstream/schema"
)

func TestEnvelopesForInsertUpdateDelete(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	startReader(t, e, nil)
	e.Exec(t, `ALTER TABLE jobs REPLICA IDENTITY FULL`)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status, payload) VALUES ('j1', 'img_gen', 'done', '{"prompt": "a cat"}')`)
	e.Exec(t, `UPDATE jobs SET current_step = 'vlm_analyze', status = 'running' WHERE job_id = 'j1'`)
	e.Exec(t, `DELETE FROM jobs WHERE job_id = 'j1'`)

	ins := waitMessages(t, e, e.Topic("img_gen"), 1)[0]
	vlm := waitMessages(t, e, e.Topic("vlm_analyze"), 3)
	// The delete is followed by its tombstone: the key, a null value.
	if tomb := vlm[2]; schema.JobIDFromKey(tomb.Key) != "j1" || tomb.Value != nil {
		t.Fatalf("after the delete: key %q value %q; want the tombstone of j1", tomb.Key, tomb.Value)
	}
	vlm = vlm[:2]
	for _, m := range append(vlm, ins) {
		validate(t, m.Value)
		if schema.JobIDFromKey(m.Key) != "j1" {
			t.Fatalf("key %q, want j1", m.Key)
		}
	}
	env := decode(t, ins)
	if env.Op != "c" || env.Before != nil || env.After["payload"] != `{"prompt": "a cat"}` || env.After["status"] != "done" {
		t.Fatalf("insert event: %s", ins.Value)
	}
	s := env.Source
	if s.Connector != "postgresql" || s.Name != e.Prefix || s.DB != e.DB || s.Schema != "public" || s.Table != "jobs" ||
		s.Snapshot != "false" || s.TxID == 0 || s.LSN == 0 || s.TsMs == 0 || !strings.HasPrefix(s.Sequence, `[`) {
		t.Fatalf("source block: %+v", s)
	}
	if _, err := time.Parse(time.RFC3339Nano, env.After["updated_at"].(string)); err != nil {
		t.Fatalf("updated_at is not ISO-8601: %v", env.After["updated_at"])
	}
	upd, del := decode(t, vlm[0]), decode(t, vlm[1])
	if upd.Op != "u" || upd.Before["current_step"] != "img_gen" || upd.After["current_step"] != "vlm_analyze" {
		t.Fatalf("update event: %s", vlm[0].Value)
	}
	if del.Op != "d" || del.After != nil || del.Before["job_id"] != "j1" || del.Before["current_step"] != "vlm_analyze" {
		t.Fatalf("delete event: %s", vlm[1].Value)
	}
	if !(upd.Source.LSN > env.Source.LSN && del.Source.LSN > upd.Source.LSN) {
		t.Fatalf("LSNs not increasing: %d %d %d", env.Source.LSN, upd.Source.LSN, del.Source.LSN)
	}
	// The sequence's first element is the commit before the event's transaction.
	want := fmt.Sprintf(`"%d"]`, upd.Source.LSN)
	if !strings.HasSuffix(upd.Source.Sequence, want) || strings.HasPrefix(upd.Source.Sequence, "[null") {
		t.Fatalf("update's sequence %s, want [\"<last commit>\",%s", upd.Source.Sequence, want)
	}
}

// TestEnvelopeRendersTypesAsDebezium is item 7: every column of the row, each
// rendered as Debezium's Postgres connector renders it with its defaults,
// unchanged TOASTed values as its placeholder unless REPLICA IDENTITY FULL,
// and every event valid against schema/envelope.schema.json.
func TestEnvelopeRendersTypesAsDebezium(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	e.Exec(t, `ALTER TABLE jobs ADD COLUMN n int, ADD COLUMN big bigint, ADD COLUMN small smallint, ADD COLUMN flag boolean,
		ADD COLUMN ratio float8, ADD COLUMN price numeric(10,2), ADD COLUMN amount numeric, ADD COLUMN born date,
		ADD COLUMN seen timestamp, ADD COLUMN blob bytea, ADD COLUMN uid uuid, ADD COLUMN note text, ADD COLUMN doc json,
		ADD COLUMN at_time time, ADD COLUMN at_ms time(3), ADD COLUMN day_end time, ADD COLUMN at_tz timetz, ADD COLUMN took interval,
		ADD COLUMN back interval, ADD COLUMN ns int[], ADD COLUMN bigs int8[], ADD COLUMN tags text[], ADD COLUMN names varchar(20)[],
		ADD COLUMN flags bool[], ADD COLUMN ratios float8[], ADD COLUMN prices numeric(10,2)[], ADD COLUMN amounts numeric[],
		ADD COLUMN uids uuid[], ADD COLUMN stamps timestamptz[], ADD COLUMN docs jsonb[], ADD COLUMN grid int[][]`)
	e.Exec(t, `ALTER TABLE jobs ALTER COLUMN results SET STORAGE EXTERNAL`)
	startReader(t, e, nil)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status, payload, results, error, updated_at, n, big, small, flag, ratio,
		price, amount, born, seen, blob, uid, note, doc, at_time, at_ms, day_end, at_tz, took, back, ns, bigs, tags, names, flags,
		ratios, prices, amounts, uids, stamps, docs, grid) VALUES
		('j1', 'img_gen', 'done', '{"prompt": "a \"red\" square", "seed": 7}', jsonb_build_object('img_gen', repeat('r', 6000)),
		NULL, '2026-11-26 23:32:21.123456+00', -42, 9007199254740993, 7, true, 0.25, 1.50, -12.345, '1970-01-11',
		'1970-01-01 00:00:01.5', '\x68690a', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', E'line\nnext "q" \\ ✓', '[1, 2]',
		'13:14:15.123456', '13:14:15.123', '24:00:00', '04:05:06.789+05:30', '1 year 2 mons 3 days 04:05:06.789',
		'-1 day +00:00:01', '{1,NULL,3}', '{}', ARRAY['a b', 'c"d', 'e\f', NULL, 'NULL', ''], '{x,y}', '{t,f,NULL}',
		'{1.5,NaN}', '{1.50,-1.28}', '{1.5}', '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}',
		ARRAY['2026-11-26 23:32:21.123456+00'::timestamptz], ARRAY['{"a": 1}'::jsonb, '[1, 2]'], '{{1,2},{3,4}}')`)
	// Only status changes: results is TOASTed and unchanged, so the WAL
	// does not carry it.
	e.Exec(t, `UPDATE jobs SET status = 'running' WHERE job_id = 'j1'`)
	e.Exec(t, `ALTER TABLE jobs REPLICA IDENTITY FULL`)
	e.Exec(t, `UPDATE jobs SET status = 'done' WHERE job_id = 'j1'`)

	msgs := waitMessages(t, e, e.Topic("img_gen"), 3)
	for _, m := range msgs {
		validate(t, m.Value)
	}
	var ins map[string]json.RawMessage
	if err := json.Unmarshal(msgs[0].Value, &ins); err != nil {
		t.Fatal(err)
	}
	var after map[string]json.RawMessage
	json.Unmarshal(ins["after"], &after)
	want := map[string]string{
		"job_id":     `"j1"`,
		"payload":    `"{\"seed\": 7, \"prompt\": \"a \\\"red\\\" square\"}"`, // jsonb: a JSON string (io.debezium.data.Json)
		"error":      `null`,
		"updated_at": `"2026-11-26T23:32:21.123456Z"`, // timestamptz: ISO-8601 (ZonedTimestamp)
		"n":          `-42`,
		"big":        `9007199254740993`,
		"small":      `7`,
		"flag":       `true`,
		"ratio":      `0.25`,
		"price":      `"AJY="`,                     // numeric(10,2): unscaled 150, big-endian, base64
		"amount":     `{"scale":3,"value":"z8c="}`, // numeric: VariableScaleDecimal, unscaled -12345
		"born":       `10`,                         // date: days since the epoch
		"seen":       `1500000`,                    // timestamp: MicroTimestamp
		"blob":       `"aGkK"`,                     // bytea: base64
		"uid":        `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`,
		"note":       `"line\nnext \"q\" \\ ✓"`,
		"doc":        `"[1, 2]"`,
		"at_time":    `47655123456`,     // time: MicroTime, µs past midnight
		"at_ms":      `47655123`,        // time(3): Time, ms past midnight
		"day_end":    `86400000000`,     // time 24:00:00: a whole day
		"at_tz":      `"22:35:06.789Z"`, // timetz: ZonedTime, in UTC
		"took":       `37091106789000`,  // interval: MicroDuration, months of 365.25/12 days
		"back":       `-86399000000`,    // interval "-1 days +00:00:01"
		"ns":         `[1,null,3]`,      // arrays: JSON arrays of their elements
		"bigs":       `[]`,
		"tags":       `["a b","c\"d","e\\f",null,"NULL",""]`,
		"names":      `["x","y"]`,
		"flags":      `[true,false,null]`,
		"ratios":     `[1.5,"NaN"]`,
		"prices":     `["AJY=","gA=="]`,
		"amounts":    `[{"scale":1,"value":"Dw=="}]`,
		"uids":       `["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]`,
		"stamps":     `["2026-11-26T23:32:21.123456Z"]`,
		"docs":       `["{\"a\": 1}","[1, 2]"]`,
		"grid":       `"{{1,2},{3,4}}"`, // multi-dimensional: left as text, as Debezium has no rendering for it
	}
	for col, w := range want {
		if got := string(after[col]); got != w {
			t.Errorf("after.%s = %s, want %s", col, got, w)
		}
	}
	if len(after) != 38 {
		t.Errorf("after has %d columns, want all 38: %s", len(after), ins["after"])
	}
	toasted := decode(t, msgs[1])
	if toasted.Op != "u" || toasted.After["results"] != "__debezium_unavailable_value" || toasted.After["status"] != "running" {
		t.Errorf("update under REPLICA IDENTITY DEFAULT: results %.60v, status %v", toasted.After["results"], toasted.After["status"])
	}
	full := decode(t, msgs[2])
	if r, _ := full.After["results"].(string); !strings.Contains(r, strings.Repeat("r", 6000)) || full.Before["status"] != "running" {
		t.Errorf("update under REPLICA IDENTITY FULL: results %.60v, before %v", full.After["results"], full.Before["status"])
	}
}

// TestBadRowsGoToDeadLetterTopic is item 6: a step that is no valid topic
// name, a row without a step, an event over the message limit: each goes
// to the dead-letter topic keyed by job_id with the reason, the stream goes
// on, the slot moves past them and the counter counts them.
func TestBadRowsGoToDeadLetterTopic(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	r := startReader(t, e, func(c *cdc.Config) { c.MaxMessageBytes = 4000 })
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('bad-name', 'no such/step!', 'done')`)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('ctl-name', E'bad\x01step', 'done')`) // the letter must stay JSON
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('no-step', NULL, 'pending')`)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status, payload) VALUES ('too-big', 'img_gen', 'done', jsonb_build_object('blob', repeat('x', 8000)))`)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('fine', 'img_gen', 'done')`)

	waitOnlyEvent(t, e, e.Topic("img_gen"), "fine")
	reasons := deadLetterReasons(t, e, 4)
	for key, want := range map[string]string{"bad-name": "topic name", "ctl-name": "topic name", "no-step": "current_step is null", "too-big": "over the broker's message limit of 4000"} {
		if !strings.Contains(reasons[key], want) {
			t.Errorf("dead letter for %s: reason %q, want it to mention %q", key, reasons[key], want)
		}
	}
	waitDeadLettered(t, r, 4)
	// The slot moved past every bad row.
	want := currentLSN(t, e)
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		got := confirmedLSN(t, e)
		return got >= want, fmt.Sprintf("confirmed %s, want >= %s", got, want)
	})
}

// TestBrokerLimitsAreLearnedAndRefusalsDeadLettered: the reader learns the
// broker's message.max.bytes by itself, and when the broker still refuses
// an event (a topic with a lower max.message.bytes), that event becomes a
// dead letter and the stream goes on.
func TestBrokerLimitsAreLearnedAndRefusalsDeadLettered(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	b := privateBroker(t, e, "127.0.0.1:0", kfake.BrokerConfigs(map[string]string{"message.max.bytes": "20000"}))
	// The vlm_analyze topic takes at most 3000 bytes per batch.
	c := &kafka.Client{Addr: kafka.TCP(b.Addr()), Timeout: 10 * time.Second, Transport: &kafka.Transport{}}
	if _, err := c.CreateTopics(context.Background(), &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: e.Topic("vlm_analyze"), NumPartitions: 3, ReplicationFactor: 1,
		ConfigEntries: []kafka.ConfigEntry{{ConfigName: "max.message.bytes", ConfigValue: "3000"}},
	}}}); err != nil {
		t.Fatal(err)
	}
	r := startReader(t, e, nil)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status, payload) VALUES ('huge', 'img_gen', 'done', jsonb_build_object('blob', repeat('x', 30000)))`)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status, payload) VALUES ('refused', 'vlm_analyze', 'done', jsonb_build_object('blob', repeat('y', 5000)))`)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('small', 'vlm_analyze', 'done')`)

	waitOnlyEvent(t, e, e.Topic("vlm_analyze"), "small")
	got := deadLetterReasons(t, e, 2)
	if !strings.Contains(got["huge"], "over the broker's message limit of 20000") {
		t.Errorf("huge: reason %q", got["huge"])
	}
	if !strings.Contains(got["refused"], "the broker refused the event") {
		t.Errorf("refused: reason %q", got["refused"])
	}
	waitDeadLettered(t, r, 2)
}

// TestUndecodableValueGoesToDeadLetter: in a SQL_ASCII database, text may
// hold bytes that are no UTF-8, which JSON cannot carry: the row goes to
// the dead-letter topic with the reason, and the stream goes on.
func TestUndecodableValueGoesToDeadLetter(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	ascii := sqlASCIIDatabase(t, e)
	r := startReader(t, ascii, nil)
	ascii.Exec(t, `INSERT INTO jobs (job_id, current_step, status, error) VALUES ('latin1', 'img_gen', 'done', E'caf\xe9')`)
	ascii.Exec(t, `INSERT INTO jobs (job_id, current_step, status, error) VALUES ('ascii', 'img_gen', 'done', 'cafe')`)
	waitOnlyEvent(t, ascii, ascii.Topic("img_gen"), "ascii")
	dl := waitMessages(t, ascii, ascii.Topics().DLQ(), 1)[0]
	if v := deadLetter(t, dl); schema.JobIDFromKey(dl.Key) != "latin1" ||
		!strings.Contains(v.Reason, "column error holds bytes that are not valid UTF-8") || !strings.Contains(string(v.Event), `caf\ufffd`) {
		t.Fatalf("dead letter %q: %s", dl.Key, dl.Value)
	}
	waitDeadLettered(t, r, 1)
}

// TestDeletesAndTruncates: a delete is op "d" keyed by job_id, in its step's
// topic when the WAL carries the step (REPLICA IDENTITY FULL), else in every
// step topic; a truncate is op "t" on every partition of every step topic.
func TestDeletesAndTruncates(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	r := startReader(t, e, func(c *cdc.Config) { c.Partitions = 3 })
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('j1', 'img_gen', 'done'), ('j2', 'vlm_analyze', 'done'), ('j3', 'vlm_analyze', 'done')`)
	waitMessages(t, e, e.Topic("vlm_analyze"), 2)
	e.Exec(t, `DELETE FROM jobs WHERE job_id = 'j1'`) // REPLICA IDENTITY DEFAULT: the WAL carries job_id only
	e.Exec(t, `ALTER TABLE jobs REPLICA IDENTITY FULL`)
	e.Exec(t, `DELETE FROM jobs WHERE job_id = 'j2'`)
	e.Exec(t, `TRUNCATE jobs`)

	img := waitMessages(t, e, e.Topic("img_gen"), 1+2+3)
	vlm := waitMessages(t, e, e.Topic("vlm_analyze"), 2+4+3)
	ops := func(msgs []kafka.Message) string {
		var s []string
		for _, m := range msgs {
			if m.Value == nil {
				s = append(s, "tombstone:"+schema.JobIDFromKey(m.Key))
				continue
			}
			validate(t, m.Value)
			env := decode(t, m)
			id := schema.JobIDFromKey(m.Key)
			if env.Op == "d" && (env.Before["job_id"] != id || env.After != nil) {
				t.Errorf("delete event %s", m.Value)
			}
			if env.Op == "t" && (m.Key != nil || env.Before != nil || env.After != nil) {
				t.Errorf("truncate event key %q: %s", m.Key, m.Value)
			}
			s = append(s, env.Op+":"+id)
		}
		return strings.Join(s, " ")
	}
	// Per partition, in commit order; partitions are read one after the other.
	for _, c := range []struct {
		topic string
		msgs  []kafka.Message
		want  []string
	}{
		{"img_gen", img, []string{"c:j1", "d:j1 tombstone:j1", "t:"}},
		{"vlm_analyze", vlm, []string{"c:j2", "c:j3", "d:j1 tombstone:j1", "d:j2 tombstone:j2", "t:"}},
	} {
		got := ops(c.msgs)
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: %s lacks %s", c.topic, got, w)
			}
		}
		if n := strings.Count(got, "t:"); n != 3 {
			t.Errorf("%s: %d truncate events, want one per partition (3): %s", c.topic, n, got)
		}
	}
	if n := strings.Count(ops(img), ":j2"); n != 0 {
		t.Errorf("the delete of j2 (REPLICA IDENTITY FULL) went to img_gen too")
	}
	harness.Eventually(t, 20*time.Second, func() (bool, string) {
		d, tr, tomb := r.Stats().Deletes.Load(), r.Stats().Truncates.Load(), r.Stats().Tombstones.Load()
		return d == 3 && tr == 6 && tomb == 3, fmt.Sprintf("counters: %d deletes (want 3), %d truncates (want 6), %d tombstones (want 3)", d, tr, tomb)
	})

	// With tombstones off, a delete is the delete event alone.
	e2 := harness.New(t)
	startReader(t, e2, func(c *cdc.Config) { c.NoTombstones = true })
	e2.Exec(t, `ALTER TABLE jobs REPLICA IDENTITY FULL`)
	e2.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('k1', 'img_gen', 'done'), ('k2', 'img_gen', 'done')`)
	e2.Exec(t, `DELETE FROM jobs WHERE job_id = 'k1'`)
	e2.Exec(t, `UPDATE jobs SET status = 'running' WHERE job_id = 'k2'`) // a marker after the delete
	got := ops(waitMessages(t, e2, e2.Topic("img_gen"), 4))
	if strings.Contains(got, "tombstone") || !strings.Contains(got, "d:k1") {
		t.Errorf("with NoTombstones: %s", got)
	}
}

// TestFlushWaitsForBrokerAck is item 1: with the broker down, the slot never
// confirms a position past the changes it could not deliver; once the broker
// is back (same data folder), every change arrives, and the slot passes a
// change only after the broker holds it.
func TestFlushWaitsForBrokerAck(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	b := privateBroker(t, e, "127.0.0.1:0")
	addr := b.Addr()
	r := startReader(t, e, nil)

	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) SELECT 'j' || i, 'img_gen', 'done' FROM generate_series(1, 100) i`)
	inserted := currentLSN(t, e)
	waitMessages(t, e, e.Topic("img_gen"), 100)
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		got := confirmedLSN(t, e)
		return got >= inserted, fmt.Sprintf("slot at %s, want %s", got, inserted)
	})
	b.Close()

	// ends[i] is a WAL position past the commit of update i. The shared
	// server's WAL also carries other tests' databases, which the slot may
	// confirm; it must never confirm the commit of update 1, whatever else
	// moves: before that commit is "the position before the updates".
	ends := make([]pglogrepl.LSN, 101)
	for i := 1; i <= 100; i++ {
		e.Exec(t, `UPDATE jobs SET status = 'running' WHERE job_id = $1`, fmt.Sprintf("j%d", i))
		ends[i] = currentLSN(t, e)
	}
	notPast := func() {
		if got := confirmedLSN(t, e); got >= ends[1] {
			t.Fatalf("slot confirmed %s, past the first update (%s), while the broker was down", got, ends[1])
		}
	}
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		notPast()
		return r.Stats().ReceivedLSN.Load() >= uint64(ends[100]), "the reader has not received all updates yet"
	})
	// All 100 received, none acknowledged: for several status intervals the
	// slot stays before them.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		notPast()
	}

	privateBroker(t, e, addr)
	// Whenever the slot has passed update i, the broker holds update i.
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		confirmed := confirmedLSN(t, e)
		running := map[string]bool{}
		for _, m := range readAll(t, e, e.Topic("img_gen")) {
			if decode(t, m).After["status"] == "running" {
				running[schema.JobIDFromKey(m.Key)] = true
			}
		}
		for i := 1; i <= 100; i++ {
			if ends[i] <= confirmed && !running[fmt.Sprintf("j%d", i)] {
				t.Fatalf("slot confirmed %s, past update %d (%s), which the broker does not hold", confirmed, i, ends[i])
			}
		}
		return len(running) == 100 && confirmed >= ends[100],
			fmt.Sprintf("%d of 100 updates arrived; confirmed %s, want >= %s", len(running), confirmed, ends[100])
	})
}

// TestIdleSlotFollowsWAL is item 4: with jobs idle and 200 MB of WAL written
// to another table, the slot's retained WAL falls under 16 MB.
func TestIdleSlotFollowsWAL(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	r := startReader(t, e, nil)
	e.Exec(t, `CREATE TABLE other (id serial, pad text)`)
	e.Exec(t, `ALTER TABLE other ALTER COLUMN pad SET STORAGE PLAIN`)
	start := currentLSN(t, e)
	for i := 0; i < 20; i++ {
		e.Exec(t, `INSERT INTO other (pad) SELECT repeat('x', 1900) FROM generate_series(1, 6000)`)
	}
	written := currentLSN(t, e) - start
	if written < 200<<20 {
		t.Fatalf("wrote %d MB of WAL, want 200", written>>20)
	}
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		retained := currentLSN(t, e) - confirmedLSN(t, e)
		return retained < 16<<20, fmt.Sprintf("slot retains %d MB of WAL", retained>>20)
	})
	t.Logf("after %d MB of WAL, the slot retains %d kB; reader lag %d bytes", written>>20, (currentLSN(t, e)-confirmedLSN(t, e))>>10, r.Stats().LagBytes())
}

// TestKeepaliveAnsweredAtOnce: a server keepalive that asks for a reply gets
// one at once, not at the next status interval. On a Postgres of the test's
// own (an idle one: no other database moves the WAL, so nothing else makes
// the reader report), the server asks after one second without news
// (wal_sender_timeout=2s for this connection) and drops a reader silent for
// two, while the reader's own status interval is a minute.
func TestKeepaliveAnsweredAtOnce(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	p, _ := privatePostgres(t, e, "pg", localpg.Options{})
	harness.Migrate(t, p.DatabaseURL)
	p.DatabaseURL += "&wal_sender_timeout=2s"
	r := startReader(t, p, func(c *cdc.Config) { c.StatusInterval = time.Minute })
	pid := waitSlotActive(t, p)
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		n := r.Stats().KeepaliveReplies.Load()
		return n >= 4, fmt.Sprintf("%d keepalives answered", n)
	})
	if n, now := r.Stats().Reconnects.Load(), waitSlotActive(t, p); n != 0 || now != pid {
		t.Fatalf("the server dropped the reader (%d reconnects; walsender %d, then %d)", n, pid, now)
	}
	execOn(t, p.DatabaseURL, `INSERT INTO jobs (job_id, current_step, status) VALUES ('j1', 'img_gen', 'done')`)
	waitMessages(t, p, p.Topic("img_gen"), 1)
}

func TestConfigErrorsAreOneSentence(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		cfg  cdc.Config
		want string
	}{
		{cdc.Config{Brokers: []string{"x:1"}}, "DatabaseURL is empty"},
		{cdc.Config{DatabaseURL: "postgres://x"}, "Brokers is empty"},
		{cdc.Config{DatabaseURL: "postgres://x", Brokers: []string{"x:1"}, Slot: "Bad-Slot"}, `Slot "Bad-Slot" is not a valid name`},
		{cdc.Config{DatabaseURL: "postgres://x", Brokers: []string{"x:1"}, Snapshot: "always"}, `Snapshot "always" is not one of`},
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
}

// TestJobIDChangeIsDeleteThenCreate: an UPDATE that changes a row's job_id
// is routed as Debezium routes a primary-key update. The old key gets a
// delete (its step from the old row under REPLICA IDENTITY FULL, else every
// step topic) and a tombstone, both with the new key in __debezium.newkey;
// the new key gets a create with the old key in __debezium.oldkey. So the
// old job's history ends, compaction drops it, and the new job's begins
// with the whole row, its unchanged TOASTed payload included under FULL.
func TestJobIDChangeIsDeleteThenCreate(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	startReader(t, e, nil)
	blob := `(SELECT jsonb_build_object('blob', string_agg(md5(i::text), '')) FROM generate_series(1, 400) i)` // ~13 kB: TOASTed

	// REPLICA IDENTITY DEFAULT: the old tuple is the key alone.
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status, payload) VALUES ('a', 'img_gen', 'done', '{"n": 1}')`)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('other', 'vlm_analyze', 'done')`)
	waitMessages(t, e, e.Topic("vlm_analyze"), 1)
	e.Exec(t, `UPDATE jobs SET job_id = 'b' WHERE job_id = 'a'`)
	// Every step topic the broker has gets the delete and tombstone of a;
	// b's create goes to its step's topic.
	img := waitMessages(t, e, e.Topic("img_gen"), 4)
	vlm := waitMessages(t, e, e.Topic("vlm_analyze"), 3)
	if got, want := historyOf(t, img), "a: c d>b tombstone>b; b: c<a"; got != want {
		t.Errorf("img_gen holds %s, want %s", got, want)
	}
	if got, want := historyOf(t, vlm), "a: d>b tombstone>b; other: c"; got != want {
		t.Errorf("vlm_analyze holds %s, want %s", got, want)
	}
	if del := decode(t, only(t, img, "a", "d")); del.Before["job_id"] != "a" || del.After != nil || del.Source.LSN == 0 {
		t.Errorf("delete of a: before %v, after %v", del.Before, del.After)
	}
	if c := decode(t, only(t, img, "b", "c")); c.Before != nil || c.After["job_id"] != "b" || c.After["status"] != "done" || c.After["payload"] != `{"n": 1}` {
		t.Errorf("create of b: before %v, after %v", c.Before, c.After)
	}

	// REPLICA IDENTITY FULL: the delete goes to the old row's step only, and
	// the create has the whole row, its TOASTed payload taken from the old.
	e.Exec(t, `ALTER TABLE jobs REPLICA IDENTITY FULL`)
	e.Exec(t, `UPDATE jobs SET payload = `+blob+` WHERE job_id = 'b'`)
	e.Exec(t, `UPDATE jobs SET job_id = 'c', current_step = 'vlm_analyze' WHERE job_id = 'b'`)
	img = waitMessages(t, e, e.Topic("img_gen"), 7)
	vlm = waitMessages(t, e, e.Topic("vlm_analyze"), 4)
	if got, want := historyOf(t, img), "a: c d>b tombstone>b; b: c<a u d>c tombstone>c"; got != want {
		t.Errorf("img_gen then holds %s, want %s", got, want)
	}
	if got, want := historyOf(t, vlm), "a: d>b tombstone>b; c: c<b; other: c"; got != want {
		t.Errorf("vlm_analyze then holds %s, want %s", got, want)
	}
	payload := e.Count(t, `SELECT length(payload::text) FROM jobs WHERE job_id = 'c'`)
	if del := decode(t, only(t, img, "b", "d")); del.Before["job_id"] != "b" || del.Before["current_step"] != "img_gen" || len(fmt.Sprint(del.Before["payload"])) != int(payload) {
		t.Errorf("delete of b: before %.200v", del.Before)
	}
	if c := decode(t, only(t, vlm, "c", "c")); c.Before != nil || c.After["job_id"] != "c" || c.After["current_step"] != "vlm_analyze" || len(fmt.Sprint(c.After["payload"])) != int(payload) {
		t.Errorf("create of c: before %v, after %.200v (payload of %d bytes wanted)", c.Before, c.After, payload)
	}
}
