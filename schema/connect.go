package schema

import (
	"bytes"
	"strconv"
	"sync/atomic"
)

// Kafka Connect's JsonConverter with schemas.enable=true (its default)
// writes every key and value as {"schema": <Connect schema>, "payload":
// <the value>}. A reader configured for it (cdc.Config.Schemas) writes its
// events so: the payload is the plain envelope or key struct, byte for byte
// as without schemas, and the schema is the one Debezium's Postgres
// connector 3.x declares for it. The JSON Schema of Envelope
// (EnvelopeJSONSchema) describes the payload. Every jobstream reader of the
// topics (DecodeTrigger, DecodeEnvelope, JobIDFromKey) reads both forms.
//
// The parts of the schema that do not depend on the table are here; the
// column schemas are rendered by the reader, beside the values they
// describe (cdc/connect.go).

// ConnectEnvelopeVersion is the version of the envelope struct's schema
// (Debezium ≥ 2.x: debezium-core/src/main/java/io/debezium/schema/SchemaFactory.java,
// datatypeEnvelopeSchema, .version(Envelope.SCHEMA_VERSION)).
const ConnectEnvelopeVersion = 2

// connectSource is the Connect schema of the source block as a field of the
// envelope: debezium-core/src/main/java/io/debezium/schema/SchemaFactory.java
// (sourceInfoSchemaBuilder: schema version 1 (SOURCE_INFO_DEFAULT_SCHEMA_VERSION,
// in the events of Debezium 3.1 on); version, connector, name, ts_ms, snapshot as
// io.debezium.data.Enum of SnapshotRecord's values, db, sequence, ts_us,
// ts_ns) and
// debezium-connector-postgres/src/main/java/io/debezium/connector/postgresql/PostgresSourceInfoStructMaker.java
// (name io.debezium.connector.postgresql.Source; schema, table, txId, lsn,
// xmin), then origin and origin_lsn (optional, ≥ 3.5), which the envelope
// carries too.
const connectSource = `{"type":"struct","fields":[` +
	`{"type":"string","optional":false,"field":"version"},` +
	`{"type":"string","optional":false,"field":"connector"},` +
	`{"type":"string","optional":false,"field":"name"},` +
	`{"type":"int64","optional":false,"field":"ts_ms"},` +
	`{"type":"string","optional":true,"name":"io.debezium.data.Enum","version":1,"parameters":{"allowed":"true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"},"default":"false","field":"snapshot"},` +
	`{"type":"string","optional":false,"field":"db"},` +
	`{"type":"string","optional":true,"field":"sequence"},` +
	`{"type":"int64","optional":true,"field":"ts_us"},` +
	`{"type":"int64","optional":true,"field":"ts_ns"},` +
	`{"type":"string","optional":false,"field":"schema"},` +
	`{"type":"string","optional":false,"field":"table"},` +
	`{"type":"int64","optional":true,"field":"txId"},` +
	`{"type":"int64","optional":true,"field":"lsn"},` +
	`{"type":"int64","optional":true,"field":"xmin"},` +
	`{"type":"string","optional":true,"field":"origin"},` +
	`{"type":"int64","optional":true,"field":"origin_lsn"}` +
	`],"optional":false,"name":"io.debezium.connector.postgresql.Source","version":1,"field":"source"}`

// connectTransaction is the Connect schema of the envelope's transaction
// block: SchemaFactory.transactionBlockSchema (name event.block, version 1).
const connectTransaction = `{"type":"struct","fields":[` +
	`{"type":"string","optional":false,"field":"id"},` +
	`{"type":"int64","optional":false,"field":"total_order"},` +
	`{"type":"int64","optional":false,"field":"data_collection_order"}` +
	`],"optional":true,"name":"event.block","version":1,"field":"transaction"}`

// connectTail is the rest of the envelope's fields, in Debezium's order
// (SchemaFactory.datatypeEnvelopeSchema: op, ts_ms, ts_us, ts_ns).
const connectTail = `{"type":"string","optional":false,"field":"op"},` +
	`{"type":"int64","optional":true,"field":"ts_ms"},` +
	`{"type":"int64","optional":true,"field":"ts_us"},` +
	`{"type":"int64","optional":true,"field":"ts_ns"}`

// ConnectName returns the name Debezium gives the struct kind (Key, Value
// or Envelope) of the events of table schema.table under the topic prefix
// (topic.prefix): <prefix>.<schema>.<table>.<kind>, as
// debezium-core/src/main/java/io/debezium/relational/TableSchemaBuilder.java
// and Envelope.schemaName build it (schema.name.adjustment.mode none, the
// default since Debezium 2.0).
func ConnectName(prefix, schema, table, kind string) string {
	return prefix + "." + schema + "." + table + "." + kind
}

