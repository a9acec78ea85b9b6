package cdc

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"

	"github.com/jobstream/jobstream/schema"
)

// Kafka Connect's schema/payload form (Config.Schemas): each key and value
// is {"schema": <Connect schema>, "payload": <the plain form>}, the schema
// being what Debezium's Postgres connector 3.x declares with its defaults
// (decimal.handling.mode precise, time.precision.mode adaptive,
// interval.handling.mode numeric, binary.handling.mode bytes). The column
// schemas follow
// debezium-connector-postgres/src/main/java/io/debezium/connector/postgresql/PostgresValueConverter.java
// (schemaBuilder, and for the standard types its base class
// debezium-core/src/main/java/io/debezium/jdbc/JdbcValueConverters.java),
// each one describing the value appendValue writes for the type: a type
// whose plain value is a string here (money, bit, point, time[] ... , see
// types.go) is declared a string, so that schema and payload agree. A
// numeric is the same base64 bytes in both forms: JsonConverter writes a
// Decimal (or VariableScaleDecimal's value) as its unscaled bytes whether
// schemas are on or off; the schema's scale parameter reads them.
// A column is optional unless it is NOT NULL (TableSchemaBuilder.addField:
// column.isOptional()), and declares the default Debezium parses from its
// DEFAULT clause (columnDefault), neither of which the relation message
// says: the reader asks the catalog once per relation message
// (lookupColumns).

// Type OIDs declared with a logical type of their own, rendered as strings.
const (
	oidUUID = 2950
	oidXML  = 142
)

// colFacts is what the catalog says of a column that a relation message
// does not.
type colFacts struct {
	notNull bool
	// enum is the labels of an enum column's type, comma-separated in sort
	// order (io.debezium.data.Enum's "allowed"); "" for other types.
	enum string
	// def is the column's DEFAULT expression as pg_get_expr writes it ("":
	// none, or a generated column).
	def string
}

// lookupColumns reads the facts of the columns of table schemaName.table
// from the catalog, by column name.
func lookupColumns(ctx context.Context, q querier, schemaName, table string) (map[string]colFacts, error) {
	rows, err := q.Query(ctx, `SELECT a.attname, a.attnotnull,
		coalesce((SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = a.atttypid), ''),
		coalesce((SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.attgenerated = ''), '')
		FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped`, schemaName, table)
	if err != nil {
		return nil, fmt.Errorf("look up the columns of %s.%s: %w", schemaName, table, err)
	}
	defer rows.Close()
	facts := map[string]colFacts{}
	for rows.Next() {
		var name string
		var f colFacts
		if err := rows.Scan(&name, &f.notNull, &f.enum, &f.def); err != nil {
			return nil, fmt.Errorf("look up the columns of %s.%s: %w", schemaName, table, err)
		}
		facts[name] = f
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("look up the columns of %s.%s: %w", schemaName, table, err)
	}
	return facts, nil
}

// relForm is how one relation's events are rendered, worked out once per
// relation message: value and key are what goes before an envelope and
// before a key struct in the Connect form ({"schema":<schema>,"payload":;
// schema.ConnectClose follows each), nil without Schemas; absent holds, by
// column position, what Debezium writes for a NOT NULL column a tuple
// leaves null (absentValue), nil for the other columns, in both forms.
type relForm struct {
	rel        *pglogrepl.RelationMessage
	value, key []byte
	absent     [][]byte
	// missing names the columns jobstream routes by (job_id,
	// current_step) that rel lacks, or is "".
	missing string
}

