package cdc

import (
	"encoding/json"
	"testing"

	"github.com/jackc/pglogrepl"
)

func TestAppendValue(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		oid  uint32
		in   string
		want string
	}{
		{"text", 25, "hello", `"hello"`},
		{"text escapes", 25, "a\"b\\c\nd\te\x01", `"a\"b\\c\nd\te\u0001"`},
		{"text utf8", 25, "façade ✓", `"façade ✓"`},
		{"bool true", oidBool, "t", `true`},
		{"bool false", oidBool, "f", `false`},
		{"int4", oidInt4, "-42", `-42`},
		{"int8", oidInt8, "9223372036854775807", `9223372036854775807`},
		{"float8", oidFloat8, "1.5e-07", `1.5e-07`},
		{"float8 NaN", oidFloat8, "NaN", `"NaN"`},
		{"float8 -Infinity", oidFloat8, "-Infinity", `"-Infinity"`},
		{"jsonb as string", oidJSONB, `{"a": [1, 2]}`, `"{\"a\": [1, 2]}"`},
		{"timestamptz utc", oidTimestamptz, "2026-11-26 23:32:21.123456+00", `"2026-11-26T23:32:21.123456Z"`},
		{"timestamptz offset", oidTimestamptz, "2026-11-27 01:02:03+05:30", `"2026-11-26T19:32:03Z"`},
		{"timestamptz whole second", oidTimestamptz, "2026-01-01 00:00:00+00", `"2026-01-01T00:00:00Z"`},
		{"timestamp micros", oidTimestamp, "1970-01-01 00:00:01.5", `1500000`},
		{"date days", oidDate, "1970-01-11", `10`},
		{"bytea base64", oidBytea, `\x68690a`, `"aGkK"`},
		{"uuid as string", 2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := string(appendValue(nil, c.oid, []byte(c.in)))
			if got != c.want {
				t.Fatalf("appendValue(%d, %q) = %s, want %s", c.oid, c.in, got, c.want)
			}
			if !json.Valid([]byte(got)) {
				t.Fatalf("%s is not valid JSON", got)
			}
		})
	}
}

func testRelation() *pglogrepl.RelationMessage {
	return &pglogrepl.RelationMessage{RelationID: 1, Namespace: "public", RelationName: "jobs", Columns: []*pglogrepl.RelationMessageColumn{
		{Name: "job_id", DataType: 25}, {Name: "current_step", DataType: 25}, {Name: "status", DataType: 25},
		{Name: "payload", DataType: oidJSONB}, {Name: "results", DataType: oidJSONB}, {Name: "error", DataType: 25},
		{Name: "updated_at", DataType: oidTimestamptz},
	}}
}

func testTuple(vals ...any) *pglogrepl.TupleData {
	td := &pglogrepl.TupleData{}
	for _, v := range vals {
		switch v := v.(type) {
		case nil:
			td.Columns = append(td.Columns, &pglogrepl.TupleDataColumn{DataType: 'n'})
		case byte:
			td.Columns = append(td.Columns, &pglogrepl.TupleDataColumn{DataType: v})
		case string:
			td.Columns = append(td.Columns, &pglogrepl.TupleDataColumn{DataType: 't', Data: []byte(v)})
		}
	}
	return td
}

func TestAppendRow(t *testing.T) {
	t.Parallel()
	row, id, step := appendRow(nil, testRelation(),
		testTuple("j1", "vlm_analyze", "done", `{"seed": 1}`, byte('u'), nil, "2026-11-26 23:00:00.5+00"))
	want := `{"job_id":"j1","current_step":"vlm_analyze","status":"done","payload":"{\"seed\": 1}",` +
		`"results":"__debezium_unavailable_value","error":null,"updated_at":"2026-11-26T23:00:00.5Z"}`
	if string(row) != want {
		t.Fatalf("row\n got %s\nwant %s", row, want)
	}
	if string(id) != "j1" || string(step) != "vlm_analyze" {
		t.Fatalf("job_id %q step %q", id, step)
	}
	if got, _, _ := appendRow(nil, testRelation(), nil); string(got) != "null" {
		t.Fatalf("nil tuple = %s", got)
	}
}

func BenchmarkAppendRow(b *testing.B) {
	rel := testRelation()
	tuple := testTuple("job-000123", "vlm_analyze", "done", `{"prompt": "a red square", "seed": 123}`,
		`{"img_gen": {"width": 96, "height": 96, "shapes": [{"kind": "rect", "x": 4, "y": 9}]}}`, nil, "2026-11-26 23:00:00.123456+00")
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf, _, _ = appendRow(buf[:0], rel, tuple)
	}
	b.SetBytes(int64(len(buf)))
}
