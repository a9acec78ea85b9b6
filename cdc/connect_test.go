package cdc_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
)

// connectColumns are the columns TestConnectSchemas adds to jobs, each with
// a value and the Connect field schema Debezium 3.x's Postgres connector
// declares for it with its defaults (decimal.handling.mode precise,
// time.precision.mode adaptive, interval.handling.mode numeric,
// binary.handling.mode bytes). Sources, under
// debezium-connector-postgres/src/main/java/io/debezium/connector/postgresql/:
// PostgresValueConverter.java (schemaBuilder: timestamptz ZonedTimestamp,
// timetz ZonedTime, oid int64, json/jsonb Json, uuid Uuid, numeric,
// interval MicroDuration, bytea, arrays of optional elements, enums as
// io.debezium.data.Enum with "allowed"); for the standard types
// debezium-core/src/main/java/io/debezium/jdbc/JdbcValueConverters.java
// (boolean, int16/32/64, float, double, string, date as
// io.debezium.time.Date, time by precision as Time or MicroTime, timestamp
// as Timestamp or MicroTimestamp, numeric(p,s) as
// org.apache.kafka.connect.data.Decimal with scale and
// connect.decimal.precision) and
// debezium-core/src/main/java/io/debezium/schema/SchemaFactory.java
// (VariableScaleDecimal for numeric without scale). Optional unless NOT
// NULL: debezium-core/src/main/java/io/debezium/relational/TableSchemaBuilder.java.
// Defaults as
// debezium-connector-postgres/src/main/java/io/debezium/connector/postgresql/connection/PostgresDefaultValueConverter.java
// parses them (for a function such as now() or nextval(...), its placeholder:
// the epoch, 0),
// rendered as the column's values (numeric(10,2) 1.5: 150 unscaled, AJY=).
var connectColumns = []struct{ name, sqlType, value, debezium string }{
	{"c_bool", "boolean NOT NULL DEFAULT false", "true", `{"type":"boolean","optional":false,"default":false}`},
	{"c_int2", "smallint", "2", `{"type":"int16","optional":true}`},
	{"c_int4", "integer NOT NULL DEFAULT 4", "4", `{"type":"int32","optional":false,"default":4}`},
	{"c_int4_serial", "serial", "DEFAULT", `{"type":"int32","optional":false,"default":0}`}, // nextval(...): the placeholder 0
	{"c_int8", "bigint DEFAULT -8", "8", `{"type":"int64","optional":true,"default":-8}`},
	{"c_oid", "oid", "26", `{"type":"int64","optional":true}`},
	{"c_float4", "real", "1.5", `{"type":"float","optional":true}`},
	{"c_float8", "double precision", "2.25", `{"type":"double","optional":true}`},
	{"c_num", "numeric(10,2) DEFAULT 1.5", "12.5", `{"type":"bytes","optional":true,"name":"org.apache.kafka.connect.data.Decimal","version":1,"parameters":{"scale":"2","connect.decimal.precision":"10"},"default":"AJY="}`},
	{"c_numv", "numeric", "1.50", `{"type":"struct","fields":[{"type":"int32","optional":false,"field":"scale"},{"type":"bytes","optional":false,"field":"value"}],"optional":true,"name":"io.debezium.data.VariableScaleDecimal","version":1,"doc":"Variable scaled decimal"}`},
	{"c_date", "date", "'2026-11-26'", `{"type":"int32","optional":true,"name":"io.debezium.time.Date","version":1}`},
	{"c_time", "time", "'12:34:56.789012'", `{"type":"int64","optional":true,"name":"io.debezium.time.MicroTime","version":1}`},
	{"c_time3", "time(3)", "'12:34:56.789'", `{"type":"int32","optional":true,"name":"io.debezium.time.Time","version":1}`},
	{"c_ts", "timestamp", "'2026-11-26 23:32:21.123456'", `{"type":"int64","optional":true,"name":"io.debezium.time.MicroTimestamp","version":1}`},
	{"c_ts3", "timestamp(3)", "'2026-11-26 23:32:21.123'", `{"type":"int64","optional":true,"name":"io.debezium.time.Timestamp","version":1}`},
	{"c_tstz", "timestamptz DEFAULT now()", "'2026-11-26 23:32:21.5+00'", `{"type":"string","optional":true,"name":"io.debezium.time.ZonedTimestamp","version":1,"default":"1970-01-01T00:00:00.000000Z"}`},
	{"c_timetz", "timetz", "'12:34:56+02'", `{"type":"string","optional":true,"name":"io.debezium.time.ZonedTime","version":1}`},
	{"c_interval", "interval", "'1 day 02:00:00'", `{"type":"int64","optional":true,"name":"io.debezium.time.MicroDuration","version":1}`},
	{"c_uuid", "uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", `{"type":"string","optional":true,"name":"io.debezium.data.Uuid","version":1}`},
	{"c_bytea", "bytea", `'\x0102'`, `{"type":"bytes","optional":true}`},
	{"c_json", "json DEFAULT '[]'", `'{"a": 1}'`, `{"type":"string","optional":true,"name":"io.debezium.data.Json","version":1,"default":"[]"}`},
	{"c_xml", "xml", "NULL", `{"type":"string","optional":true,"name":"io.debezium.data.Xml","version":1}`},
	{"c_varchar", "varchar(20) NOT NULL DEFAULT 'none'", "'v'", `{"type":"string","optional":false,"default":"none"}`},
	{"c_enum", "connect_mood", "'ok'", `{"type":"string","optional":true,"name":"io.debezium.data.Enum","version":1,"parameters":{"allowed":"sad,ok,happy"}}`},
	{"c_tags", "text[]", "ARRAY['a', NULL]", `{"type":"array","items":{"type":"string","optional":true},"optional":true}`},
	{"c_ints", "integer[]", "ARRAY[1, 2]", `{"type":"array","items":{"type":"int32","optional":true},"optional":true}`},
	{"c_nums", "numeric(5,1)[]", "ARRAY[1.5]", `{"type":"array","items":{"type":"bytes","optional":true,"name":"org.apache.kafka.connect.data.Decimal","version":1,"parameters":{"scale":"1","connect.decimal.precision":"5"}},"optional":true}`},
	{"c_uuids", "uuid[]", "ARRAY['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid]", `{"type":"array","items":{"type":"string","optional":true,"name":"io.debezium.data.Uuid","version":1},"optional":true}`},
	{"c_blobs", "bytea[]", `ARRAY['\x01'::bytea]`, `{"type":"array","items":{"type":"bytes","optional":true},"optional":true}`},
}