// newRelForm renders the form of rel's events under prefix, the Connect
// schemas only when schemas is set; facts (nil: unknown, every column
// optional) come from lookupColumns.
func newRelForm(prefix string, rel *pglogrepl.RelationMessage, facts map[string]colFacts, schemas bool) *relForm {
	rf := &relForm{rel: rel, missing: missingColumns(rel)}
	for i, c := range rel.Columns {
		if v := absentValue(c.DataType, c.TypeModifier, facts[c.Name]); v != nil {
			if rf.absent == nil {
				rf.absent = make([][]byte, len(rel.Columns))
			}
			rf.absent[i] = v
		}
	}
	if !schemas {
		return rf
	}
	var fields []byte
	keyField := []byte(schema.ConnectJobIDString)
	for i, c := range rel.Columns {
		if i > 0 {
			fields = append(fields, ',')
		}
		f := facts[c.Name]
		fields = appendConnectField(fields, c.Name, c.DataType, c.TypeModifier, f, !f.notNull)
		if c.Name == "job_id" {
			keyField = appendConnectField(nil, c.Name, c.DataType, c.TypeModifier, colFacts{enum: f.enum}, false)
		}
	}
	value := append([]byte(schema.ConnectOpen), schema.AppendConnectEnvelopeSchema(nil, prefix, rel.Namespace, rel.RelationName, fields)...)
	key := append([]byte(schema.ConnectOpen), schema.AppendConnectKeySchema(nil, prefix, rel.Namespace, rel.RelationName, keyField)...)
	rf.value, rf.key = append(value, schema.ConnectPayload...), append(key, schema.ConnectPayload...)
	return rf
}

// missingColumns names the columns jobstream routes by (job_id, the key;
// current_step, the topic) that rel does not have, or returns "": a table
// whose column was renamed or dropped sends every change to the dead
// letters until it has it again.
func missingColumns(rel *pglogrepl.RelationMessage) string {
	var missing []string
	for _, name := range []string{"job_id", "current_step"} {
		if !slices.ContainsFunc(rel.Columns, func(c *pglogrepl.RelationMessageColumn) bool { return c.Name == name }) {
			missing = append(missing, name)
		}
	}
	return strings.Join(missing, " and ")
}

// absentValue returns what Debezium 3.x writes for a null value in a column
// of type oid with the catalog's facts f, rendered as appendValue renders
// the column's values; nil (null) for a nullable column. Postgres sends
// null for every column but the key's in the old tuple of a delete under
// the default replica identity (and of an update that changes the key),
// and Debezium runs each through the column's converter:
// debezium-core/src/main/java/io/debezium/jdbc/JdbcValueConverters.java's
// convertValue gives null only to an optional column, else the schema's
// default (the column's DEFAULT as columnDefault parses it), else the
// converter's fallback, which is each case's value below.
func absentValue(oid uint32, typmod int32, f colFacts) []byte {
	if !f.notNull {
		return nil
	}
	if v, ok := columnDefault(oid, f.def, f.enum != ""); ok && (oid != oidNumeric || typmod >= 4) {
		return appendValue(nil, oid, typmod, []byte(v))
	}
	switch oid {
	case oidBool: // JdbcValueConverters.convertBoolean: false
		return []byte("false")
	case oidInt2, oidInt4, oidInt8, oidOID: // convertSmallInt (SHORT_FALSE), convertInteger (0), convertBigInt (0L; PostgresValueConverter's OID too)
		return []byte("0")
	case oidFloat4, oidFloat8: // convertReal (0.0f), convertDouble (0.0d), which JsonConverter writes as 0.0
		return []byte("0.0")
	case oidNumeric:
		// debezium-connector-postgres/src/main/java/io/debezium/connector/postgresql/PostgresValueConverter.java,
		// convertDecimal: toBigDecimal's fallback BigDecimal.ZERO at the
		// column's scale, the unscaled bytes of 0 ("AA=="), in a
		// VariableScaleDecimal of scale 0 without a declared scale.
		return appendValue(nil, oid, typmod, []byte("0"))
	case oidDate, oidTime, oidTimestamp, oidInterval:
		// convertDateToEpochDays (0), convertTimeToMillis/Micros/NanosPastMidnight
		// (0), convertTimestampToEpochMillis/Micros/Nanos (0L, PostgresValueConverter's
		// timestamp converter hands null on to them), and PostgresValueConverter.convertInterval
		// (NumberConversions.LONG_FALSE in interval.handling.mode numeric): the epoch.
		return []byte("0")
	case oidTimestamptz:
		// fallbackTimestampWithTimeZone: the epoch as
		// debezium-core/src/main/java/io/debezium/time/ZonedTimestamp.java
		// formats an OffsetDateTime, ISO_OFFSET_DATE_TIME, so without the six
		// fraction digits its values have.
		return []byte(`"1970-01-01T00:00:00Z"`)
	case oidTimetz: // fallbackTimeWithTimeZone: midnight UTC by ZonedTime's ISO_OFFSET_TIME
		return []byte(`"00:00:00Z"`)
	case oidBytea: // convertBinaryToBytes: NumberConversions.BYTE_ZERO, no bytes
		return []byte(`""`)
	}
	if oid >= minArrayOID && arrayElem(oid) != 0 { // PostgresValueConverter.convertArray: Collections.emptyList()
		return []byte("[]")
	}
	// convertString's "" (text, varchar, bpchar, json, jsonb, uuid, xml,
	// inet, ranges, enums: PostgresValueConverter hands them all to it);
	// also the types rendered as strings here where Debezium converts them
	// otherwise (money, bit, point, time[], ...: see types.go), as the
	// string their schema declares.
	return []byte(`""`)
}

