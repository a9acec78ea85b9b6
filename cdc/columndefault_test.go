package cdc

import "testing"

// TestColumnDefault: the defaults Debezium 3.x's PostgresDefaultValueConverter
// parses from pg_get_expr's text
// (debezium-connector-postgres/src/main/java/io/debezium/connector/postgresql/connection/PostgresDefaultValueConverter.java),
// rendered as the column's values.
func TestColumnDefault(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		oid      uint32
		typmod   int32
		def      string
		enum     bool
		debezium string // "" for none
	}{
		{oidBool, -1, "true", false, "true"},
		{oidBool, -1, "NULL::boolean", false, ""},
		{25, -1, "'pending'::text", false, `"pending"`},
		{25, -1, "NULL::text", false, ""},
		{oidJSONB, -1, "'{}'::jsonb", false, `"{}"`},
		{oidJSONB, -1, "jsonb_build_object()", false, `"{}"`}, // a function: the placeholder
		{oidInt4, -1, "42", false, "42"},
		{oidInt4, -1, "'42'::integer", false, "42"},
		{oidInt4, -1, "nextval('t_id_seq'::regclass)", false, "0"},
		{oidInt8, -1, "nextval('t_id_seq'::regclass)", false, "0"},
		{oidInt2, -1, "70000", false, ""},
		{oidFloat8, -1, "2.5", false, "2.5"},
		{oidFloat8, -1, "random()", false, "0.0"},
		{oidNumeric, 10<<16 | 2 + 4, "1.5", false, `"AJY="`},
		{oidNumeric, -1, "1.5", false, ""}, // a VariableScaleDecimal struct: dropped
		{oidUUID, -1, "gen_random_uuid()", false, `"00000000-0000-0000-0000-000000000000"`},
		{oidDate, -1, "CURRENT_DATE", false, "0"},
		{oidDate, -1, "'1970-01-02'::date", false, "1"},
		{oidTimestamptz, -1, "now()", false, `"1970-01-01T00:00:00.000000Z"`},
		{oidTimestamptz, -1, "CURRENT_TIMESTAMP", false, `"1970-01-01T00:00:00.000000Z"`},
		{oidTimestamp, -1, "now()", false, "0"},
		{oidTime, -1, "LOCALTIME", false, "0"},
		{2000000, -1, "'ok'::mood", true, `"ok"`},
		{oidBytea, -1, `'\x01'::bytea`, false, ""},
	} {
		got := ""
		if v, ok := columnDefault(c.oid, c.def, c.enum); ok && (c.oid != oidNumeric || c.typmod >= 4) {
			got = string(appendValue(nil, c.oid, c.typmod, []byte(v)))
		}
		if got != c.debezium {
			t.Errorf("type %d DEFAULT %s: ours %s, Debezium's %s", c.oid, c.def, got, c.debezium)
		}
	}
}
