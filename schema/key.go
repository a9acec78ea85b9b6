package schema

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
)

// The record key of a job's events. By default it is Debezium's key struct
// with schemas off, {"job_id": <the id as the row renders it>}: a string,
// or a number for an integer job_id column. A reader configured for bare
// keys writes the id's text alone. Every jobstream reader of the topics
// (workers, audit, replay, the console) reads both, so topics written in
// either form, or in both over time, stay readable.

// Key returns the key struct of job jobID; numeric renders the id as a
// JSON number (an integer job_id column).
func Key(jobID string, numeric bool) []byte {
	b := make([]byte, 0, len(jobID)+14)
	b = append(b, `{"job_id":`...)
	if numeric {
		b = append(b, jobID...)
	} else {
		b = AppendQuoted(b, jobID)
	}
	return append(b, '}')
}

// JobIDFromKey returns the job id a record key names: the job_id of a key
// struct (plain, or the payload of Kafka Connect's schema/payload form),
// or a bare key as it is.
func JobIDFromKey(key []byte) string {
	if p, ok := Unwrap(key); ok && len(p) > 0 && p[0] == '{' {
		key = p
	}
	if len(key) < 11 || key[0] != '{' {
		return string(key)
	}
	var k struct {
		JobID json.RawMessage `json:"job_id"`
	}
	if json.Unmarshal(key, &k) != nil || len(k.JobID) == 0 {
		return string(key)
	}
	var s string
	if json.Unmarshal(k.JobID, &s) == nil {
		return s
	}
	return string(bytes.TrimSpace(k.JobID)) // a number
}

// KeyCandidates returns every key a job's events may carry: the key struct
// with the id as a string, as a number when the id is an integer, and the
// bare id; and for each name of connectKeys (ConnectName(prefix, schema,
// table, "Key")), the key struct in Kafka Connect's schema/payload form
// with job_id of each type a supported job_id column has (text or
// varchar, uuid, and for an integer id smallint, integer, bigint). A
// reader that does not know the job_id column's type, or how a topic was
// written, looks in the partition of each.
func KeyCandidates(jobID string, connectKeys ...string) [][]byte {
	out := [][]byte{Key(jobID, false)}
	numeric := false
	if _, err := strconv.ParseInt(jobID, 10, 64); err == nil && jobID == strings.TrimSpace(jobID) && !strings.HasPrefix(jobID, "+") {
		numeric = true
		out = append(out, Key(jobID, true))
	}
	out = append(out, []byte(jobID))
	for _, name := range connectKeys {
		types := []string{ConnectJobIDString, ConnectJobIDUUID}
		if numeric {
			types = append(types, ConnectJobIDInt16, ConnectJobIDInt32, ConnectJobIDInt64)
		}
		for _, t := range types {
			k := append([]byte(ConnectOpen+`{"type":"struct","fields":[`), t...)
			k = append(k, `],"optional":false,"name":`...)
			k = AppendQuoted(k, name)
			k = append(k, "}"+ConnectPayload...)
			k = append(k, Key(jobID, t != ConnectJobIDString && t != ConnectJobIDUUID)...)
			out = append(out, append(k, ConnectClose...))
		}
	}
	return out
}

// The Connect schemas of a key's job_id field, by the column's type, as the
// reader writes them (Debezium's: a key column is never optional).
const (
	ConnectJobIDString = `{"type":"string","optional":false,"field":"job_id"}`
	ConnectJobIDUUID   = `{"type":"string","optional":false,"name":"io.debezium.data.Uuid","version":1,"field":"job_id"}`
	ConnectJobIDInt16  = `{"type":"int16","optional":false,"field":"job_id"}`
	ConnectJobIDInt32  = `{"type":"int32","optional":false,"field":"job_id"}`
	ConnectJobIDInt64  = `{"type":"int64","optional":false,"field":"job_id"}`
)

// IntegerType reports whether a job_id column of SQL type t (format_type)
// renders as a JSON number in events.
func IntegerType(t string) bool {
	switch t {
	case "smallint", "integer", "bigint", "oid":
		return true
	}
	return false
}
