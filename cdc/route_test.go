package cdc

import (
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"

	"github.com/jobstream/jobstream/schema"
)

// TestRouter runs the router alone: a change in, events out, no broker.
func TestRouter(t *testing.T) {
	rel := &pglogrepl.RelationMessage{Namespace: "public", RelationName: "jobs", Columns: []*pglogrepl.RelationMessageColumn{
		{Name: "job_id", DataType: 25}, {Name: "current_step", DataType: 25}}}
	row := func(id, step any) *pglogrepl.TupleData {
		tuple := &pglogrepl.TupleData{}
		for _, v := range []any{id, step} {
			col := &pglogrepl.TupleDataColumn{DataType: 'n'}
			if s, ok := v.(string); ok {
				col.DataType, col.Data = 't', []byte(s)
			}
			tuple.Columns = append(tuple.Columns, col)
		}
		return tuple
	}
	// want: one line per event: topic, key, op (a dead letter: "dlq" and its reason).
	tests := []struct {
		name   string
		c      change
		fan    []string // the step topics an event addressed to every step topic goes to
		parts  []int
		noTomb bool
		limit  int
		want   []string
	}{
		{name: "insert", c: change{op: schema.OpCreate, after: row("j1", "img_gen")}, want: []string{"p.img_gen j1 c"}},
		{name: "update", c: change{op: schema.OpUpdate, before: row("j1", "img_gen"), after: row("j1", "caption")}, want: []string{"p.caption j1 u"}},
		{name: "delete, full", c: change{op: schema.OpDelete, before: row("j1", "caption"), oldFull: true},
			want: []string{"p.caption j1 d", "p.caption j1 x"}},
		{name: "delete, no tombstones", c: change{op: schema.OpDelete, before: row("j1", "caption"), oldFull: true}, noTomb: true,
			want: []string{"p.caption j1 d"}},
		{name: "delete, step unknown", c: change{op: schema.OpDelete, before: row("j1", nil)}, fan: []string{"p.caption", "p.img_gen"},
			want: []string{"p.caption j1 d", "p.caption j1 x", "p.img_gen j1 d", "p.img_gen j1 x"}},
		{name: "delete, no step topic", c: change{op: schema.OpDelete, before: row("j1", nil)},
			want: []string{"dlq j1 a delete whose step the WAL does not carry (REPLICA IDENTITY is not FULL) found no step topic to go to"}},
		{name: "update, full", c: change{op: schema.OpUpdate, before: row("j1", "img_gen"), after: row("j1", "caption"), oldFull: true},
			want: []string{"p.caption j1 u"}},
		// A job_id-changing update, as Debezium routes a primary-key update.
		{name: "update of job_id, key only", c: change{op: schema.OpUpdate, before: row("j1", nil), after: row("j2", "caption")},
			fan: []string{"p.caption", "p.img_gen"},
			want: []string{"p.caption j1 d __debezium.newkey=j2", "p.caption j1 x __debezium.newkey=j2", "p.img_gen j1 d __debezium.newkey=j2",
				"p.img_gen j1 x __debezium.newkey=j2", "p.caption j2 c __debezium.oldkey=j1"}},
		{name: "update of job_id, full", c: change{op: schema.OpUpdate, before: row("j1", "img_gen"), after: row("j2", "caption"), oldFull: true},
			want: []string{"p.img_gen j1 d __debezium.newkey=j2", "p.img_gen j1 x __debezium.newkey=j2", "p.caption j2 c __debezium.oldkey=j1"}},
		{name: "update of job_id, no tombstones", c: change{op: schema.OpUpdate, before: row("j1", "img_gen"), after: row("j2", "caption"), oldFull: true},
			noTomb: true, want: []string{"p.img_gen j1 d __debezium.newkey=j2", "p.caption j2 c __debezium.oldkey=j1"}},
		{name: "update of job_id to a reserved step", c: change{op: schema.OpUpdate, before: row("j1", "img_gen"), after: row("j2", "dlq"), oldFull: true},
			want: []string{"p.img_gen j1 d __debezium.newkey=j2", "p.img_gen j1 x __debezium.newkey=j2",
				`dlq j2 current_step "dlq" is a reserved topic name (dlq, replays), which never takes change events`}},
		{name: "reserved step", c: change{op: schema.OpCreate, after: row("j1", "dlq")},
			want: []string{`dlq j1 current_step "dlq" is a reserved topic name (dlq, replays), which never takes change events`}},
		{name: "step of no pipeline", c: change{op: schema.OpCreate, after: row("j1", "yolo")},
			want: []string{`dlq j1 current_step "yolo" is not a step of the pipeline (img_gen, caption), so no worker would ever take the row`}},
		{name: "null step", c: change{op: schema.OpCreate, after: row("j1", nil)},
			want: []string{"dlq j1 current_step is null, so the row has no step topic"}},
		{name: "no job_id", c: change{op: schema.OpCreate, after: row(nil, "img_gen")},
			want: []string{"dlq  the row has no job_id, so the event has no key"}},
		{name: "too large", c: change{op: schema.OpCreate, after: row("j1", "img_gen")}, limit: 300,
			want: []string{"dlq j1 event is 438 bytes, over the broker's message limit of 300"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{TopicPrefix: "p", NoTombstones: tt.noTomb, Pipeline: schema.Pipeline{Steps: []string{"img_gen", "caption"}}}
			limit := tt.limit
			if limit == 0 {
				limit = 1_000_000
			}
			rt := newRouter(&cfg, "db", limit, slog.New(slog.DiscardHandler))
			tt.c.rel, tt.c.src = rel, source{snapshot: "false", txID: 7, lsn: 42, schema: "public", table: "jobs"}
			var got []string
			for _, ev := range rt.route(&tt.c, nil) {
				evs := []event{ev}
				if ev.everyStep {
					evs = rt.fanOut(&ev, tt.fan, nil, nil)
				}
				for _, ev := range evs {
					got = append(got, describe(t, &ev))
				}
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

// TestRouterTruncate: a truncate goes to every partition of every step
// topic, and the topics the router sent events to count as step topics.
func TestRouterTruncate(t *testing.T) {
	cfg := Config{TopicPrefix: "p", Pipeline: schema.Pipeline{Steps: []string{"img_gen", "caption"}}}
	rt := newRouter(&cfg, "db", 1_000_000, slog.New(slog.DiscardHandler))
	rel := &pglogrepl.RelationMessage{Columns: []*pglogrepl.RelationMessageColumn{{Name: "job_id", DataType: 25}, {Name: "current_step", DataType: 25}}}
	after := &pglogrepl.TupleData{Columns: []*pglogrepl.TupleDataColumn{{DataType: 't', Data: []byte("j1")}, {DataType: 't', Data: []byte("caption")}}}
	rt.route(&change{op: schema.OpCreate, rel: rel, after: after, src: source{snapshot: "false"}}, nil)
	topics := rt.stepTopics([]string{"p.img_gen", "p.dlq", "p.replays", "p.gone"})
	if strings.Join(topics, " ") != "p.caption p.img_gen" {
		t.Fatalf("step topics %v, want p.caption and p.img_gen", topics)
	}
	ev := rt.truncate(&source{snapshot: "false", lsn: 9, schema: "public", table: "jobs"})
	var got []string
	for _, e := range rt.fanOut(&ev, topics, []int{1, 2}, nil) {
		got = append(got, describe(t, &e)+" "+string(rune('0'+e.partition)))
	}
	if want := "p.caption  t 0,p.img_gen  t 0,p.img_gen  t 1"; strings.Join(got, ",") != want {
		t.Errorf("truncate events %q, want %q", strings.Join(got, ","), want)
	}
}

// describe says "topic key op" of an event, or "dlq key reason" of a dead
// letter, checking that its value is a valid envelope (or dead letter).
func describe(t *testing.T, ev *event) string {
	t.Helper()
	if ev.op == 0 {
		var dl schema.DeadLetter
		if err := json.Unmarshal(ev.value, &dl); err != nil || dl.Reason != ev.reason || ev.topic != "p.dlq" || string(ev.headers[0].Value) != ev.reason {
			t.Errorf("dead letter %s in %s: %v", ev.value, ev.topic, err)
		}
		return "dlq " + schema.JobIDFromKey(ev.key) + " " + ev.reason
	}
	if ev.op != opTombstone {
		var env struct {
			Op     string `json:"op"`
			Source struct {
				LSN uint64 `json:"lsn"`
			} `json:"source"`
		}
		if err := json.Unmarshal(ev.value, &env); err != nil || env.Op != string(ev.op) || env.Source.LSN != uint64(ev.lsn) {
			t.Errorf("event %s: %v", ev.value, err)
		}
	} else if ev.value != nil {
		t.Errorf("tombstone with a value: %s", ev.value)
	}
	d := ev.topic + " " + schema.JobIDFromKey(ev.key) + " " + string(ev.op)
	for _, h := range ev.headers {
		d += " " + h.Key + "=" + schema.JobIDFromKey(h.Value)
	}
	return d
}

// TestKeyIsDebeziumsKeyStruct: the key is Debezium's key struct with
// schemas off, the id rendered as the row renders it (a number for an
// integer job_id, JSON-escaped text otherwise); BareKey gives the id alone.
func TestKeyIsDebeziumsKeyStruct(t *testing.T) {
	for _, tc := range []struct {
		name string
		oid  uint32
		id   string
		bare bool
		want string
	}{
		{"text", 25, "j1", false, `{"job_id":"j1"}`},
		{"text with a quote", 25, `a"b`, false, `{"job_id":"a\"b"}`},
		{"bigint", 20, "42", false, `{"job_id":42}`},
		{"uuid", 2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", false, `{"job_id":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}`},
		{"bare", 25, "j1", true, `j1`},
	} {
		rel := &pglogrepl.RelationMessage{Namespace: "public", RelationName: "jobs", Columns: []*pglogrepl.RelationMessageColumn{
			{Name: "job_id", DataType: tc.oid}, {Name: "current_step", DataType: 25}}}
		cfg := Config{TopicPrefix: "p", BareKey: tc.bare, Pipeline: schema.Pipeline{Steps: []string{"img_gen", "caption"}}}
		rt := newRouter(&cfg, "db", 1_000_000, slog.New(slog.DiscardHandler))
		c := change{op: "c", rel: rel, after: &pglogrepl.TupleData{Columns: []*pglogrepl.TupleDataColumn{
			{DataType: 't', Data: []byte(tc.id)}, {DataType: 't', Data: []byte("img_gen")}}},
			src: source{snapshot: "false", txID: 7, lsn: 42, schema: "public", table: "jobs"}}
		evs := rt.route(&c, nil)
		if len(evs) != 1 || string(evs[0].key) != tc.want || schema.JobIDFromKey(evs[0].key) != tc.id {
			t.Errorf("%s: key %s, want %s", tc.name, evs[0].key, tc.want)
		}
	}
}