// jobsColumns are the Connect field schemas of the jobs table's own columns
// (schema.JobsColumns): job_id the primary key, status, payload, results
// and updated_at NOT NULL, with defaults ('pending', '{}', and now(), for
// which Debezium declares its placeholder, the epoch).
var jobsColumns = map[string]string{
	"job_id":       `{"type":"string","optional":false}`,
	"current_step": `{"type":"string","optional":true}`,
	"status":       `{"type":"string","optional":false,"default":"pending"}`,
	"payload":      `{"type":"string","optional":false,"name":"io.debezium.data.Json","version":1,"default":"{}"}`,
	"results":      `{"type":"string","optional":false,"name":"io.debezium.data.Json","version":1,"default":"{}"}`,
	"error":        `{"type":"string","optional":true}`,
	"updated_at":   `{"type":"string","optional":false,"name":"io.debezium.time.ZonedTimestamp","version":1,"default":"1970-01-01T00:00:00.000000Z"}`,
}

// connectSchema is a Kafka Connect schema as JsonConverter writes it.
type connectSchema struct {
	Type       string            `json:"type"`
	Fields     []connectSchema   `json:"fields,omitempty"`
	Items      *connectSchema    `json:"items,omitempty"`
	Optional   bool              `json:"optional"`
	Name       string            `json:"name,omitempty"`
	Version    int               `json:"version,omitempty"`
	Doc        string            `json:"doc,omitempty"`
	Parameters map[string]string `json:"parameters,omitempty"`
	Default    any               `json:"default,omitempty"`
	Field      string            `json:"field,omitempty"`
}

