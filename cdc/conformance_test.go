package cdc_test

import (
	"encoding/json"
	"strings"
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
	e.Exec(t, `CREATE TYPE conformance_mood AS ENUM ('sad', 'ok')`)
	e.Exec(t, `ALTER TABLE jobs ADD COLUMN tz_whole timestamptz, ADD COLUMN tz_half timestamptz,
		ADD COLUMN n_trailing numeric, ADD COLUMN n_small numeric, ADD COLUMN n_int numeric, ADD COLUMN blobs bytea[],
		ADD COLUMN big_tags text[], ADD COLUMN big_blob bytea, `+addNotNullColumns())
	e.Exec(t, `ALTER TABLE jobs ALTER COLUMN big_tags SET STORAGE EXTERNAL, ALTER COLUMN big_blob SET STORAGE EXTERNAL`)
	startReader(t, e, nil)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status, tz_whole, tz_half, n_trailing, n_small, n_int, blobs, big_tags, big_blob, `+
		notNullNames()+`) VALUES ('j1', 'img_gen', 'done', '2026-11-26 23:32:21+00', '2026-11-26 23:32:21.5+00', 1.50, -0.0500, 100,
		ARRAY['\x0102'::bytea, NULL], array_fill(repeat('t', 40), ARRAY[200]), decode(repeat('ab', 5000), 'hex'), `+notNullValues()+`)`)
	e.Exec(t, `UPDATE jobs SET status = 'running' WHERE job_id = 'j1'`) // the TOASTed columns unchanged
	e.Exec(t, `DELETE FROM jobs WHERE job_id = 'j1'`)                   // under the default replica identity
	msgs := waitMessages(t, e, e.Topic("img_gen"), 4)                   // and its tombstone
	for _, m := range msgs[:3] {
		validate(t, m.Value)
	}
	var ins, upd, del struct {
		Before map[string]json.RawMessage `json:"before"`
		After  map[string]json.RawMessage `json:"after"`
		Source map[string]json.RawMessage `json:"source"`
		Op     string                     `json:"op"`
		TsMs   int64                      `json:"ts_ms"`
		TsUs   int64                      `json:"ts_us"`
		TsNs   int64                      `json:"ts_ns"`
	}
	json.Unmarshal(msgs[0].Value, &ins)
	json.Unmarshal(msgs[1].Value, &upd)
	json.Unmarshal(msgs[2].Value, &del)
	if del.Op != "d" || msgs[3].Value != nil {
		t.Fatalf("third and fourth events: op %q and %s, want a delete and its tombstone", del.Op, msgs[3].Value)
	}
	cases := []struct {
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

		// A delete under the default replica identity: the WAL's old tuple
		// holds the key and null for every other column. Debezium runs each
		// value through the column's converter
		// (debezium-connector-postgres/src/main/java/io/debezium/connector/postgresql/PostgresChangeRecordEmitter.java,
		// getOldColumnValues; the decoder gives the 'n' columns a null
		// value: connection/pgoutput/PgOutputMessageDecoder.java), and
		// debezium-core/src/main/java/io/debezium/jdbc/JdbcValueConverters.java's
		// convertValue keeps null for a nullable column only; for a NOT NULL
		// one it writes the schema's default, else the converter's fallback.
		{"delete: the key", "job_id", del.Before, `"j1"`},
		{"delete: nullable current_step", "current_step", del.Before, `null`},
		{"delete: nullable error", "error", del.Before, `null`},
		{"delete: nullable added column", "tz_whole", del.Before, `null`},
		{"delete: status NOT NULL DEFAULT 'pending'", "status", del.Before, `"pending"`},
		{"delete: payload jsonb NOT NULL DEFAULT '{}'", "payload", del.Before, `"{}"`},
		{"delete: results jsonb NOT NULL DEFAULT '{}'", "results", del.Before, `"{}"`},
		// now() is a function: PostgresDefaultValueConverter declares its
		// placeholder, the epoch, as the default, rendered as the column's
		// values are (ZonedTimestamp with the column's six fraction digits).
		{"delete: updated_at timestamptz NOT NULL DEFAULT now()", "updated_at", del.Before, `"1970-01-01T00:00:00.000000Z"`},
	}
	for _, c := range notNullColumns {
		cases = append(cases, struct {
			name, col string
			row       map[string]json.RawMessage
			debezium  string
		}{"delete: " + c.sqlType, c.name, del.Before, c.debezium})
	}
	for _, c := range cases {
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

// notNullColumns are NOT NULL columns of several types, with and without a
// DEFAULT, with a value for an insert and what Debezium 3.x writes for them
// in the before of a delete under the default replica identity, where the
// WAL carries null for them: the DEFAULT as
// debezium-connector-postgres/src/main/java/io/debezium/connector/postgresql/connection/PostgresDefaultValueConverter.java
// parses it (for a function or current_date, its placeholder: 0, the
// epoch, the zero UUID), rendered as the column's values, else the
// fallback of the column's
// converter, in
// debezium-core/src/main/java/io/debezium/jdbc/JdbcValueConverters.java
// unless said otherwise (PostgresValueConverter.java is
// debezium-connector-postgres/src/main/java/io/debezium/connector/postgresql/PostgresValueConverter.java).
var notNullColumns = []struct{ name, sqlType, value, debezium string }{
	{"nn_bool", "boolean NOT NULL", "true", `false`},                                          // convertBoolean: false
	{"nn_bool_def", "boolean NOT NULL DEFAULT true", "false", `true`},                         // the default
	{"nn_int2", "smallint NOT NULL", "2", `0`},                                                // convertSmallInt: SHORT_FALSE
	{"nn_int4_def", "integer NOT NULL DEFAULT 42", "4", `42`},                                 // the default
	{"nn_int8", "bigint NOT NULL", "8", `0`},                                                  // convertBigInt: 0L
	{"nn_serial", "bigserial", "DEFAULT", `0`},                                                // nextval(...): the placeholder 0
	{"nn_float4", "real NOT NULL", "1.5", `0.0`},                                              // convertReal: 0.0f, JsonConverter's 0.0
	{"nn_float8_def", "double precision NOT NULL DEFAULT 2.5", "1", `2.5`},                    // the default
	{"nn_num", "numeric(10,2) NOT NULL", "12.5", `"AA=="`},                                    // PostgresValueConverter.convertDecimal: BigDecimal.ZERO, unscaled bytes {0}
	{"nn_num_def", "numeric(10,2) NOT NULL DEFAULT 1.5", "12.5", `"AJY="`},                    // the default, 150 unscaled
	{"nn_numv", "numeric NOT NULL", "1.5", `{"scale":0,"value":"AA=="}`},                      // the same zero as a VariableScaleDecimal
	{"nn_date", "date NOT NULL DEFAULT current_date", "'2026-11-26'", `0`},                    // current_date: the placeholder 1970-01-01
	{"nn_time", "time NOT NULL", "'12:34:56'", `0`},                                           // convertTimeToMicrosPastMidnight: 0L
	{"nn_ts", "timestamp NOT NULL", "'2026-11-26 23:32:21'", `0`},                             // convertTimestampToEpochMicros: 0L
	{"nn_tstz", "timestamptz NOT NULL", "'2026-11-26 23:32:21+00'", `"1970-01-01T00:00:00Z"`}, // fallbackTimestampWithTimeZone
	{"nn_timetz", "timetz NOT NULL", "'12:34:56+02'", `"00:00:00Z"`},                          // fallbackTimeWithTimeZone (ZonedTime.FORMATTER)
	{"nn_interval", "interval NOT NULL", "'1 day'", `0`},                                      // PostgresValueConverter.convertInterval: LONG_FALSE
	{"nn_bytea", "bytea NOT NULL", `'\x01'`, `""`},                                            // convertBinaryToBytes: BYTE_ZERO, no bytes
	{"nn_text", "text NOT NULL", "'t'", `""`},                                                 // convertString: ""
	{"nn_varchar_def", "varchar(10) NOT NULL DEFAULT 'none'", "'v'", `"none"`},                // the default
	{"nn_jsonb", "jsonb NOT NULL", `'{"a": 1}'`, `""`},                                        // PostgresValueConverter: convertString, ""
	{"nn_uuid_def", "uuid NOT NULL DEFAULT gen_random_uuid()", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", `"00000000-0000-0000-0000-000000000000"`}, // a function: the placeholder
	{"nn_uuid", "uuid NOT NULL", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", `""`},                                                                   // PostgresValueConverter: convertString, ""
	{"nn_enum_def", "conformance_mood NOT NULL DEFAULT 'sad'", "'ok'", `"sad"`},                                                                    // extractEnumDefault
	{"nn_enum", "conformance_mood NOT NULL", "'ok'", `""`},                                                                                         // PostgresValueConverter: convertString, ""
	{"nn_tags", "text[] NOT NULL", "ARRAY['a']", `[]`},                                                                                             // PostgresValueConverter.convertArray: emptyList()
	{"nn_ints", "integer[] NOT NULL", "ARRAY[1]", `[]`},                                                                                            // PostgresValueConverter.convertArray: emptyList()
}

// addNotNullColumns returns the ADD COLUMN clauses of notNullColumns.
func addNotNullColumns() string {
	var add []string
	for _, c := range notNullColumns {
		add = append(add, "ADD COLUMN "+c.name+" "+c.sqlType)
	}
	return strings.Join(add, ", ")
}

// notNullNames and notNullValues return the names and values of
// notNullColumns for an insert.
func notNullNames() string {
	var s []string
	for _, c := range notNullColumns {
		s = append(s, c.name)
	}
	return strings.Join(s, ", ")
}

func notNullValues() string {
	var s []string
	for _, c := range notNullColumns {
		s = append(s, c.value)
	}
	return strings.Join(s, ", ")
}
