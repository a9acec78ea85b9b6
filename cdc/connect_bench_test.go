package cdc

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"reflect"
	"testing"

	"github.com/jackc/pglogrepl"

	"github.com/jobstream/jobstream/schema"
)

// BenchmarkRenderChange renders one update event (envelope and key) as the
// router does, in the plain form and in Kafka Connect's schema/payload form.
func BenchmarkRenderChange(b *testing.B) {
	before := testTuple("job-000123", "img_gen", "done", `{"prompt": "a red square", "seed": 123}`, nil, nil, "2026-11-26 23:00:00.123456+00")
	after := testTuple("job-000123", "vlm_analyze", "running", `{"prompt": "a red square", "seed": 123}`,
		`{"img_gen": {"width": 96, "height": 96, "shapes": [{"kind": "rect", "x": 4, "y": 9}]}}`, nil, "2026-11-26 23:00:00.123456+00")
	for _, form := range []struct {
		name    string
		schemas bool
	}{{"plain", false}, {"schemas", true}} {
		b.Run(form.name, func(b *testing.B) {
			cfg := Config{TopicPrefix: "jobs", Pipeline: schema.DefaultPipeline(), Schemas: form.schemas}
			rt := newRouter(&cfg, "db", 1_000_000, slog.New(slog.DiscardHandler))
			c := &change{op: schema.OpUpdate, rel: testRelation(), before: before, after: after, oldFull: true, fill: before,
				src: source{tsMs: 1795750232697, tsUs: 1795750232697123, snapshot: "false", txID: 12345, lastCommit: 23456789, lsn: 23456999, schema: "public", table: "jobs"}}
			var n int
			b.ReportAllocs()
			for b.Loop() {
				key, _, _, value := rt.renderChange(c)
				n = len(key) + len(value)
			}
			b.SetBytes(int64(n))
		})
	}
}

// TestConnectFormWrapsThePlainForm: with Schemas, key and value are JSON
// objects of schema and payload whose payloads are, byte for byte, the
// plain key and value, and the schema is rendered once per relation.
func TestConnectFormWrapsThePlainForm(t *testing.T) {
	t.Parallel()
	after := testTuple("j1", "img_gen", "done", `{}`, nil, nil, "2026-11-26 23:00:00+00")
	render := func(schemas bool, rel *pglogrepl.RelationMessage) (key, value []byte) {
		cfg := Config{TopicPrefix: "jobs", Pipeline: schema.DefaultPipeline(), Schemas: schemas}
		rt := newRouter(&cfg, "db", 1_000_000, slog.New(slog.DiscardHandler))
		rt.describe(rel, map[string]colFacts{"job_id": {notNull: true}, "current_step": {notNull: true}})
		c := &change{op: schema.OpCreate, rel: rel, after: after, src: source{snapshot: "false", schema: "public", table: "jobs"}}
		key, _, _, value = rt.renderChange(c)
		if schemas && rt.formOf(rel) != rt.forms[rel] {
			t.Fatal("the relation's schema is not kept")
		}
		return key, value
	}
	rel := testRelation()
	pk, pv := render(false, rel)
	ck, cv := render(true, rel)
	for _, c := range []struct {
		name           string
		plain, wrapped []byte
	}{{"key", pk, ck}, {"value", pv, cv}} {
		var w struct{ Schema, Payload json.RawMessage }
		if err := json.Unmarshal(c.wrapped, &w); err != nil {
			t.Fatalf("%s %s: %v", c.name, c.wrapped, err)
		}
		// The envelopes differ in their ts_ms (now) alone.
		p, ok := schema.Unwrap(c.wrapped)
		cut := func(b []byte) []byte { return b[:max(bytes.LastIndex(b, []byte(`,"op":`)), 0)] }
		if !ok || !bytes.Equal(cut(p), cut(c.plain)) || !bytes.Equal(w.Payload, p) {
			t.Fatalf("%s: payload %s, plain %s", c.name, p, c.plain)
		}
	}
	t.Logf("key %s", ck)
	t.Logf("value %s", cv)
}

// FuzzConnectForm: whatever a row holds, the schema/payload form of its
// event and key is valid JSON whose payloads are the plain form, and a
// worker decodes the same Trigger from both forms.
func FuzzConnectForm(f *testing.F) {
	addRowSeeds(f)
	f.Add(insertMessage([]byte("j\"2\\"), []byte("x"), []byte("done")))
	f.Add([]byte{'D', 0, 0, 0, 1, 'K', 0, 1, 't', 0, 0, 0, 2, 'j', '1'})
	rel := fuzzRelation()
	routers := map[bool]*router{}
	for _, schemas := range []bool{false, true} {
		cfg := Config{TopicPrefix: "jobs", Pipeline: schema.DefaultPipeline(), Schemas: schemas}
		routers[schemas] = newRouter(&cfg, "db", 1_000_000, slog.New(slog.DiscardHandler))
		routers[schemas].describe(rel, map[string]colFacts{"job_id": {notNull: true}, "status": {notNull: true, def: "'pending'::text"}})
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, ok := fuzzRow(data)
		if !ok {
			return
		}
		c := &change{op: schema.OpCreate, rel: rel, after: m.new, src: source{snapshot: "false", schema: "public", table: "jobs"}}
		if m.new == nil {
			c.op, c.after, c.before = schema.OpDelete, nil, m.old
		}
		pk, _, _, pv := routers[false].renderChange(c)
		ck, _, _, cv := routers[true].renderChange(c)
		if !json.Valid(cv) {
			t.Fatalf("value is not JSON: %s", cv)
		}
		p, ok := schema.Unwrap(cv)
		cut := func(b []byte) []byte { return b[:max(bytes.LastIndex(b, []byte(`,"op":`)), 0)] }
		if !ok || !bytes.Equal(cut(p), cut(pv)) {
			t.Fatalf("payload %s, plain %s", p, pv)
		}
		if pk != nil {
			if k, ok := schema.Unwrap(ck); !ok || !bytes.Equal(k, pk) || !json.Valid(ck) {
				t.Fatalf("key %s, plain %s", ck, pk)
			}
		}
		pt, perr := schema.DecodeTrigger(pv)
		ct, cerr := schema.DecodeTrigger(cv)
		if fmt.Sprint(perr) != fmt.Sprint(cerr) || !reflect.DeepEqual(pt, ct) {
			t.Fatalf("trigger %+v (%v) from the schema/payload form, %+v (%v) from the plain form", ct, cerr, pt, perr)
		}
	})
}
