package cdc

import (
	"encoding/json"
	"testing"

	"github.com/jackc/pglogrepl"
	"github.com/segmentio/kafka-go"
)

func TestAppendValue(t *testing.T) {
	t.Parallel()
	numeric := func(p, s int32) int32 { return p<<16 | s + 4 }
	cases := []struct {
		name   string
		oid    uint32
		typmod int32
		in     string
		want   string
	}{
		{"text", 25, -1, "hello", `"hello"`},
		{"text escapes", 25, -1, "a\"b\\c\nd\te\x01", `"a\"b\\c\nd\te\u0001"`},
		{"text utf8", 25, -1, "façade ✓", `"façade ✓"`},
		{"text invalid utf8", 25, -1, "a\xffb", `"a\ufffdb"`},
		{"bool true", oidBool, -1, "t", `true`},
		{"bool false", oidBool, -1, "f", `false`},
		{"int2", oidInt2, -1, "7", `7`},
		{"int4", oidInt4, -1, "-42", `-42`},
		{"int8", oidInt8, -1, "9223372036854775807", `9223372036854775807`},
		{"float8", oidFloat8, -1, "1.5e-07", `1.5e-07`},
		{"float8 NaN", oidFloat8, -1, "NaN", `"NaN"`},
		{"float8 -Infinity", oidFloat8, -1, "-Infinity", `"-Infinity"`},
		{"jsonb as string", oidJSONB, -1, `{"a": [1, 2]}`, `"{\"a\": [1, 2]}"`},
		{"timestamptz utc", oidTimestamptz, -1, "2026-11-26 23:32:21.123456+00", `"2026-11-26T23:32:21.123456Z"`},
		{"timestamptz offset", oidTimestamptz, -1, "2026-11-27 01:02:03+05:30", `"2026-11-26T19:32:03Z"`},
		{"timestamptz whole second", oidTimestamptz, -1, "2026-01-01 00:00:00+00", `"2026-01-01T00:00:00Z"`},
		{"timestamptz infinity", oidTimestamptz, -1, "infinity", `"infinity"`},
		{"timestamp micros", oidTimestamp, -1, "1970-01-01 00:00:01.5", `1500000`},
		{"date days", oidDate, -1, "1970-01-11", `10`},
		{"bytea base64", oidBytea, -1, `\x68690a`, `"aGkK"`},
		{"uuid as string", 2950, -1, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`},
		// Debezium's precise decimals: unscaled two's complement, base64.
		{"numeric(5,2)", oidNumeric, numeric(5, 2), "1.50", `"AJY="`},
		{"numeric(5,2) -1.28", oidNumeric, numeric(5, 2), "-1.28", `"gA=="`},
		{"numeric(5,2) -1.29", oidNumeric, numeric(5, 2), "-1.29", `"/38="`},
		{"numeric(10,0) 128", oidNumeric, numeric(10, 0), "128", `"AIA="`},
		{"numeric variable scale", oidNumeric, -1, "1.5", `{"scale":1,"value":"Dw=="}`},
		{"numeric zero", oidNumeric, -1, "0", `{"scale":0,"value":"AA=="}`},
		{"numeric NaN", oidNumeric, -1, "NaN", `"NaN"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := string(appendValue(nil, c.oid, c.typmod, []byte(c.in)))
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
	row, id, step, bad := appendRow(nil, testRelation(),
		testTuple("j1", "vlm_analyze", "done", `{"seed": 1}`, byte('u'), nil, "2026-11-26 23:00:00.5+00"), nil)
	want := `{"job_id":"j1","current_step":"vlm_analyze","status":"done","payload":"{\"seed\": 1}",` +
		`"results":"__debezium_unavailable_value","error":null,"updated_at":"2026-11-26T23:00:00.5Z"}`
	if string(row) != want {
		t.Fatalf("row\n got %s\nwant %s", row, want)
	}
	if string(id) != "j1" || string(step) != "vlm_analyze" || bad != "" {
		t.Fatalf("job_id %q step %q bad %q", id, step, bad)
	}
	if got, _, _, _ := appendRow(nil, testRelation(), nil, nil); string(got) != "null" {
		t.Fatalf("nil tuple = %s", got)
	}
}

// TestAppendRowFillsToastFromFullOldRow: with REPLICA IDENTITY FULL the old
// row carries the unchanged TOASTed value, so no placeholder is needed.
func TestAppendRowFillsToastFromFullOldRow(t *testing.T) {
	t.Parallel()
	old := testTuple("j1", "img_gen", "done", `{"big": 1}`, `{"r": 2}`, nil, "2026-11-26 23:00:00+00")
	row, _, _, _ := appendRow(nil, testRelation(), testTuple("j1", "img_gen", "running", byte('u'), byte('u'), nil, "2026-11-26 23:00:01+00"), old)
	want := `{"job_id":"j1","current_step":"img_gen","status":"running","payload":"{\"big\": 1}","results":"{\"r\": 2}",` +
		`"error":null,"updated_at":"2026-11-26T23:00:01Z"}`
	if string(row) != want {
		t.Fatalf("row\n got %s\nwant %s", row, want)
	}
}

func TestAppendRowReportsInvalidUTF8(t *testing.T) {
	t.Parallel()
	row, _, _, bad := appendRow(nil, testRelation(), testTuple("j1", "img_gen", "done", `{}`, `{}`, "caf\xe9", nil), nil)
	if bad != "error" || !json.Valid(row) {
		t.Fatalf("bad column %q, row %s", bad, row)
	}
}

// TestMurmur2MatchesKafkaGo: the partition of a key is the one kafka-go's
// (and the Java client's) murmur2 partitioner computes.
func TestMurmur2MatchesKafkaGo(t *testing.T) {
	t.Parallel()
	parts := make([]int, 12)
	for i := range parts {
		parts[i] = i
	}
	for _, k := range []string{"", "a", "ab", "abc", "abcd", "job-000123", "j1", "ünïcode-key-with-length-21"} {
		want := kafka.Murmur2Balancer{Consistent: true}.Balance(kafka.Message{Key: []byte(k)}, parts...)
		if got := int((murmur2([]byte(k)) & 0x7fffffff) % 12); got != want {
			t.Errorf("key %q: partition %d, kafka-go says %d", k, got, want)
		}
	}
}

func BenchmarkAppendRow(b *testing.B) {
	rel := testRelation()
	tuple := testTuple("job-000123", "vlm_analyze", "done", `{"prompt": "a red square", "seed": 123}`,
		`{"img_gen": {"width": 96, "height": 96, "shapes": [{"kind": "rect", "x": 4, "y": 9}]}}`, nil, "2026-11-26 23:00:00.123456+00")
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf, _, _, _ = appendRow(buf[:0], rel, tuple, nil)
	}
	b.SetBytes(int64(len(buf)))
}