// appendConnectField appends the Connect schema of a column as a field of
// a struct, as JsonConverter writes it: type (and items or fields),
// optional, name, version, doc, parameters, default, field.
func appendConnectField(b []byte, name string, oid uint32, typmod int32, f colFacts, optional bool) []byte {
	b = append(b, '{')
	b = appendConnectType(b, oid, typmod, f.enum, optional)
	if v, ok := columnDefault(oid, f.def, f.enum != ""); ok && (oid != oidNumeric || typmod >= 4) {
		b = append(b, `,"default":`...)
		b = appendValue(b, oid, typmod, []byte(v))
	}
	b = append(b, `,"field":`...)
	b = schema.AppendQuoted(b, name)
	return append(b, '}')
}

// appendConnectType appends the members of the Connect schema of a value
// of type oid as appendValue renders it (see the comment at the top).
func appendConnectType(b []byte, oid uint32, typmod int32, enum string, optional bool) []byte {
	typ, logical, version := "string", "", true
	var params, doc string
	switch oid {
	case oidBool:
		typ = "boolean"
	case oidInt2:
		typ = "int16"
	case oidInt4:
		typ = "int32"
	case oidInt8, oidOID:
		typ = "int64"
	case oidFloat4:
		typ = "float"
	case oidFloat8:
		typ = "double"
	case oidNumeric:
		if typmod < 4 {
			// io.debezium.data.VariableScaleDecimal (SchemaFactory.datatypeVariableScaleDecimalSchema).
			b = append(b, `"type":"struct","fields":[{"type":"int32","optional":false,"field":"scale"},{"type":"bytes","optional":false,"field":"value"}]`...)
			return appendConnectTail(b, optional, "io.debezium.data.VariableScaleDecimal", true, "Variable scaled decimal", "")
		}
		// org.apache.kafka.connect.data.Decimal with Debezium's precision
		// parameter (SpecialValueDecimal.builder, precise mode).
		t := typmod - 4
		typ, logical = "bytes", "org.apache.kafka.connect.data.Decimal"
		params = `{"scale":"` + strconv.Itoa(int(t&0xffff)) + `","connect.decimal.precision":"` + strconv.Itoa(int(t>>16&0xffff)) + `"}`
	case oidTimestamptz:
		logical = "io.debezium.time.ZonedTimestamp"
	case oidTimestamp:
		typ, logical = "int64", "io.debezium.time.MicroTimestamp"
		if typmod >= 0 && typmod <= 3 {
			logical = "io.debezium.time.Timestamp"
		}
	case oidDate:
		typ, logical = "int32", "io.debezium.time.Date"
	case oidBytea:
		typ = "bytes"
	case oidJSON, oidJSONB:
		logical = "io.debezium.data.Json"
	case oidTime:
		switch prec := typmod; {
		case prec >= 0 && prec <= 3:
			typ, logical = "int32", "io.debezium.time.Time"
		case prec <= 6:
			typ, logical = "int64", "io.debezium.time.MicroTime"
		default:
			typ, logical = "int64", "io.debezium.time.NanoTime"
		}
	case oidTimetz:
		logical = "io.debezium.time.ZonedTime"
	case oidInterval:
		typ, logical = "int64", "io.debezium.time.MicroDuration"
	case oidUUID:
		logical = "io.debezium.data.Uuid"
	case oidXML:
		logical = "io.debezium.data.Xml"
	default:
		if elem := arrayElem(oid); oid >= minArrayOID && elem != 0 {
			// The elements are optional (PostgresValueConverter's array cases).
			b = append(b, `"type":"array","items":{`...)
			b = appendConnectType(b, elem, typmod, "", true)
			b = append(b, '}')
			return appendConnectTail(b, optional, "", false, "", "")
		}
		if enum != "" {
			logical = "io.debezium.data.Enum"
			params = `{"allowed":` + string(schema.AppendQuoted(nil, enum)) + `}`
		}
	}
	b = append(b, `"type":"`...)
	b = append(b, typ...)
	b = append(b, '"')
	return appendConnectTail(b, optional, logical, version && logical != "", doc, params)
}