func (s *connectSchema) field(name string) *connectSchema {
	for i := range s.Fields {
		if s.Fields[i].Field == name {
			return &s.Fields[i]
		}
	}
	return nil
}

// TestConnectSchemas is issue 16 item 2: with Schemas, the key and value of
// real events (a snapshot read and a streamed insert) are in Kafka
// Connect's schema/payload form, with Debezium's Connect schema for the
// envelope, the source block, the transaction block, the key struct and
// every column type; the payload is the plain form (its JSON Schema holds)
// and agrees with the schema as JsonConverter's toConnectData would read it.
func TestConnectSchemas(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	e.Exec(t, `CREATE TYPE connect_mood AS ENUM ('sad', 'ok', 'happy')`)
	var add, names, values []string
	for _, c := range connectColumns {
		add = append(add, "ADD COLUMN "+c.name+" "+c.sqlType)
		names = append(names, c.name)
		values = append(values, c.value)
	}
	e.Exec(t, `ALTER TABLE jobs `+strings.Join(add, ", "))
	insert := func(id string) {
		e.Exec(t, `INSERT INTO jobs (job_id, current_step, status, `+strings.Join(names, ", ")+`)
			VALUES ('`+id+`', 'img_gen', 'done', `+strings.Join(values, ", ")+`)`)
	}
	insert("j-snap") // read by the initial snapshot
	startReader(t, e, func(c *cdc.Config) { c.Schemas = true })
	insert("j-stream")
	msgs := waitMessages(t, e, e.Topic("img_gen"), 2)

	ops := map[string]string{}
	for _, m := range msgs {
		var value, key struct {
			Schema  connectSchema   `json:"schema"`
			Payload json.RawMessage `json:"payload"`
		}
		if err := json.Unmarshal(m.Value, &value); err != nil {
			t.Fatalf("value is not JSON: %v: %s", err, m.Value)
		}
		if err := json.Unmarshal(m.Key, &key); err != nil {
			t.Fatalf("key is not JSON: %v: %s", err, m.Key)
		}
		validate(t, value.Payload) // the plain form's JSON Schema
		env, err := schema.DecodeEnvelope(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		id := env.After["job_id"].(string)
		ops[id] = env.Op
		checkEnvelopeSchema(t, e.Prefix, &value.Schema)
		if errs := agrees(&value.Schema, value.Payload, "$"); len(errs) > 0 {
			t.Errorf("%s: payload and schema disagree:\n  %s", id, strings.Join(errs, "\n  "))
		}

		// The key: debezium-core/src/main/java/io/debezium/relational/TableSchemaBuilder.java,
		// the primary key's columns in a struct <prefix>.<schema>.<table>.Key, not optional.
		wantKey := `{"type":"struct","fields":[{"type":"string","optional":false,"field":"job_id"}],"optional":false,"name":"` + e.Prefix + `.public.jobs.Key"}`
		if got, _ := json.Marshal(key.Schema); !jsonEqual(t, got, []byte(wantKey)) {
			t.Errorf("%s: key schema %s, Debezium's %s", id, got, wantKey)
		}
		if string(key.Payload) != `{"job_id":"`+id+`"}` || schema.JobIDFromKey(m.Key) != id {
			t.Errorf("%s: key payload %s", id, key.Payload)
		}
		if !slices.ContainsFunc(schema.KeyCandidates(id, schema.ConnectName(e.Prefix, "public", "jobs", "Key")), func(k []byte) bool { return bytes.Equal(k, m.Key) }) {
			t.Errorf("%s: KeyCandidates lacks the key %s, so audit and replay would not find the job's partition", id, m.Key)
		}

		// Each column's schema, in the Value struct of before and after.
		after := value.Schema.field("after")
		if after == nil || value.Schema.field("before") == nil {
			t.Fatalf("%s: no before or after in %+v", id, value.Schema)
		}
		want := map[string]string{}
		for k, v := range jobsColumns {
			want[k] = v
		}
		for _, c := range connectColumns {
			want[c.name] = c.debezium
		}
		if len(after.Fields) != len(want) {
			t.Errorf("%s: %d fields in the Value struct, want %d", id, len(after.Fields), len(want))
		}
		for _, f := range after.Fields {
			w, ok := want[f.Field]
			if !ok {
				t.Errorf("%s: unexpected field %s", id, f.Field)
				continue
			}
			name := f.Field
			f.Field = ""
			got, _ := json.Marshal(f)
			if !jsonEqual(t, got, []byte(w)) {
				t.Errorf("%s: column %s: ours %s, Debezium's %s", id, name, got, w)
			}
		}
	}
	if ops["j-snap"] != schema.OpRead || ops["j-stream"] != schema.OpCreate {
		t.Errorf("ops %v, want j-snap r and j-stream c", ops)
	}
}

// checkEnvelopeSchema checks the parts of an envelope's Connect schema that
// do not depend on the table, against Debezium 3.x:
// debezium-core/src/main/java/io/debezium/schema/SchemaFactory.java
// (datatypeEnvelopeSchema: version 2, op, ts_ms, ts_us, ts_ns;
// transactionBlockSchema: event.block version 1; sourceInfoSchemaBuilder)
// and debezium-connector-postgres/src/main/java/io/debezium/connector/postgresql/PostgresSourceInfoStructMaker.java.
func checkEnvelopeSchema(t *testing.T, prefix string, s *connectSchema) {
	t.Helper()
	var fields []string
	for _, f := range s.Fields {
		fields = append(fields, f.Field)
	}
	if s.Type != "struct" || s.Optional || s.Name != prefix+".public.jobs.Envelope" || s.Version != 2 ||
		strings.Join(fields, ",") != "before,after,source,transaction,op,ts_ms,ts_us,ts_ns" {
		t.Errorf("envelope schema: type %s optional %v name %s version %d fields %v", s.Type, s.Optional, s.Name, s.Version, fields)
	}
	for _, f := range []string{"before", "after"} {
		if v := s.field(f); v == nil || v.Type != "struct" || !v.Optional || v.Name != prefix+".public.jobs.Value" || v.Version != 0 {
			t.Errorf("%s: %+v", f, v)
		}
	}
	src := s.field("source")
	if src == nil || src.Name != "io.debezium.connector.postgresql.Source" || src.Version != 1 || src.Optional {
		t.Fatalf("source: %+v", src)
	}
	var got []string
	for _, f := range src.Fields {
		got = append(got, fmt.Sprintf("%s:%s:%v", f.Field, f.Type, f.Optional))
	}
	want := "version:string:false connector:string:false name:string:false ts_ms:int64:false snapshot:string:true db:string:false " +
		"sequence:string:true ts_us:int64:true ts_ns:int64:true schema:string:false table:string:false txId:int64:true lsn:int64:true " +
		"xmin:int64:true origin:string:true origin_lsn:int64:true"
	if strings.Join(got, " ") != want {
		t.Errorf("source fields:\n  %s\nwant\n  %s", strings.Join(got, " "), want)
	}
	if snap := src.field("snapshot"); snap.Name != "io.debezium.data.Enum" || snap.Version != 1 || snap.Default != "false" ||
		!slices.Contains(strings.Split(snap.Parameters["allowed"], ","), "first") {
		t.Errorf("source.snapshot: %+v", snap)
	}
	tx := s.field("transaction")
	if tx == nil || tx.Name != "event.block" || tx.Version != 1 || !tx.Optional || len(tx.Fields) != 3 {
		t.Errorf("transaction: %+v", tx)
	}
	if op := s.field("op"); op.Type != "string" || op.Optional {
		t.Errorf("op: %+v", op)
	}
	for _, f := range []string{"ts_ms", "ts_us", "ts_ns"} {
		if ts := s.field(f); ts.Type != "int64" || !ts.Optional {
			t.Errorf("%s: %+v", f, ts)
		}
	}
}

// agrees reports where payload v does not have the shape schema s gives
// it, as Kafka Connect's JsonConverter.toConnectData reads a value: null
// only where optional, integers for intN, numbers for float and double,
// base64 for bytes, every member of a struct a field of its schema.
func agrees(s *connectSchema, v json.RawMessage, path string) []string {
	if len(v) == 0 || string(v) == "null" {
		if !s.Optional && s.Default == nil { // JsonConverter reads null as the default
			return []string{path + ": null for a required " + s.Type}
		}
		return nil
	}
	bad := func() []string { return []string{fmt.Sprintf("%s: %.60s is no %s", path, v, s.Type)} }
	switch s.Type {
	case "struct":
		var m map[string]json.RawMessage
		if json.Unmarshal(v, &m) != nil {
			return bad()
		}
		var errs []string
		for k := range m {
			if s.field(k) == nil {
				errs = append(errs, path+"."+k+": not a field of "+s.Name)
			}
		}
		for _, f := range s.Fields {
			errs = append(errs, agrees(&f, m[f.Field], path+"."+f.Field)...)
		}
		return errs
	case "array":
		var a []json.RawMessage
		if json.Unmarshal(v, &a) != nil {
			return bad()
		}
		var errs []string
		for i, x := range a {
			errs = append(errs, agrees(s.Items, x, fmt.Sprintf("%s[%d]", path, i))...)
		}
		return errs
	case "int8", "int16", "int32", "int64", "float", "double", "boolean", "string", "bytes":
		var str string
		into := map[string]any{"int8": new(int64), "int16": new(int64), "int32": new(int64), "int64": new(int64),
			"float": new(float64), "double": new(float64), "boolean": new(bool), "string": &str, "bytes": &str}[s.Type]
		if json.Unmarshal(v, into) != nil {
			return bad()
		}
		if _, err := base64.StdEncoding.DecodeString(str); s.Type == "bytes" && err != nil {
			return bad()
		}
	default:
		return []string{path + ": unknown type " + s.Type}
	}
	return nil
}

// TestAgreesRefuses: the checker the Connect tests lean on finds each kind
// of disagreement JsonConverter would refuse, and passes what it reads.
func TestAgreesRefuses(t *testing.T) {
	t.Parallel()
	s := connectSchema{Type: "struct", Name: "v", Fields: []connectSchema{
		{Field: "n", Type: "int32"}, {Field: "f", Type: "double", Optional: true}, {Field: "b", Type: "boolean", Optional: true},
		{Field: "s", Type: "string", Optional: true}, {Field: "raw", Type: "bytes", Optional: true},
		{Field: "a", Type: "array", Optional: true, Items: &connectSchema{Type: "int64"}},
	}}
	for _, c := range []struct {
		payload string
		want    string // "" when it agrees
	}{
		{`{"n": 1, "f": 1.5, "b": true, "s": "x", "raw": "AAE=", "a": [1, 2]}`, ""},
		{`{"n": 1}`, ""},
		{`{"n": null}`, "$.n: null for a required int32"},
		{`{"n": "1"}`, `$.n: "1" is no int32`},
		{`{"n": 1.5}`, "$.n: 1.5 is no int32"},
		{`{"n": 1, "f": "x"}`, `$.f: "x" is no double`},
		{`{"n": 1, "b": 1}`, "$.b: 1 is no boolean"},
		{`{"n": 1, "s": 2}`, "$.s: 2 is no string"},
		{`{"n": 1, "raw": "not base64!"}`, `$.raw: "not base64!" is no bytes`},
		{`{"n": 1, "a": [1, "2"]}`, `$.a[1]: "2" is no int64`},
		{`{"n": 1, "extra": 1}`, "$.extra: not a field of v"},
	} {
		got := strings.Join(agrees(&s, json.RawMessage(c.payload), "$"), "; ")
		if got != c.want {
			t.Errorf("%s: %q, want %q", c.payload, got, c.want)
		}
	}
}

// jsonEqual reports whether a and b are the same JSON value.
func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if err := json.Unmarshal(a, &x); err != nil {
		t.Fatalf("%v: %s", err, a)
	}
	if err := json.Unmarshal(b, &y); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	return reflect.DeepEqual(x, y)
}

