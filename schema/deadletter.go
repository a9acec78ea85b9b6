package schema

import (
	"bytes"
	"encoding/json"
)

// Headers of the records jobstream writes to the dead-letter topic. A
// consumer of the topic can route on them without decoding the value.
const (
	// HeaderReason holds DeadLetter.Reason.
	HeaderReason = "jobstream.reason"
	// HeaderStep holds DeadLetter.Step, on the letters of workers.
	HeaderStep = "jobstream.step"
)

// DeadLetter is the value of every record in the dead-letter topic
// (Topics.DLQ), keyed by job_id. Two writers share it: the reader, for a
// row it cannot encode or route (Topic and LSN set), and a step's workers,
// for an event they cannot act on or a job that failed (Step, JobID,
// Attempts and Error set). A field its writer does not set is left out,
// except Reason and Event, which every letter has.
//
// Fields are in the order of their JSON names, as letters have always
// been written by workers.
type DeadLetter struct {
	// Attempts is how many attempts the failed job's run made.
	Attempts int `json:"attempts,omitempty"`
	// Error is the last attempt's error, or the database's refusal.
	Error string `json:"error,omitempty"`
	// Event is the change event the letter is about, as produced or
	// consumed: null when the reader's event was too large, "" when the
	// worker's trigger is gone (a letter the sweeper wrote for a dead
	// worker), a JSON string when the consumed value was not JSON or was
	// truncated.
	Event json.RawMessage `json:"event"`
	// EventTruncated says Event holds only the first MaxLetterEvent bytes
	// of the consumed value, as a string.
	EventTruncated bool `json:"event_truncated,omitempty"`
	// JobID is the job's id (the record's key), on a worker's letter.
	JobID string `json:"job_id,omitempty"`
	// LSN is the WAL position of the change, on the reader's letter.
	LSN uint64 `json:"lsn,omitempty"`
	// Reason says in one sentence why the event is a dead letter.
	Reason string `json:"reason"`
	// Step is the step whose worker wrote the letter.
	Step string `json:"step,omitempty"`
	// Topic is the topic the reader meant the event for.
	Topic string `json:"topic,omitempty"`
	// TriggerLSN is the LSN of the failed run's trigger, on a letter whose
	// Event is gone.
	TriggerLSN string `json:"trigger_lsn,omitempty"`
}

// MaxLetterEvent bounds the consumed value a worker's letter carries, so
// that the letter stays under the broker's default message size.
const MaxLetterEvent = 512 << 10

// SetEvent sets Event to the consumed value v: as it is when it is JSON
// (null when v is nil), as a JSON string otherwise, cut to MaxLetterEvent
// bytes with EventTruncated set when it is longer.
func (l *DeadLetter) SetEvent(v []byte) {
	switch {
	case len(v) > MaxLetterEvent:
		l.Event, _ = json.Marshal(string(bytes.ToValidUTF8(v[:MaxLetterEvent], nil)))
		l.EventTruncated = true
	case json.Valid(v):
		l.Event = v
	default:
		l.Event, _ = json.Marshal(string(v))
	}
}

// Encode returns the letter as JSON, with Event as it is (no HTML
// escaping, so that a letter carries its event's very bytes).
func (l *DeadLetter) Encode() []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(l); err != nil {
		// Event is not JSON: keep the letter, say so.
		c := *l
		c.Event, _ = json.Marshal(string(l.Event))
		return c.Encode()
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

// DecodeDeadLetter parses a dead-letter record's value.
func DecodeDeadLetter(b []byte) (*DeadLetter, error) {
	var l DeadLetter
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, err
	}
	return &l, nil
}
