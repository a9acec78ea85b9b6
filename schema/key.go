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
// struct, or a bare key as it is.
func JobIDFromKey(key []byte) string {
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
// bare id. A reader that does not know the job_id column's type, or how a
// topic was written, looks in the partition of each.
func KeyCandidates(jobID string) [][]byte {
	out := [][]byte{Key(jobID, false)}
	if _, err := strconv.ParseInt(jobID, 10, 64); err == nil && jobID == strings.TrimSpace(jobID) && !strings.HasPrefix(jobID, "+") {
		out = append(out, Key(jobID, true))
	}
	return append(out, []byte(jobID))
}

// IntegerType reports whether a job_id column of SQL type t (format_type)
// renders as a JSON number in events.
func IntegerType(t string) bool {
	switch t {
	case "smallint", "integer", "bigint", "oid":
		return true
	}
	return false
}