// TestConnectSchemaFollowsTheTable: a column added while the reader streams
// is in the schema of the events after it (the schema is rendered again at
// each relation message), and a truncate carries the table's envelope
// schema (Debezium's Envelope.truncate).
func TestConnectSchemaFollowsTheTable(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	startReader(t, e, func(c *cdc.Config) { c.Schemas = true })
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('j1', 'img_gen', 'done')`)
	waitMessages(t, e, e.Topic("img_gen"), 1)
	e.Exec(t, `ALTER TABLE jobs ADD COLUMN c_late integer NOT NULL DEFAULT 7`)
	e.Exec(t, `UPDATE jobs SET status = 'failed' WHERE job_id = 'j1'`)
	e.Exec(t, `TRUNCATE jobs`)
	msgs := waitMessages(t, e, e.Topic("img_gen"), 2+partitionCount(t, e, e.Topic("img_gen")))
	fields := func(v []byte) (names []string, s connectSchema) {
		var w struct {
			Schema  connectSchema   `json:"schema"`
			Payload json.RawMessage `json:"payload"`
		}
		if err := json.Unmarshal(v, &w); err != nil {
			t.Fatalf("%v: %s", err, v)
		}
		if errs := agrees(&w.Schema, w.Payload, "$"); len(errs) > 0 {
			t.Errorf("payload and schema disagree:\n  %s", strings.Join(errs, "\n  "))
		}
		for _, f := range w.Schema.field("after").Fields {
			names = append(names, f.Field)
		}
		return names, w.Schema
	}
	byOp := map[string][][]byte{}
	for _, m := range msgs { // partition by partition: truncates may come first
		env, err := schema.DecodeEnvelope(m.Value)
		if err != nil {
			t.Fatalf("%v: %s", err, m.Value)
		}
		byOp[env.Op] = append(byOp[env.Op], m.Value)
	}
	if len(byOp[schema.OpCreate]) != 1 || len(byOp[schema.OpUpdate]) != 1 || len(byOp[schema.OpTruncate]) != len(msgs)-2 {
		t.Fatalf("events by op: %d c, %d u, %d t of %d", len(byOp[schema.OpCreate]), len(byOp[schema.OpUpdate]), len(byOp[schema.OpTruncate]), len(msgs))
	}
	before, _ := fields(byOp[schema.OpCreate][0])
	after, s := fields(byOp[schema.OpUpdate][0])
	if slices.Contains(before, "c_late") || !slices.Contains(after, "c_late") {
		t.Fatalf("fields before the ALTER %v, after it %v", before, after)
	}
	if f := s.field("after").field("c_late"); f.Type != "int32" || f.Optional {
		t.Errorf("c_late: %+v, want a required int32", f)
	}
	for _, v := range byOp[schema.OpTruncate] {
		if names, s := fields(v); !slices.Contains(names, "c_late") || s.Name != e.Prefix+".public.jobs.Envelope" {
			t.Errorf("truncate's schema %s with fields %v", s.Name, names)
		}
	}
}

// TestConnectKeyJobIDTypes: with Schemas, the key of every supported job_id
// type carries the job_id column's Connect schema (string, io.debezium.data.Uuid,
// int32, int64; required), JobIDFromKey reads the id back, and KeyCandidates
// holds the very key, so audit and replay find the job's partition.
func TestConnectKeyJobIDTypes(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ typ, id, field string }{
		{"varchar(40)", "j-1", schema.ConnectJobIDString},
		{"uuid", "0b6f4a2e-8c1d-4b7e-9f3a-2d5c6e7f8a9b", schema.ConnectJobIDUUID},
		{"integer", "-42", schema.ConnectJobIDInt32},
		{"bigint", "9007199254740993", schema.ConnectJobIDInt64},
	} {
		t.Run(c.typ, func(t *testing.T) {
			t.Parallel()
			e := harness.New(t)
			e.Exec(t, `ALTER TABLE jobs ALTER COLUMN job_id TYPE `+c.typ+` USING job_id::`+c.typ)
			startReader(t, e, func(cfg *cdc.Config) { cfg.Schemas = true })
			e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ($1::text::`+c.typ+`, 'img_gen', 'done')`, c.id)
			m := waitMessages(t, e, e.Topic("img_gen"), 1)[0]
			var key struct {
				Schema struct {
					Fields []json.RawMessage `json:"fields"`
				} `json:"schema"`
			}
			if err := json.Unmarshal(m.Key, &key); err != nil || len(key.Schema.Fields) != 1 || string(key.Schema.Fields[0]) != c.field {
				t.Fatalf("key %s (%v): want the field %s", m.Key, err, c.field)
			}
			if got := schema.JobIDFromKey(m.Key); got != c.id {
				t.Errorf("JobIDFromKey(%s) = %q, want %q", m.Key, got, c.id)
			}
			if !slices.ContainsFunc(schema.KeyCandidates(c.id, schema.ConnectName(e.Prefix, "public", "jobs", "Key")), func(k []byte) bool { return bytes.Equal(k, m.Key) }) {
				t.Errorf("KeyCandidates lacks the key %s", m.Key)
			}
		})
	}
}

