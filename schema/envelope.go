package schema

import (
	_ "embed"
	"encoding/json"
)

// Version is written into every event's source.version.
const Version = "jobstream-0.1.0"

// Ops of the change-event envelope, as Debezium writes them.
const (
	OpCreate   = "c"
	OpUpdate   = "u"
	OpDelete   = "d"
	OpRead     = "r" // snapshot read
	OpTruncate = "t"
)

// Headers of the change events of an update that changed a row's job_id,
// which is routed as Debezium routes a primary-key update: a delete of the
// old key (and its tombstone), then a create of the new.
const (
	// HeaderNewKey, on the delete and tombstone of the old key, holds the
	// new key.
	HeaderNewKey = "__debezium.newkey"
	// HeaderOldKey, on the create of the new key, holds the old key.
	HeaderOldKey = "__debezium.oldkey"
)

// Envelope is the value of every change event: Debezium's Postgres connector
// envelope with schemas off, so a consumer written for Debezium reads it
// unchanged. Before and After map column names to values rendered as
// Debezium renders them (jsonb as a JSON string, timestamptz as an ISO-8601
// string, integers as numbers).
type Envelope struct {
	Before      map[string]any `json:"before"`
	After       map[string]any `json:"after"`
	Source      Source         `json:"source"`
	Op          string         `json:"op"`
	TsMs        int64          `json:"ts_ms"`
	TsUs        int64          `json:"ts_us"`
	TsNs        int64          `json:"ts_ns"`
	Transaction *struct{}      `json:"transaction"`
}

// Source is the envelope's source block: where and when the change happened.
type Source struct {
	Version   string `json:"version"`
	Connector string `json:"connector"`
	Name      string `json:"name"`
	TsMs      int64  `json:"ts_ms"`
	// Snapshot is "false" for a streamed change; in the initial snapshot
	// (op "r") "first" for its first row, "last" for its last, "true" between.
	Snapshot string `json:"snapshot"`
	DB       string `json:"db"`
	// Sequence is a JSON array, as Debezium writes it: the LSN of the last
	// commit before this event's transaction (null when the reader has not
	// seen one yet, and in a snapshot) and this event's LSN, both as strings.
	Sequence string `json:"sequence"`
	// TsUs and TsNs are TsMs in µs and ns (Debezium ≥ 2.6).
	TsUs   int64  `json:"ts_us"`
	TsNs   int64  `json:"ts_ns"`
	Schema string `json:"schema"`
	Table  string `json:"table"`
	TxID   int64  `json:"txId"`
	LSN    int64  `json:"lsn"`
	Xmin   *int64 `json:"xmin"`
	// Origin and OriginLSN (Debezium ≥ 3.5) name the replication origin of
	// a change replicated into this database; null for the jobs table's
	// own writes, the only ones jobstream streams.
	Origin    *string `json:"origin"`
	OriginLSN *int64  `json:"origin_lsn"`
}

// EnvelopeJSONSchema is the JSON Schema (draft 2020-12) of Envelope.
//
//go:embed envelope.schema.json
var EnvelopeJSONSchema []byte

// JobRow is the part of a jobs row a worker needs, read from an envelope's
// before or after.
type JobRow struct {
	JobID       string
	CurrentStep string
	Status      string
}

// Row extracts job_id, current_step and status from a rendered row; ok is
// false when the row is null or lacks job_id.
func Row(m map[string]any) (r JobRow, ok bool) {
	if m == nil {
		return r, false
	}
	id, ok := m["job_id"].(string)
	if !ok {
		return r, false
	}
	r.JobID = id
	r.CurrentStep, _ = m["current_step"].(string)
	r.Status, _ = m["status"].(string)
	return r, true
}

// DecodeEnvelope parses an event value, plain or in Kafka Connect's
// schema/payload form (see Unwrap).
func DecodeEnvelope(b []byte) (*Envelope, error) {
	b, _ = Unwrap(b)
	var e Envelope
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, err
	}
	return &e, nil
}
