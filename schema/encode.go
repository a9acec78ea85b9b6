package schema

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// The encoder of Envelope: the reader renders each event straight into a
// reused buffer, in Envelope's field order,
//
//	{"before":<row>,"after":<row>,"source":{...},"op":"u","ts_ms":...,"ts_us":...,"ts_ns":...,"transaction":null}
//
// rendering the rows itself (they come from pgoutput tuples) and the rest
// with what follows. TestEnvelopeEncoder and FuzzEnvelopeEncoder hold it
// to what DecodeEnvelope and DecodeTrigger read back.

// Connector is the envelope's source.connector, as Debezium's Postgres
// connector writes it.
const Connector = "postgresql"

// EventSource is what varies from event to event in a source block.
type EventSource struct {
	TsMs     int64  // commit time (streaming) or read time (snapshot), ms since the epoch
	TsUs     int64  // the same time in µs (ts_ns is it times 1000: Postgres keeps µs)
	Snapshot string // "false", or "first", "true", "last" in a snapshot
	// LastCommit is the commit LSN of the transaction before this one (0:
	// none yet); LSN is this event's position.
	LastCommit, LSN uint64
	Schema, Table   string
	TxID            uint64
}

// SourceHead is the part of a source block that is the same for every
// event of one reader (version, connector, name and database), rendered
// once by NewSourceHead.
type SourceHead struct {
	db           string
	head, dbPart []byte
}

// NewSourceHead renders the constant parts of the source blocks of the
// events of name (the topic prefix) from database db.
func NewSourceHead(name, db string) *SourceHead {
	head := AppendQuoted([]byte(`"source":{"version":"`+Version+`","connector":"`+Connector+`","name":`), name)
	return &SourceHead{
		db:     db,
		head:   append(head, `,"ts_ms":`...),
		dbPart: append(AppendQuoted([]byte(`","db":`), db), `,"sequence":"[`...),
	}
}

// DB returns the database h was rendered for.
func (h *SourceHead) DB() string { return h.db }

// AppendSource appends the envelope's source block for s.
func (h *SourceHead) AppendSource(v []byte, s *EventSource) []byte {
	v = append(v, h.head...)
	v = strconv.AppendInt(v, s.TsMs, 10)
	v = append(v, `,"snapshot":"`...)
	v = append(v, s.Snapshot...)
	v = append(v, h.dbPart...)
	if s.LastCommit == 0 {
		v = append(v, "null"...)
	} else {
		v = append(v, `\"`...)
		v = strconv.AppendUint(v, s.LastCommit, 10)
		v = append(v, `\"`...)
	}
	v = append(v, `,\"`...)
	v = strconv.AppendUint(v, s.LSN, 10)
	v = append(v, `\"]","ts_us":`...)
	v = strconv.AppendInt(v, s.TsUs, 10)
	v = append(v, `,"ts_ns":`...)
	v = strconv.AppendInt(v, s.TsUs*1000, 10)
	v = append(v, `,"schema":`...)
	v = AppendQuoted(v, s.Schema)
	v = append(v, `,"table":`...)
	v = AppendQuoted(v, s.Table)
	v = append(v, `,"txId":`...)
	v = strconv.AppendUint(v, s.TxID, 10)
	v = append(v, `,"lsn":`...)
	v = strconv.AppendUint(v, s.LSN, 10)
	return append(v, `,"xmin":null,"origin":null,"origin_lsn":null}`...)
}

// AppendTail appends op, ts_ms, ts_us and ts_ns (now) and transaction,
// closing the envelope.
func AppendTail(v []byte, op string) []byte {
	now := time.Now().UnixNano()
	v = append(v, `,"op":"`...)
	v = append(v, op...)
	v = append(v, `","ts_ms":`...)
	v = strconv.AppendInt(v, now/1e6, 10)
	v = append(v, `,"ts_us":`...)
	v = strconv.AppendInt(v, now/1e3, 10)
	v = append(v, `,"ts_ns":`...)
	v = strconv.AppendInt(v, now, 10)
	return append(v, `,"transaction":null}`...)
}

// jsonPlain marks the bytes AppendJSONString copies as they are: printable
// ASCII but the quote and the backslash.
var jsonPlain = func() (t [256]bool) {
	for c := 0x20; c < 0x7f; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// AppendJSONString appends s as a JSON string literal; bytes that are not
// valid UTF-8 become U+FFFD.
func AppendJSONString(b []byte, s []byte) []byte {
	const hexDigits = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if jsonPlain[s[i]] {
			i++
			continue
		}
		c := s[i]
		if c >= 0x80 {
			r, size := utf8.DecodeRune(s[i:])
			if r == utf8.RuneError && size == 1 {
				b = append(b, s[start:i]...)
				b = append(b, `\ufffd`...)
				i++
				start = i
				continue
			}
			i += size
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		i++
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// AppendQuoted appends s as a JSON string literal (invalid UTF-8 as
// U+FFFD), at once when s is printable ASCII without quote or backslash.
func AppendQuoted(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			return AppendJSONString(b, []byte(s))
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
