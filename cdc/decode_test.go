package cdc

import (
	"encoding/json"
	"math"
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
		{"float8", oidFloat8, -1, "1.5e-07", `1.5E-7`}, // JsonConverter's form: Java's Double.toString
		{"float8 whole", oidFloat8, -1, "1", `1.0`},
		{"float4", oidFloat4, -1, "0.1", `0.1`},
		{"float8 NaN", oidFloat8, -1, "NaN", `"NaN"`},
		{"float8 -Infinity", oidFloat8, -1, "-Infinity", `"-Infinity"`},
		{"jsonb as string", oidJSONB, -1, `{"a": [1, 2]}`, `"{\"a\": [1, 2]}"`},
		{"timestamptz utc", oidTimestamptz, -1, "2026-11-26 23:32:21.123456+00", `"2026-11-26T23:32:21.123456Z"`},
		{"timestamptz offset", oidTimestamptz, -1, "2026-11-27 01:02:03+05:30", `"2026-11-26T19:32:03.000000Z"`},
		{"timestamptz whole second", oidTimestamptz, -1, "2026-01-01 00:00:00+00", `"2026-01-01T00:00:00.000000Z"`},
		{"timestamptz infinity", oidTimestamptz, -1, "infinity", `"infinity"`},
		{"timestamp micros", oidTimestamp, -1, "1970-01-01 00:00:01.5", `1500000`},
		{"timestamp(6) micros", oidTimestamp, 6, "1970-01-01 00:00:01.5", `1500000`},
		{"timestamp(3) millis", oidTimestamp, 3, "1970-01-01 00:00:01.5", `1500`},
		{"timestamp(0) millis", oidTimestamp, 0, "1970-01-02 00:00:00", `86400000`},
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
		// time: io.debezium.time.MicroTime (µs past midnight), or
		// io.debezium.time.Time (ms) for time(0) to time(3).
		{"time", oidTime, -1, "13:14:15.123456", `47655123456`},
		{"time midnight", oidTime, -1, "00:00:00", `0`},
		{"time 24:00", oidTime, -1, "24:00:00", `86400000000`},
		{"time(6)", oidTime, 6, "23:59:59.999999", `86399999999`},
		{"time(4)", oidTime, 4, "01:00:00.1234", `3600123400`},
		{"time(3)", oidTime, 3, "13:14:15.123", `47655123`},
		{"time(0)", oidTime, 0, "13:14:15", `47655000`},
		{"time(3) 24:00", oidTime, 3, "24:00:00", `86400000`},
		{"time past 24:00", oidTime, -1, "24:00:00.000001", `"24:00:00.000001"`},
		{"time garbage", oidTime, -1, "1:2", `"1:2"`},
		{"time bad fraction", oidTime, -1, "01:02:03.", `"01:02:03."`},
		// timetz: io.debezium.time.ZonedTime, ISO_OFFSET_TIME in UTC.
		{"timetz offset", oidTimetz, -1, "04:05:06.789+05:30", `"22:35:06.789Z"`},
		{"timetz negative offset", oidTimetz, -1, "04:05:06-08", `"12:05:06Z"`},
		{"timetz utc micros", oidTimetz, -1, "12:00:00.000001+00", `"12:00:00.000001Z"`},
		{"timetz whole second", oidTimetz, -1, "12:00:00.500000+00", `"12:00:00.5Z"`},
		{"timetz wraps", oidTimetz, -1, "23:59:59.999999-15:59", `"15:58:59.999999Z"`},
		{"timetz 24:00", oidTimetz, -1, "24:00:00+05", `"19:00:00Z"`},
		{"timetz offset seconds", oidTimetz, -1, "04:05:06+05:30:15", `"04:05:06+05:30:15"`},
		{"timetz garbage", oidTimetz, -1, "25:00:00+00", `"25:00:00+00"`},
		// interval: io.debezium.time.MicroDuration, months of 365.25/12
		// days, in Java's double arithmetic (hence 1000000 for 1.000001 s).
		{"interval", oidInterval, -1, "1 year 2 mons 3 days 04:05:06.789", `37091106789000`},
		{"interval mixed signs", oidInterval, -1, "-1 years -2 mons +3 days -04:05:06", `-36572706000000`},
		{"interval negative second", oidInterval, -1, "-00:00:01", `-1000000`},
		{"interval zero", oidInterval, -1, "00:00:00", `0`},
		{"interval month", oidInterval, -1, "1 mon", `2629800000000`},
		{"interval day", oidInterval, -1, "1 day", `86400000000`},
		{"interval micro", oidInterval, -1, "3 days 00:00:00.000001", `259200000001`},
		{"interval double rounding", oidInterval, -1, "00:00:01.000001", `1000000`},
		{"interval day minus micro", oidInterval, -1, "1 day -00:00:00.000001", `86399999999`},
		{"interval saturates", oidInterval, -1, "178956970 years 7 mons", `9223372036854775807`},
		{"interval verbose ago", oidInterval, -1, "@ 1 year 2 mons 3 days 4 hours 5 mins 6.789 secs ago", `-37091106789000`},
		{"interval hours past int", oidInterval, -1, "2562047788:00:54.775807", `"2562047788:00:54.775807"`},
		{"interval iso", oidInterval, -1, "P1Y2M", `"P1Y2M"`},
		{"interval sql standard", oidInterval, -1, "1-2", `"1-2"`},
		{"interval unknown unit", oidInterval, -1, "1 fortnight", `"1 fortnight"`},
		{"interval empty", oidInterval, -1, "", `""`},
		// Arrays: JSON arrays of elements rendered as their type.
		{"int4[]", 1007, -1, "{1,2,3}", `[1,2,3]`},
		{"int8[] nulls", 1016, -1, "{NULL,-9223372036854775808,NULL}", `[null,-9223372036854775808,null]`},
		{"int2[] empty", 1005, -1, "{}", `[]`},
		{"text[] quoting", 1009, -1, `{"a b","c\"d","e\\f",NULL,"NULL",plain,""}`, `["a b","c\"d","e\\f",null,"NULL","plain",""]`},
		{"varchar[] utf8", 1015, -1, `{façade,"✓ x"}`, `["façade","✓ x"]`},
		{"bool[]", 1000, -1, "{t,f,NULL}", `[true,false,null]`},
		{"float8[]", 1022, -1, "{1.5,-0,NaN,Infinity,1e+300}", `[1.5,-0.0,"NaN","Infinity",1.0E300]`},
		{"numeric(5,2)[]", 1231, numeric(5, 2), "{1.50,-1.28}", `["AJY=","gA=="]`},
		{"numeric[]", 1231, -1, "{1.5,NaN}", `[{"scale":1,"value":"Dw=="},"NaN"]`},
		{"uuid[]", 2951, -1, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", `["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]`},
		{"timestamptz[]", 1185, -1, `{"2026-11-26 23:32:21.123456+00","2026-11-27 01:02:03+05:30"}`, `["2026-11-26T23:32:21.123456Z","2026-11-26T19:32:03.000000Z"]`},
		{"timestamp[]", 1115, -1, `{"1970-01-01 00:00:01.5"}`, `[1500000]`},
		{"date[]", 1182, -1, `{1970-01-11,NULL}`, `[10,null]`},
		{"jsonb[]", 3807, -1, `{"{\"a\": 1}","[1, 2]"}`, `["{\"a\": 1}","[1, 2]"]`},
		{"int4[] bounds", 1007, -1, "[0:1]={7,8}", `[7,8]`},
		{"int4[] spaces", 1007, -1, "{ 1 , 2 }", `[1,2]`},
		{"int4[][] stays a string", 1007, -1, "{{1,2},{3,4}}", `"{{1,2},{3,4}}"`},
		{"int4[] unclosed", 1007, -1, "{1,2", `"{1,2"`},
		{"int4[] trailing comma", 1007, -1, "{1,}", `"{1,}"`},
		{"text[] open quote", 1009, -1, `{"a}`, `"{\"a}"`},
		{"text[] junk after quote", 1009, -1, `{"a"b}`, `"{\"a\"b}"`},
		{"text[] junk after array", 1009, -1, `{a}b`, `"{a}b"`},
		{"time[] stays a string", 1183, -1, "{01:02:03}", `"{01:02:03}"`},
		{"interval[] stays a string", 1187, -1, "{00:00:01}", `"{00:00:01}"`},
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
		testTuple("j1", "vlm_analyze", "done", `{"seed": 1}`, byte('u'), nil, "2026-11-26 23:00:00.5+00"), nil, nil)
	want := `{"job_id":"j1","current_step":"vlm_analyze","status":"done","payload":"{\"seed\": 1}",` +
		`"results":"__debezium_unavailable_value","error":null,"updated_at":"2026-11-26T23:00:00.500000Z"}`
	if string(row) != want {
		t.Fatalf("row\n got %s\nwant %s", row, want)
	}
	if string(id) != "j1" || string(step) != "vlm_analyze" || bad != "" {
		t.Fatalf("job_id %q step %q bad %q", id, step, bad)
	}
	if got, _, _, _ := appendRow(nil, testRelation(), nil, nil, nil); string(got) != "null" {
		t.Fatalf("nil tuple = %s", got)
	}
}

// TestAppendRowFillsToastFromFullOldRow: with REPLICA IDENTITY FULL the old
// row carries the unchanged TOASTed value, so no placeholder is needed.
func TestAppendRowFillsToastFromFullOldRow(t *testing.T) {
	t.Parallel()
	old := testTuple("j1", "img_gen", "done", `{"big": 1}`, `{"r": 2}`, nil, "2026-11-26 23:00:00+00")
	row, _, _, _ := appendRow(nil, testRelation(), testTuple("j1", "img_gen", "running", byte('u'), byte('u'), nil, "2026-11-26 23:00:01+00"), old, nil)
	want := `{"job_id":"j1","current_step":"img_gen","status":"running","payload":"{\"big\": 1}","results":"{\"r\": 2}",` +
		`"error":null,"updated_at":"2026-11-26T23:00:01.000000Z"}`
	if string(row) != want {
		t.Fatalf("row\n got %s\nwant %s", row, want)
	}
}

func TestAppendRowReportsInvalidUTF8(t *testing.T) {
	t.Parallel()
	row, _, _, bad := appendRow(nil, testRelation(), testTuple("j1", "img_gen", "done", `{}`, `{}`, "caf\xe9", nil), nil, nil)
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
		buf, _, _, _ = appendRow(buf[:0], rel, tuple, nil, nil)
	}
	b.SetBytes(int64(len(buf)))
}

// TestAppendJavaFloat: floats as JsonConverter writes them, which is Java's
// Double.toString and Float.toString (the values are theirs).
func TestAppendJavaFloat(t *testing.T) {
	for _, c := range []struct {
		f    float64
		bits int
		want string
	}{
		{1, 64, "1.0"}, {-1, 64, "-1.0"}, {0, 64, "0.0"}, {math.Copysign(0, -1), 64, "-0.0"}, {1.5, 64, "1.5"},
		{0.001, 64, "0.001"}, {0.0001, 64, "1.0E-4"}, {1234567, 64, "1234567.0"}, {12345678, 64, "1.2345678E7"},
		{1e20, 64, "1.0E20"}, {math.MaxFloat64, 64, "1.7976931348623157E308"}, {5e-324, 64, "4.9E-324"},
		{1e23, 64, "1.0E23"}, {100, 64, "100.0"}, {0.1, 64, "0.1"}, {123.456, 64, "123.456"}, {1e7, 64, "1.0E7"},
		{9999999, 64, "9999999.0"}, {0.00123, 64, "0.00123"}, {2e-3, 64, "0.002"}, {1.5e-7, 64, "1.5E-7"},
		{float64(float32(0.1)), 32, "0.1"}, {float64(float32(3.4028235e38)), 32, "3.4028235E38"}, {float64(float32(1.4e-45)), 32, "1.4E-45"},
		{float64(float32(1.1)), 32, "1.1"}, {float64(float32(16777216)), 32, "1.6777216E7"},
	} {
		if got := string(appendJavaFloat(nil, c.f, c.bits)); got != c.want {
			t.Errorf("%v/%d: %s, want %s", c.f, c.bits, got, c.want)
		}
	}
}

// TestAppendJavaFloatAllocatesNothing: a float column costs the hot path no
// allocation.
func TestAppendJavaFloatAllocatesNothing(t *testing.T) {
	b := make([]byte, 0, 64)
	if n := testing.AllocsPerRun(100, func() { b = appendJavaFloat(b[:0], 12345.678, 64) }); n != 0 {
		t.Errorf("%v allocations per float, want 0", n)
	}
}