// appendConnectTail appends optional and, for a logical type, its name,
// version 1, doc and parameters (a JSON object).
func appendConnectTail(b []byte, optional bool, logical string, version bool, doc, params string) []byte {
	b = append(b, `,"optional":`...)
	b = strconv.AppendBool(b, optional)
	if logical != "" {
		b = append(b, `,"name":"`...)
		b = append(b, logical...)
		b = append(b, '"')
	}
	if version {
		b = append(b, `,"version":1`...)
	}
	if doc != "" {
		b = append(b, `,"doc":`...)
		b = schema.AppendQuoted(b, doc)
	}
	if params != "" {
		b = append(b, `,"parameters":`...)
		b = append(b, params...)
	}
	return b
}

// describe works out the form of rel's events (facts from lookupColumns)
// and keeps it for the changes that follow, replacing the form of an
// earlier message of the same relation.
func (rt *router) describe(rel *pglogrepl.RelationMessage, facts map[string]colFacts) *relForm {
	if rel.RelationID != 0 {
		for r := range rt.forms {
			if r.RelationID == rel.RelationID && r != rel {
				delete(rt.forms, r)
			}
		}
	}
	rf := newRelForm(rt.topics.Prefix, rel, facts, rt.schemas)
	rt.forms[rel] = rf
	rt.lastForm = rf
	return rf
}

// formOf returns the form of rel's events: the one describe worked out, or
// one without the catalog's facts (every column optional) for a relation
// never described.
func (rt *router) formOf(rel *pglogrepl.RelationMessage) *relForm {
	if rf := rt.lastForm; rf != nil && rf.rel == rel {
		return rf
	}
	if rf, ok := rt.forms[rel]; ok {
		rt.lastForm = rf
		return rf
	}
	return rt.describe(rel, nil)
}