// TestConnectDeleteBefore: with Schemas, the before of a delete under the
// default replica identity (and of the delete an update that changes the
// key makes, whose old tuple is the key alone too) holds a value in every
// NOT NULL column,
// as Debezium writes it (notNullColumns, jobsColumns), so the payload
// agrees with its own schema as Kafka Connect's JsonConverter.toConnectData
// reads it, with no required field null, default or not.
func TestConnectDeleteBefore(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	e.Exec(t, `CREATE TYPE conformance_mood AS ENUM ('sad', 'ok')`)
	e.Exec(t, `ALTER TABLE jobs `+addNotNullColumns())
	startReader(t, e, func(c *cdc.Config) { c.Schemas = true })
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status, `+notNullNames()+`) VALUES ('j1', 'img_gen', 'done', `+notNullValues()+`)`)
	e.Exec(t, `UPDATE jobs SET job_id = 'j2' WHERE job_id = 'j1'`)
	e.Exec(t, `DELETE FROM jobs WHERE job_id = 'j2'`)
	msgs := waitMessages(t, e, e.Topic("img_gen"), 6) // c; d, tombstone and c of the key change; d and tombstone
	want := map[string]string{"job_id": `"j1"`, "current_step": `null`, "status": `"pending"`, "payload": `"{}"`, "results": `"{}"`,
		"error": `null`, "updated_at": `"1970-01-01T00:00:00.000000Z"`}
	for _, c := range notNullColumns {
		want[c.name] = c.debezium
	}
	seen := map[string]int{}
	for _, m := range msgs {
		if m.Value == nil {
			continue // the tombstone
		}
		var w struct {
			Schema  connectSchema `json:"schema"`
			Payload struct {
				Before map[string]json.RawMessage `json:"before"`
				Op     string                     `json:"op"`
			} `json:"payload"`
		}
		if err := json.Unmarshal(m.Value, &w); err != nil {
			t.Fatalf("%v: %s", err, m.Value)
		}
		var raw struct {
			Payload json.RawMessage `json:"payload"`
		}
		json.Unmarshal(m.Value, &raw)
		op := w.Payload.Op
		seen[op]++
		validate(t, raw.Payload)
		if errs := agrees(&w.Schema, raw.Payload, "$"); len(errs) > 0 {
			t.Errorf("%s: payload and schema disagree:\n  %s", op, strings.Join(errs, "\n  "))
		}
		if op == schema.OpCreate {
			continue
		}
		want["job_id"] = `"` + schema.JobIDFromKey(m.Key) + `"`
		for _, f := range w.Schema.field("before").Fields {
			got := string(w.Payload.Before[f.Field])
			if !f.Optional && (got == "" || got == "null") {
				t.Errorf("%s: before.%s is required (NOT NULL) but null", op, f.Field)
			}
			if got != want[f.Field] {
				t.Errorf("%s: before.%s: ours %s, Debezium's %s", op, f.Field, got, want[f.Field])
			}
		}
	}
	if seen[schema.OpCreate] != 2 || seen[schema.OpDelete] != 2 || len(seen) != 2 {
		t.Fatalf("ops %v, want 2 c and 2 d", seen)
	}
}
