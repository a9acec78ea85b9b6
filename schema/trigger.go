package schema

import (
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

// Trigger is the part of an Envelope a worker reads: the op, the job's
// identity and state after the change, and where and when the change was
// committed. Decoding only this (DecodeTrigger) skips building the before
// and after maps with every column.
type Trigger struct {
	Op     string        `json:"op"`
	After  *TriggerRow   `json:"after"`
	Source TriggerSource `json:"source"`
}

// TriggerRow is the part of an envelope's after that a worker reads.
type TriggerRow struct {
	// JobID is the job's id as text: a JSON string (text, varchar, uuid
	// keys) as it is, a JSON integer (integer and bigint keys) as its
	// decimal digits; nil when null or absent.
	JobID       *string `json:"job_id"`
	CurrentStep string  `json:"current_step"`
	Status      string  `json:"status"`
}

// UnmarshalJSON reads a row as encoding/json reads it into the struct's
// fields, except that job_id may also be a JSON integer, read as its
// decimal text (the reader renders integer and bigint columns as numbers).
// A job_id of any other kind (a fraction, an exponent, a boolean, an
// object) is an error.
func (r *TriggerRow) UnmarshalJSON(b []byte) error {
	var raw struct {
		JobID       json.RawMessage `json:"job_id"`
		CurrentStep string          `json:"current_step"`
		Status      string          `json:"status"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	*r = TriggerRow{CurrentStep: raw.CurrentStep, Status: raw.Status}
	switch id := raw.JobID; {
	case len(id) == 0 || string(id) == "null":
	case id[0] == '"':
		var s string
		if err := json.Unmarshal(id, &s); err != nil {
			return err
		}
		r.JobID = &s
	case isInteger(id):
		s := string(id)
		r.JobID = &s
	default:
		return fmt.Errorf("json: job_id %.40s is neither a string nor an integer", id)
	}
	return nil
}

// isInteger reports whether b is a JSON number without fraction or exponent.
func isInteger(b []byte) bool {
	if len(b) > 0 && b[0] == '-' {
		b = b[1:]
	}
	if len(b) == 0 || len(b) > 1 && b[0] == '0' {
		return false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// TriggerSource is the part of an envelope's source block that a worker
// reads: the transaction (txId, 32 bits in Postgres, as VisibleIn takes it),
// the LSN and commit time, and whether the event is a snapshot read.
type TriggerSource struct {
	TxID     int64  `json:"txId"`
	LSN      int64  `json:"lsn"`
	TsMs     int64  `json:"ts_ms"`
	Snapshot string `json:"snapshot"`
}

// DecodeTrigger parses an event value as json.Unmarshal into a Trigger
// does, with its very result and error on every input. A value
// DecodeEnvelope accepts but whose current_step or status is not a
// string, or whose job_id is neither a string nor an integer (a table this
// worker cannot act on), is an error too.
//
// The envelopes the reader writes take a fast path: one pass that checks
// the syntax of the whole value, skips what the Trigger does not hold and
// reads the rest. Whatever that pass is not certain to read exactly as
// encoding/json would (an error of any kind, escaped or non-ASCII or
// case-folded names, repeated names, numbers that are not plain integers
// (a job_id too), strings with escapes or invalid UTF-8, deep nesting) is
// left to json.Unmarshal, so its errors and its quirks stay the reference.
// FuzzDecodeTrigger holds the two to the same result on any input.
//
// A value in Kafka Connect's schema/payload form (see Unwrap) is read as
// its payload.
func DecodeTrigger(b []byte) (*Trigger, error) {
	b, _ = Unwrap(b)
	if t, ok := fastTrigger(b); ok {
		return t, nil
	}
	var t Trigger
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// maxFastDepth is the nesting the fast path skips; deeper values go to
// encoding/json, which has its own limit.
const maxFastDepth = 256

// fastTrigger is DecodeTrigger's fast path; ok is false when the value must
// go to encoding/json.
func fastTrigger(b []byte) (t *Trigger, ok bool) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return nil, false
	}
	t = &Trigger{}
	var seenOp, seenAfter, seenSource bool
	i, ok = object(b, i, func(key []byte, i int) (int, bool) {
		switch string(key) {
		case "op":
			return firstString(b, i, &seenOp, &t.Op)
		case "after":
			if !first(&seenAfter) {
				return i, false
			}
			if hasLiteral(b, i, "null") {
				return i + 4, true
			}
			t.After = &TriggerRow{}
			return t.After.decode(b, i)
		case "source":
			if !first(&seenSource) {
				return i, false
			}
			if hasLiteral(b, i, "null") {
				return i + 4, true
			}
			return t.Source.decode(b, i)
		}
		if foldsTo(key, "op", "after", "source") {
			return i, false
		}
		return skipValue(b, i, 1)
	})
	if !ok || skipSpace(b, i) != len(b) {
		return nil, false
	}
	return t, true
}

func (r *TriggerRow) decode(b []byte, i int) (int, bool) {
	if i >= len(b) || b[i] != '{' {
		return i, false
	}
	var seenID, seenStep, seenStatus bool
	return object(b, i, func(key []byte, i int) (int, bool) {
		switch string(key) {
		case "job_id":
			if !first(&seenID) {
				return i, false
			}
			if hasLiteral(b, i, "null") {
				return i + 4, true
			}
			var id string
			if i < len(b) && (b[i] == '-' || '0' <= b[i] && b[i] <= '9') {
				// An integer or bigint key: its digits, as UnmarshalJSON reads it.
				j, ok := skipNumber(b, i)
				if !ok || !isInteger(b[i:j]) {
					return j, false
				}
				id = string(b[i:j])
				r.JobID = &id
				return j, true
			}
			i, ok := stringField(b, i, &id)
			r.JobID = &id
			return i, ok
		case "current_step":
			return firstString(b, i, &seenStep, &r.CurrentStep)
		case "status":
			return firstString(b, i, &seenStatus, &r.Status)
		}
		if foldsTo(key, "job_id", "current_step", "status") {
			return i, false
		}
		return skipValue(b, i, 2)
	})
}

func (s *TriggerSource) decode(b []byte, i int) (int, bool) {
	if i >= len(b) || b[i] != '{' {
		return i, false
	}
	var seenTx, seenLSN, seenTs, seenSnapshot bool
	return object(b, i, func(key []byte, i int) (int, bool) {
		switch string(key) {
		case "txId":
			return firstInt(b, i, &seenTx, &s.TxID)
		case "lsn":
			return firstInt(b, i, &seenLSN, &s.LSN)
		case "ts_ms":
			return firstInt(b, i, &seenTs, &s.TsMs)
		case "snapshot":
			return firstString(b, i, &seenSnapshot, &s.Snapshot)
		}
		if foldsTo(key, "txId", "lsn", "ts_ms", "snapshot") {
			return i, false
		}
		return skipValue(b, i, 2)
	})
}

// object reads the object at b[i] ('{'), calling field with each name
// (plain ASCII without escapes; any other name fails) and the offset of
// its value; field returns the offset after the value. It returns the
// offset after the object.
func object(b []byte, i int, field func(key []byte, i int) (int, bool)) (int, bool) {
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, true
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return i, false
		}
		start := i + 1
		j := start
		for j < len(b) && b[j] != '"' {
			if c := b[j]; c < 0x20 || c == '\\' || c >= utf8.RuneSelf {
				return j, false
			}
			j++
		}
		if j >= len(b) {
			return j, false
		}
		key := b[start:j]
		i = skipSpace(b, j+1)
		if i >= len(b) || b[i] != ':' {
			return i, false
		}
		var ok, done bool
		if i, ok = field(key, skipSpace(b, i+1)); !ok {
			return i, false
		}
		if i, done, ok = separator(b, skipSpace(b, i), '}'); done || !ok {
			return i, ok
		}
	}
}

// foldsTo reports whether key, which matches none of names exactly, might
// still match one as encoding/json matches names (case-insensitively):
// an ASCII name equal to one of them but for case.
func foldsTo(key []byte, names ...string) bool {
	for _, n := range names {
		if len(n) != len(key) {
			continue
		}
		same := true
		for k := range len(n) {
			if lower(key[k]) != lower(n[k]) {
				same = false
				break
			}
		}
		if same {
			return true
		}
	}
	return false
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// stringField reads a string at b[i] into *dst, or nothing for null (as
// encoding/json does). Strings with escapes or invalid UTF-8 fail.
func stringField(b []byte, i int, dst *string) (int, bool) {
	if hasLiteral(b, i, "null") {
		return i + 4, true
	}
	if i >= len(b) || b[i] != '"' {
		return i, false
	}
	start := i + 1
	ascii := true
	j := start
	for ; j < len(b) && b[j] != '"'; j++ {
		if c := b[j]; c < 0x20 || c == '\\' {
			return j, false
		} else if c >= utf8.RuneSelf {
			ascii = false
		}
	}
	if j >= len(b) || !ascii && !utf8.Valid(b[start:j]) {
		return j, false
	}
	*dst = string(b[start:j])
	return j + 1, true
}

// intField reads a plain integer (no fraction, no exponent, at most 18
// digits) at b[i] into *dst, or nothing for null.
func intField(b []byte, i int, dst *int64) (int, bool) {
	if hasLiteral(b, i, "null") {
		return i + 4, true
	}
	neg := i < len(b) && b[i] == '-'
	if neg {
		i++
	}
	start := i
	var n int64
	for i < len(b) && '0' <= b[i] && b[i] <= '9' {
		n = n*10 + int64(b[i]-'0')
		i++
	}
	digits := i - start
	if digits == 0 || digits > 18 || digits > 1 && b[start] == '0' {
		return i, false
	}
	if i < len(b) && (b[i] == '.' || b[i] == 'e' || b[i] == 'E') {
		return i, false
	}
	if neg {
		n = -n
	}
	*dst = n
	return i, true
}

func hasLiteral(b []byte, i int, lit string) bool {
	return len(b)-i >= len(lit) && string(b[i:i+len(lit)]) == lit
}

// skipValue checks the syntax of the value at b[i] and returns the offset
// after it.
func skipValue(b []byte, i, depth int) (int, bool) {
	if i >= len(b) {
		return i, false
	}
	switch c := b[i]; {
	case c == '"':
		return skipString(b, i)
	case c == '{', c == '[':
		return skipContainer(b, i, depth)
	case c == 't':
		return i + 4, hasLiteral(b, i, "true")
	case c == 'f':
		return i + 5, hasLiteral(b, i, "false")
	case c == 'n':
		return i + 4, hasLiteral(b, i, "null")
	case c == '-' || '0' <= c && c <= '9':
		return skipNumber(b, i)
	}
	return i, false
}

// skipContainer checks the object or array at b[i] (members "key": value,
// or values, separated by commas) and returns the offset after it.
func skipContainer(b []byte, i, depth int) (int, bool) {
	if depth >= maxFastDepth {
		return i, false
	}
	object, end := b[i] == '{', byte(']')
	if object {
		end = '}'
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == end {
		return i + 1, true
	}
	for {
		var ok, done bool
		if object {
			if i >= len(b) || b[i] != '"' {
				return i, false
			}
			if i, ok = skipString(b, i); !ok {
				return i, false
			}
			i = skipSpace(b, i)
			if i >= len(b) || b[i] != ':' {
				return i, false
			}
			i = skipSpace(b, i+1)
		}
		if i, ok = skipValue(b, i, depth+1); !ok {
			return i, false
		}
		if i, done, ok = separator(b, skipSpace(b, i), end); done || !ok {
			return i, ok
		}
	}
}

// separator reads what follows a value in an object or array, at b[i]
// past any spaces: a comma, with more to come (done is false, next the
// offset of what comes after it and its spaces), or end, which closes the
// container (done is true, next the offset after it). Anything else fails.
func separator(b []byte, i int, end byte) (next int, done, ok bool) {
	if i < len(b) {
		switch b[i] {
		case ',':
			return skipSpace(b, i+1), false, true
		case end:
			return i + 1, true, true
		}
	}
	return i, false, false
}

// skipString checks the string at b[i] ('"'): no control characters, valid
// escapes; any other byte is allowed, as encoding/json allows it.
func skipString(b []byte, i int) (int, bool) {
	for i++; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return i + 1, true
		case c < 0x20:
			return i, false
		case c == '\\':
			i++
			if i >= len(b) {
				return i, false
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if len(b)-i < 5 {
					return i, false
				}
				for _, h := range b[i+1 : i+5] {
					if !('0' <= h && h <= '9' || 'a' <= h && h <= 'f' || 'A' <= h && h <= 'F') {
						return i, false
					}
				}
				i += 4
			default:
				return i, false
			}
		}
	}
	return i, false
}

// skipNumber checks a JSON number at b[i]:
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func skipNumber(b []byte, i int) (int, bool) {
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		i = skipDigits(b, i)
	default:
		return i, false
	}
	if i < len(b) && b[i] == '.' {
		j := skipDigits(b, i+1)
		if j == i+1 {
			return j, false
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := skipDigits(b, i)
		if j == i {
			return j, false
		}
		i = j
	}
	return i, true
}

func skipDigits(b []byte, i int) int {
	for i < len(b) && '0' <= b[i] && b[i] <= '9' {
		i++
	}
	return i
}

func skipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// first marks a key seen and reports whether it was new: a key twice in one
// object is something encoding/json would read differently, so the fast
// path gives up on it.
func first(seen *bool) bool {
	if *seen {
		return false
	}
	*seen = true
	return true
}

// firstString is stringField for a key that must be the first of its name
// in the object (see first).
func firstString(b []byte, i int, seen *bool, dst *string) (int, bool) {
	if !first(seen) {
		return i, false
	}
	return stringField(b, i, dst)
}

// firstInt is intField for a key that must be the first of its name in the
// object (see first).
func firstInt(b []byte, i int, seen *bool, dst *int64) (int, bool) {
	if !first(seen) {
		return i, false
	}
	return intField(b, i, dst)
}
