package cdc_test

import (
	"encoding/json"
	"testing"

	"github.com/jobstream/jobstream/ops/harness"
)

// TestDebeziumConformance is the conformance table of the Debezium issue:
// for each case, the value Debezium 3.x's Postgres connector emits (the
// file of Debezium's source or tests that says so in the comment) and ours,
// read from real events.
func TestDebeziumConformance(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	e.Exec(t, `ALTER TABLE jobs ADD COLUMN tz_whole timestamptz, ADD COLUMN tz_half timestamptz,
		ADD COLUMN n_trailing numeric, ADD COLUMN n_small numeric, ADD COLUMN n_int numeric, ADD COLUMN blobs bytea[],
		ADD COLUMN big_tags text[], ADD COLUMN big_blob bytea`)
	e.Exec(t, `ALTER TABLE jobs ALTER COLUMN big_tags SET STORAGE EXTERNAL, ALTER COLUMN big_blob SET STORAGE EXTERNAL`)
	startReader(t, e, nil)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status, tz_whole, tz_half, n_trailing, n_small, n_int, blobs, big_tags, big_blob)
		VALUES ('j1', 'img_gen', 'done', '2026-11-26 23:32:21+00', '2026-11-26 23:32:21.5+00', 1.50, -0.0500, 100,
		ARRAY['\x0102'::bytea, NULL], array_fill(repeat('t', 40), ARRAY[200]), decode(repeat('ab', 5000), 'hex'))`)
	e.Exec(t, `UPDATE jobs SET status = 'running' WHERE job_id = 'j1'`) // the TOASTed columns unchanged
	msgs := waitMessages(t, e, e.Topic("img_gen"), 2)
	for _, m := range msgs {
		validate(t, m.Value)
	}
	var ins, upd struct {
		After  map[string]json.RawMessage `json:"after"`
		Source map[string]json.RawMessage `json:"source"`
		TsMs   int64                      `json:"ts_ms"`
		TsUs   int64                      `json:"ts_us"`
		TsNs   int64                      `json:"ts_ns"`
	}
	json.Unmarshal(msgs[0].Value, &ins)
	json.Unmarshal(msgs[1].Value, &upd)
	for _, c := range []struct {
		name, col string
		row       map[string]json.RawMessage
		debezium  string
	}{
		// debezium-core/src/main/java/io/debezium/time/ZonedTimestamp.java: ISO-8601 with six fraction digits.
		{"timestamptz, whole second", "tz_whole", ins.After, `"2026-11-26T23:32:21.000000Z"`},
		{"timestamptz, half second", "tz_half", ins.After, `"2026-11-26T23:32:21.500000Z"`},
		// debezium-core/src/main/java/io/debezium/data/VariableScaleDecimal.java with the
		// value's own scale, trailing zeros stripped (PostgresValueConverter's numeric without scale).
		{"numeric 1.50 without scale", "n_trailing", ins.After, `{"scale":1,"value":"Dw=="}`},
		{"numeric -0.0500 without scale", "n_small", ins.After, `{"scale":2,"value":"+w=="}`},
		{"numeric 100 without scale", "n_int", ins.After, `{"scale":0,"value":"ZA=="}`},
		// debezium-connector-postgres PostgresValueConverter: bytea[] as an array of bytes (base64 with schemas off).
		{"bytea[]", "blobs", ins.After, `["AQI=",null]`},
		// debezium-connector-postgres PostgresValueConverter's unavailable-value placeholder per type
		// (tests: PostgresConnectorIT, toasted array and bytea columns).
		{"unchanged TOAST, text[]", "big_tags", upd.After, `["__debezium_unavailable_value"]`},
		{"unchanged TOAST, bytea", "big_blob", upd.After, `"X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ=="`},
		// debezium-core/src/main/java/io/debezium/connector/AbstractSourceInfoStructMaker.java (3.5): origin fields.
		{"source.origin", "origin", ins.Source, `null`},
		{"source.origin_lsn", "origin_lsn", ins.Source, `null`},
	} {
		if got := string(c.row[c.col]); got != c.debezium {
			t.Errorf("%s: ours %s, Debezium's %s", c.name, got, c.debezium)
		}
	}
	// debezium-core/src/main/java/io/debezium/connector/AbstractSourceInfoStructMaker.java and
	// io/debezium/data/Envelope.java (≥ 2.6): ts_us and ts_ns beside ts_ms, in the source and the envelope.
	var srcMs, srcUs, srcNs int64
	json.Unmarshal(ins.Source["ts_ms"], &srcMs)
	json.Unmarshal(ins.Source["ts_us"], &srcUs)
	json.Unmarshal(ins.Source["ts_ns"], &srcNs)
	if srcUs/1000 != srcMs || srcNs != srcUs*1000 {
		t.Errorf("source ts_ms %d, ts_us %d, ts_ns %d: not one instant", srcMs, srcUs, srcNs)
	}
	if ins.TsUs/1000 != ins.TsMs || ins.TsNs/1000 != ins.TsUs {
		t.Errorf("envelope ts_ms %d, ts_us %d, ts_ns %d: not one instant", ins.TsMs, ins.TsUs, ins.TsNs)
	}
}