// columnDefault returns the text of the default a column of type oid with
// DEFAULT expression def has, as Debezium 3.x parses it
// (debezium-connector-postgres/src/main/java/io/debezium/connector/postgresql/connection/PostgresDefaultValueConverter.java,
// its tests in connection/PostgresDefaultValueConverterIT.java), for
// appendValue to render as the column's values: for the types it has a
// mapper for, the expression itself ("123", trimmed for the numeric and
// temporal types) or the first quoted part of a cast ("'pending'::text");
// for a function call (now(), nextval(...), gen_random_uuid()) or
// current_date and the like, the type's placeholder (extractDefault's
// generatedValuePlaceholder: 0, false, "", "{}", the epoch, the zero UUID);
// nothing for NULL::..., for a value the mapper cannot parse, for a numeric
// without a declared scale (a VariableScaleDecimal struct, which Debezium
// drops as a default: KAFKA-12694), nor for the types it has no mapper for
// (bytea, arrays, and the types rendered as strings here but bit).
func columnDefault(oid uint32, def string, enum bool) (string, bool) {
	if def == "" || strings.HasPrefix(def, "NULL::") {
		return "", false
	}
	switch oid {
	case oidBool, oidNumeric, oidFloat4, oidFloat8, oidInt2, oidInt4, oidInt8, oidUUID, oidDate, oidTime, oidTimestamp, oidTimestamptz, oidInterval:
		def = strings.TrimSpace(def) // TRIM_DATA_TYPES
	}
	generated := defaultFunction.MatchString(def) || currentDateTimes[strings.ToLower(def)]
	extract := func(placeholder string) (string, bool) { // extractDefault(v, generatedValuePlaceholder)
		switch {
		case generated:
			return placeholder, true
		case !strings.Contains(def, "'"):
			return def, true
		}
		m := defaultLiteral.FindStringSubmatch(def)
		if m == nil {
			return "", false // the matcher finds nothing: an exception, no default
		}
		return m[1], true
	}
	v, ok := "", false
	switch oid {
	case oidBool: // Boolean.parseBoolean: "true" in any case, else false
		if v, ok = extract("false"); ok {
			v = map[bool]string{true: "t", false: "f"}[strings.EqualFold(v, "true")]
		}
		return v, ok
	case 25, 1042, 1043, oidXML: // text, bpchar, varchar, xml
		return extract("")
	case oidJSON, oidJSONB:
		return extract("{}")
	case oidInt2, oidInt4, oidInt8:
		if v, ok = extract("0"); !ok {
			return "", false
		}
		bits := map[uint32]int{oidInt2: 16, oidInt4: 32, oidInt8: 64}[oid]
		_, err := strconv.ParseInt(v, 10, bits)
		return v, err == nil
	case oidFloat4, oidFloat8:
		if v, ok = extract("0.0"); !ok {
			return "", false
		}
		_, err := strconv.ParseFloat(v, 64)
		return v, err == nil && isJSONNumber([]byte(v))
	case oidNumeric:
		if v, ok = extract("0.0"); !ok || !isJSONNumber([]byte(v)) {
			return "", false
		}
		return v, ok
	case oidUUID: // UUID.fromString, rendered by UUID.toString
		if v, ok = extract("00000000-0000-0000-0000-000000000000"); !ok || len(v) != 36 {
			return "", false
		}
		return strings.ToLower(v), true
	case oidDate, oidTime, oidInterval, oidTimestamp, oidTimestamptz:
		return temporalDefault(oid, generated, extract)
	}
	if enum && !generated { // extractEnumDefault: 'label'::type
		if i := strings.LastIndex(def, "'::"); strings.HasPrefix(def, "'") && i > 0 {
			return def[1:i], true
		}
	}
	return "", false
}

// temporalDefault is columnDefault for the date and time types: the
// placeholder of a generated value, or the literal.
func temporalDefault(oid uint32, generated bool, extract func(placeholder string) (string, bool)) (string, bool) {
	switch oid {
	case oidDate:
		return extract("1970-01-01")
	case oidTime: // toLocalTime(extractDefault(v, "00:00"))
		if generated {
			return "00:00:00", true
		}
		return extract("")
	case oidInterval: // new PGInterval(extractDefault(v, "epoch")), which a literal only parses
		if generated {
			return "", false
		}
		return extract("")
	case oidTimestamp:
		if generated {
			return "1970-01-01 00:00:00", true
		}
		return extract("")
	case oidTimestamptz:
		if generated {
			return "1970-01-01 00:00:00+00", true
		}
		return extract("")
	}
	return "", false
}

// defaultFunction and currentDateTimes are the DEFAULT expressions
// PostgresDefaultValueConverter takes for generated values
// (FUNCTION_DEFAULT_PATTERN, CURRENT_DATE_TIMES); defaultLiteral is its
// LITERAL_DEFAULT_PATTERN.
var (
	defaultFunction  = regexp.MustCompile(`^[(]?[A-Za-z0-9_.]+\((?:.+(?:, ?.+)*)?\)`)
	currentDateTimes = map[string]bool{"current_timestamp": true, "current_time": true, "current_date": true, "localtime": true, "localtimestamp": true}
	defaultLiteral   = regexp.MustCompile(`'(.*?)'`)
)
