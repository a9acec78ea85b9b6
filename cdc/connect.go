package cdc

import (
	"context"
	"fmt"
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

// connectRel is the Connect form of one relation's events, rendered once
// per relation message: what goes before an envelope and before a key
// struct ({"schema":<schema>,"payload":); schema.ConnectClose follows each.
type connectRel struct {
	rel        *pglogrepl.RelationMessage
	value, key []byte
}

// newConnectRel renders the schemas of rel's events under prefix; facts
// (nil: unknown, every column optional) come from lookupColumns.
func newConnectRel(prefix string, rel *pglogrepl.RelationMessage, facts map[string]colFacts) *connectRel {
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
	return &connectRel{rel: rel, value: append(value, schema.ConnectPayload...), key: append(key, schema.ConnectPayload...)}
}

// appendConnectField appends the Connect schema of a column as a field of
// a struct, as JsonConverter writes it: type (and items or fields),
// optional, name, version, doc, parameters, default, field.
func appendConnectField(b []byte, name string, oid uint32, typmod int32, f colFacts, optional bool) []byte {
	b = append(b, '{')
	b = appendConnectType(b, oid, typmod, f.enum, optional)
	if v, ok := columnDefault(oid, f.def); ok {
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

// describe renders the Connect form of rel's events (facts from
// lookupColumns) and keeps it for the changes that follow, replacing
// the form of an earlier message of the same relation.
func (rt *router) describe(rel *pglogrepl.RelationMessage, facts map[string]colFacts) *connectRel {
	if rel.RelationID != 0 {
		for r := range rt.connect {
			if r.RelationID == rel.RelationID && r != rel {
				delete(rt.connect, r)
			}
		}
	}
	cr := newConnectRel(rt.topics.Prefix, rel, facts)
	rt.connect[rel] = cr
	rt.lastConnect = cr
	return cr
}

// connectOf returns the Connect form of rel's events: the one describe
// rendered, or one without the catalog's facts (every column optional) for
// a relation never described.
func (rt *router) connectOf(rel *pglogrepl.RelationMessage) *connectRel {
	if cr := rt.lastConnect; cr != nil && cr.rel == rel {
		return cr
	}
	if cr, ok := rt.connect[rel]; ok {
		rt.lastConnect = cr
		return cr
	}
	return rt.describe(rel, nil)
}

// columnDefault returns the text of the default a column of type oid with
// DEFAULT expression def has, as Debezium parses it
// (debezium-connector-postgres/src/main/java/io/debezium/connector/postgresql/connection/PostgresDefaultValueConverter.java):
// for the types it has a mapper for, the expression itself ("123") or the
// first quoted part of a cast ("'pending'::text"), int4 and numeric only
// bare; nothing for an expression it cannot parse (now(), nextval(...)),
// nor for the types it has no mapper for. appendValue renders the text as
// the column's values are rendered.
func columnDefault(oid uint32, def string) (string, bool) {
	if def == "" {
		return "", false
	}
	extract := func() string { // PostgresDefaultValueConverter.extractDefault
		i := strings.IndexByte(def, '\'')
		if i < 0 {
			return def
		}
		j := strings.IndexByte(def[i+1:], '\'')
		if j < 0 {
			return ""
		}
		return def[i+1 : i+1+j]
	}
	switch oid {
	case oidBool: // Boolean.parseBoolean: "true" in any case, else false
		if strings.EqualFold(extract(), "true") {
			return "t", true
		}
		return "f", true
	case 25, 1042, 1043, oidJSON, oidJSONB, oidXML: // text, bpchar, varchar, json, jsonb, xml
		return extract(), true
	case oidInt2, oidInt8:
		v := extract()
		if _, err := strconv.ParseInt(v, 10, 64); err != nil {
			return "", false
		}
		return v, true
	case oidInt4: // Integer.parseInt of the expression itself
		if _, err := strconv.ParseInt(def, 10, 32); err != nil {
			return "", false
		}
		return def, true
	case oidFloat4, oidFloat8:
		v := extract()
		if _, err := strconv.ParseFloat(v, 64); err != nil || !isJSONNumber([]byte(v)) {
			return "", false
		}
		return v, true
	case oidNumeric: // new BigDecimal of the expression itself
		if !isJSONNumber([]byte(def)) {
			return "", false
		}
		return def, true
	}
	return "", false
}
