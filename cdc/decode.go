package cdc

import (
	"encoding/base64"
	"encoding/hex"
	"math"
	"strconv"
	"time"

	"github.com/jackc/pglogrepl"
)

// Postgres type OIDs rendered specially; every other type is a JSON string.
const (
	oidBool        = 16
	oidBytea       = 17
	oidInt8        = 20
	oidInt2        = 21
	oidInt4        = 23
	oidOID         = 26
	oidJSON        = 114
	oidFloat4      = 700
	oidFloat8      = 701
	oidDate        = 1082
	oidTimestamp   = 1114
	oidTimestamptz = 1184
	oidJSONB       = 3802
)

// unavailable is Debezium's placeholder for an unchanged TOASTed value that
// the WAL does not carry.
const unavailable = "__debezium_unavailable_value"

// appendRow renders a tuple as a JSON object, columns in table order, values
// as Debezium renders them with its defaults. It also returns the values of
// job_id and current_step (nil when absent or null).
func appendRow(b []byte, rel *pglogrepl.RelationMessage, tuple *pglogrepl.TupleData) (out []byte, jobID, step []byte) {
	if tuple == nil {
		return append(b, "null"...), nil, nil
	}
	b = append(b, '{')
	first := true
	for i, col := range tuple.Columns {
		if i >= len(rel.Columns) {
			break
		}
		rc := rel.Columns[i]
		if !first {
			b = append(b, ',')
		}
		first = false
		b = strconv.AppendQuote(b, rc.Name)
		b = append(b, ':')
		switch col.DataType {
		case 'n':
			b = append(b, "null"...)
			continue
		case 'u':
			b = strconv.AppendQuote(b, unavailable)
			continue
		}
		switch rc.Name {
		case "job_id":
			jobID = col.Data
		case "current_step":
			step = col.Data
		}
		b = appendValue(b, rc.DataType, col.Data)
	}
	return append(b, '}'), jobID, step
}

// appendValue renders one text-format value of type oid.
func appendValue(b []byte, oid uint32, v []byte) []byte {
	switch oid {
	case oidBool:
		if len(v) == 1 && v[0] == 't' {
			return append(b, "true"...)
		}
		return append(b, "false"...)
	case oidInt2, oidInt4, oidInt8, oidOID:
		return append(b, v...)
	case oidFloat4, oidFloat8:
		if f, err := strconv.ParseFloat(string(v), 64); err == nil && !math.IsNaN(f) && !math.IsInf(f, 0) {
			return append(b, v...)
		}
		return strconv.AppendQuote(b, string(v)) // NaN, Infinity, -Infinity
	case oidTimestamptz:
		if t, ok := parseTimestamp(v, true); ok {
			b = append(b, '"')
			b = t.UTC().AppendFormat(b, "2006-01-02T15:04:05.999999Z")
			return append(b, '"')
		}
	case oidTimestamp:
		// io.debezium.time.MicroTimestamp: microseconds since the epoch.
		if t, ok := parseTimestamp(v, false); ok {
			return strconv.AppendInt(b, t.UnixMicro(), 10)
		}
	case oidDate:
		// io.debezium.time.Date: days since the epoch.
		if t, err := time.Parse("2006-01-02", string(v)); err == nil {
			return strconv.AppendInt(b, t.Unix()/86400, 10)
		}
	case oidBytea:
		if len(v) >= 2 && v[0] == '\\' && v[1] == 'x' {
			raw := make([]byte, hex.DecodedLen(len(v)-2))
			if _, err := hex.Decode(raw, v[2:]); err == nil {
				b = append(b, '"')
				b = base64.StdEncoding.AppendEncode(b, raw)
				return append(b, '"')
			}
		}
	case oidJSON, oidJSONB:
		// io.debezium.data.Json: the document as a string.
	}
	return appendJSONString(b, v)
}

// parseTimestamp parses Postgres' ISO output ("2006-01-02 15:04:05.999999+00").
func parseTimestamp(v []byte, tz bool) (time.Time, bool) {
	s := string(v)
	var t time.Time
	var err error
	if tz {
		t, err = time.Parse("2006-01-02 15:04:05.999999999Z07", s)
		if err != nil {
			t, err = time.Parse("2006-01-02 15:04:05.999999999Z07:00", s)
		}
		if err != nil {
			t, err = time.Parse("2006-01-02 15:04:05.999999999Z07:00:00", s)
		}
	} else {
		t, err = time.Parse("2006-01-02 15:04:05.999999999", s)
	}
	return t, err == nil
}

// appendJSONString appends s as a JSON string literal.
func appendJSONString(b []byte, s []byte) []byte {
	const hexDigits = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < 0x7f {
			continue
		}
		if c >= 0x80 {
			continue // UTF-8 passes through; Postgres text is valid UTF-8.
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
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