// AppendConnectEnvelopeSchema appends the Connect schema of the envelope of
// the events of table schema.table under prefix, whose rows are the
// Value struct of fields (each a Connect field schema, comma-separated, in
// column order). The fields are in Debezium's order (before, after,
// source, transaction, op, ts_ms, ts_us, ts_ns); JsonConverter, and every
// reader of the form, finds the payload's members by name.
func AppendConnectEnvelopeSchema(b []byte, prefix, schema, table string, fields []byte) []byte {
	value := ConnectName(prefix, schema, table, "Value")
	b = append(b, `{"type":"struct","fields":[`...)
	for _, f := range []string{"before", "after"} {
		b = append(b, `{"type":"struct","fields":[`...)
		b = append(b, fields...)
		b = append(b, `],"optional":true,"name":`...)
		b = AppendQuoted(b, value)
		b = append(b, `,"field":"`...)
		b = append(b, f...)
		b = append(b, `"},`...)
	}
	b = append(b, connectSource...)
	b = append(b, ',')
	b = append(b, connectTransaction...)
	b = append(b, ',')
	b = append(b, connectTail...)
	b = append(b, `],"optional":false,"name":`...)
	b = AppendQuoted(b, ConnectName(prefix, schema, table, "Envelope"))
	b = append(b, `,"version":`...)
	b = strconv.AppendInt(b, ConnectEnvelopeVersion, 10)
	return append(b, '}')
}

// AppendConnectKeySchema appends the Connect schema of the key struct of
// the events of table schema.table under prefix, whose one field is
// jobID (a Connect field schema): TableSchemaBuilder's key schema, named
// <prefix>.<schema>.<table>.Key, not optional, no version.
func AppendConnectKeySchema(b []byte, prefix, schema, table string, jobID []byte) []byte {
	b = append(b, `{"type":"struct","fields":[`...)
	b = append(b, jobID...)
	b = append(b, `],"optional":false,"name":`...)
	b = AppendQuoted(b, ConnectName(prefix, schema, table, "Key"))
	return append(b, '}')
}

// ConnectOpen and ConnectClose wrap a payload and its schema into
// JsonConverter's form: ConnectOpen, the schema, ConnectPayload, the
// payload, ConnectClose.
const (
	ConnectOpen    = `{"schema":`
	ConnectPayload = `,"payload":`
	ConnectClose   = `}`
)

// ConnectWrap returns {"schema":schema,"payload":payload}.
func ConnectWrap(schema, payload []byte) []byte {
	b := make([]byte, 0, len(ConnectOpen)+len(schema)+len(ConnectPayload)+len(payload)+1)
	b = append(b, ConnectOpen...)
	b = append(b, schema...)
	b = append(b, ConnectPayload...)
	b = append(b, payload...)
	return append(b, ConnectClose...)
}

// Unwrap returns the payload of a value in JsonConverter's schema/payload
// form: a JSON object whose members are "schema" and "payload", once each,
// in either order, names without escapes. Anything else (a plain envelope
// or key, invalid JSON) is returned as it is, with ok false. A plain value
// costs a look at its first member's name.
func Unwrap(b []byte) (payload []byte, ok bool) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return b, false
	}
	j := skipSpace(b, i+1)
	if !hasLiteral(b, j, `"schema"`) && !hasLiteral(b, j, `"payload"`) {
		return b, false
	}
	var seenSchema, seenPayload bool
	var p []byte
	end, ok := object(b, i, func(key []byte, i int) (int, bool) {
		var seen *bool
		switch string(key) {
		case "schema":
			seen = &seenSchema
		case "payload":
			seen = &seenPayload
		default:
			return i, false
		}
		if !first(seen) {
			return i, false
		}
		if seen == &seenSchema {
			return skipSchema(b, i)
		}
		next, ok := skipValue(b, i, 0)
		if ok {
			p = b[i:next]
		}
		return next, ok
	})
	if !ok || !seenSchema || !seenPayload || skipSpace(b, end) != len(b) {
		return b, false
	}
	return p, true
}

// lastSchema is the last schema skipSchema found valid: the events of a
// topic repeat their table's schema, which is then compared, not parsed.
var lastSchema atomic.Pointer[[]byte]

// skipSchema is skipValue for the schema of a schema/payload value: a
// value equal to the last one checked is known valid.
func skipSchema(b []byte, i int) (int, bool) {
	if last := lastSchema.Load(); last != nil && bytes.HasPrefix(b[i:], *last) {
		return i + len(*last), true
	}
	next, ok := skipValue(b, i, 0)
	if ok && next-i > 64 && b[i] == '{' { // an object ends where it ends: no longer value starts with it
		v := bytes.Clone(b[i:next])
		lastSchema.Store(&v)
	}
	return next, ok
}
