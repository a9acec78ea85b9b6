package cdc

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pglogrepl"

	"github.com/jobstream/jobstream/schema"
)

// Postgres type OIDs rendered specially (see also types.go); every other
// type is a JSON string.
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
	oidNumeric     = 1700
	oidJSONB       = 3802
)

// unavailable is Debezium's placeholder for an unchanged TOASTed value that
// the WAL does not carry.
const unavailable = "__debezium_unavailable_value"

// appendRow renders a tuple as a JSON object, columns in table order, values
// as Debezium renders them with its defaults. An unchanged TOASTed value
// ('u') is taken from old when old carries it (REPLICA IDENTITY FULL), else
// rendered as Debezium's placeholder. A null is absent[i] for column i when
// absent holds one (a NOT NULL column the old tuple of a delete leaves
// null: see absentValue), else null. It also returns the values of job_id
// and current_step (nil when absent or null) and the name of the first
// column whose text is not valid UTF-8 (rendered with U+FFFD), if any.
func appendRow(b []byte, rel *pglogrepl.RelationMessage, tuple, old *pglogrepl.TupleData, absent [][]byte) (out, jobID, step []byte, bad string) {
	if tuple == nil {
		return append(b, "null"...), nil, nil, ""
	}
	b = append(b, '{')
	for i, col := range tuple.Columns {
		if i >= len(rel.Columns) {
			break
		}
		rc := rel.Columns[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = schema.AppendQuoted(b, rc.Name)
		b = append(b, ':')
		kind, data := col.DataType, col.Data
		if kind == 'u' && old != nil && i < len(old.Columns) && old.Columns[i].DataType != 'u' {
			kind, data = old.Columns[i].DataType, old.Columns[i].Data
		}
		switch kind {
		case 'n':
			if i < len(absent) && absent[i] != nil {
				b = append(b, absent[i]...)
			} else {
				b = append(b, "null"...)
			}
			continue
		case 'u':
			b = appendUnavailable(b, rc.DataType)
			continue
		}
		switch rc.Name {
		case "job_id":
			jobID = data
		case "current_step":
			step = data
		}
		if bad == "" && !utf8.Valid(data) {
			bad = rc.Name
		}
		b = appendValue(b, rc.DataType, rc.TypeModifier, data)
	}
	return append(b, '}'), jobID, step, bad
}

// unavailableBytes is the placeholder as a bytea column carries it: its
// bytes, in base64 like any bytea value.
var unavailableBytes = base64.StdEncoding.EncodeToString([]byte(unavailable))

// appendUnavailable renders the unchanged-TOAST placeholder as Debezium does
// for a column of type oid: in an array for an array column, as bytes for
// bytea, as the string otherwise (Debezium's
// debezium-connector-postgres/src/main/java/io/debezium/connector/postgresql/PostgresValueConverter.java,
// the unavailable-value placeholder of each converter).
func appendUnavailable(b []byte, oid uint32) []byte {
	switch {
	case oid == oidBytea:
		return schema.AppendQuoted(b, unavailableBytes)
	case oid >= minArrayOID && arrayElem(oid) != 0:
		b = append(b, '[')
		b = schema.AppendQuoted(b, unavailable)
		return append(b, ']')
	}
	return schema.AppendQuoted(b, unavailable)
}

// appendValue renders one text-format value of type oid (type modifier
// typmod) as Debezium renders it with its default settings.
func appendValue(b []byte, oid uint32, typmod int32, v []byte) []byte {
	switch oid {
	case oidBool:
		if len(v) == 1 && v[0] == 't' {
			return append(b, "true"...)
		}
		return append(b, "false"...)
	case oidInt2, oidInt4, oidInt8, oidOID:
		if isJSONNumber(v) {
			return append(b, v...)
		}
	case oidFloat4, oidFloat8:
		bits := 64
		if oid == oidFloat4 {
			bits = 32
		}
		if f, err := strconv.ParseFloat(string(v), bits); err == nil && !math.IsNaN(f) && !math.IsInf(f, 0) {
			return appendJavaFloat(b, f, bits)
		}
		return schema.AppendJSONString(b, v) // NaN, Infinity, -Infinity
	case oidNumeric:
		if out, ok := appendNumeric(b, typmod, v); ok {
			return out
		}
	case oidTimestamptz, oidTimestamp, oidDate, oidTime, oidTimetz, oidInterval:
		if out, ok := appendTemporal(b, oid, typmod, v); ok {
			return out
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
	default:
		// An array: a JSON array of its elements rendered as above.
		if oid >= minArrayOID {
			if elem := arrayElem(oid); elem != 0 {
				if out, ok := appendArray(b, elem, typmod, v); ok {
					return out
				}
			}
		}
	}
	return schema.AppendJSONString(b, v)
}

// appendTemporal renders a value of a date or time type oid as one of
// Debezium's io.debezium.time types; false for a value it cannot parse,
// which the caller renders as a string.
func appendTemporal(b []byte, oid uint32, typmod int32, v []byte) ([]byte, bool) {
	switch oid {
	case oidTimestamptz:
		// io.debezium.time.ZonedTimestamp: ISO-8601 in UTC, always six
		// fraction digits (debezium-core/src/main/java/io/debezium/time/ZonedTimestamp.java).
		if t, ok := parseTimestamp(v, true); ok {
			b = append(b, '"')
			b = t.UTC().AppendFormat(b, "2006-01-02T15:04:05.000000Z")
			return append(b, '"'), true
		}
	case oidTimestamp:
		// Adaptive precision: timestamp(0..3) is io.debezium.time.Timestamp,
		// milliseconds since the epoch; timestamp(4..6) and timestamp are
		// io.debezium.time.MicroTimestamp, microseconds.
		if t, ok := parseTimestamp(v, false); ok {
			if typmod >= 0 && typmod <= 3 {
				return strconv.AppendInt(b, t.UnixMilli(), 10), true
			}
			return strconv.AppendInt(b, t.UnixMicro(), 10), true
		}
	case oidDate:
		// io.debezium.time.Date: days since the epoch.
		if t, err := time.Parse("2006-01-02", string(v)); err == nil {
			return strconv.AppendInt(b, t.Unix()/86400, 10), true
		}
	case oidTime:
		// io.debezium.time.Time or MicroTime, by precision.
		return appendTime(b, typmod, v)
	case oidTimetz:
		// io.debezium.time.ZonedTime: ISO-8601 in UTC.
		return appendTimetz(b, v)
	case oidInterval:
		// io.debezium.time.MicroDuration: approximate microseconds.
		return appendInterval(b, v)
	}
	return nil, false
}

// appendNumeric renders a numeric as Debezium's default precise decimal
// handling does with schemas off: the unscaled value as big-endian two's
// complement bytes in base64; for a numeric without a declared scale,
// io.debezium.data.VariableScaleDecimal {"scale": s, "value": base64}.
// NaN and infinities, which have no such form, are left to the caller.
func appendNumeric(b []byte, typmod int32, v []byte) ([]byte, bool) {
	s := string(v)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	intPart, frac, _ := strings.Cut(s, ".")
	if intPart == "" && frac == "" {
		return b, false
	}
	for _, c := range intPart + frac {
		if c < '0' || c > '9' {
			return b, false
		}
	}
	if typmod < 4 {
		// Without a declared scale the value's own scale counts, trailing
		// zeros stripped: 1.50 is scale 1, -0.0500 scale 2
		// (debezium-core/src/main/java/io/debezium/data/VariableScaleDecimal.java).
		frac = strings.TrimRight(frac, "0")
	}
	scale := len(frac)
	if typmod >= 4 {
		if declared := int((typmod - 4) & 0xffff); scale < declared {
			frac += strings.Repeat("0", declared-scale)
			scale = declared
		}
	}
	unscaled, ok := new(big.Int).SetString(intPart+frac, 10)
	if !ok {
		return b, false
	}
	if neg {
		unscaled.Neg(unscaled)
	}
	enc := twosComplement(unscaled)
	if typmod >= 4 {
		b = append(b, '"')
		b = base64.StdEncoding.AppendEncode(b, enc)
		return append(b, '"'), true
	}
	b = append(b, `{"scale":`...)
	b = strconv.AppendInt(b, int64(scale), 10)
	b = append(b, `,"value":"`...)
	b = base64.StdEncoding.AppendEncode(b, enc)
	return append(b, `"}`...), true
}

// twosComplement returns x as Java's BigInteger.toByteArray does: the
// shortest big-endian two's complement form.
func twosComplement(x *big.Int) []byte {
	var n int
	if x.Sign() >= 0 {
		n = x.BitLen()/8 + 1
	} else {
		m := new(big.Int).Neg(x)
		m.Sub(m, big.NewInt(1))
		n = m.BitLen()/8 + 1
	}
	mod := new(big.Int).Lsh(big.NewInt(1), uint(8*n))
	u := new(big.Int).Mod(x, mod) // non-negative
	out := make([]byte, n)
	return u.FillBytes(out)
}

// parseTimestamp parses Postgres' ISO output ("2006-01-02 15:04:05.999999+00").
func parseTimestamp(v []byte, tz bool) (time.Time, bool) {
	if t, ok := parseTimestampISO(v, tz); ok {
		return t, true
	}
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

// parseTimestampISO parses, without allocating, what Postgres writes for a
// timestamp with its ISO DateStyle: "2006-01-02 15:04:05", then 1 to 9
// fractional digits after a '.', then with tz an offset "+07" or "-07:30".
// It reports false for anything else (and for any value out of range), which
// parseTimestamp leaves to time.Parse; where it succeeds, it gives the time
// time.Parse gives.
func parseTimestampISO(v []byte, tz bool) (time.Time, bool) {
	if len(v) < 19 || v[4] != '-' || v[7] != '-' || v[10] != ' ' || v[13] != ':' || v[16] != ':' {
		return time.Time{}, false
	}
	ok := true
	num := func(i int) int {
		hi, lo := v[i]-'0', v[i+1]-'0'
		ok = ok && hi <= 9 && lo <= 9
		return int(hi)*10 + int(lo)
	}
	year := num(0)*100 + num(2)
	month, day, hour, minute, sec := num(5), num(8), num(11), num(14), num(17)
	if !ok || month < 1 || month > 12 || day < 1 || day > daysIn(time.Month(month), year) || hour > 23 || minute > 59 || sec > 59 {
		return time.Time{}, false
	}
	i, nsec := 19, 0
	if i < len(v) && v[i] == '.' {
		i++
		start := i
		for i < len(v) && i-start < 9 && v[i] >= '0' && v[i] <= '9' {
			nsec = nsec*10 + int(v[i]-'0')
			i++
		}
		if i == start || i < len(v) && v[i] >= '0' && v[i] <= '9' {
			return time.Time{}, false
		}
		for n := i - start; n < 9; n++ {
			nsec *= 10
		}
	}
	offset := 0
	if tz {
		if n := len(v) - i; n != 3 && (n != 6 || v[i+3] != ':') {
			return time.Time{}, false
		}
		oh, om := num(i+1), 0
		if len(v)-i == 6 {
			om = num(i + 4)
		}
		if !ok || oh > 23 || om > 59 {
			return time.Time{}, false
		}
		switch offset = (oh*60 + om) * 60; v[i] {
		case '+':
		case '-':
			offset = -offset
		default:
			return time.Time{}, false
		}
	} else if i != len(v) {
		return time.Time{}, false
	}
	t := time.Date(year, time.Month(month), day, hour, minute, sec, nsec, time.UTC)
	return t.Add(-time.Duration(offset) * time.Second), true
}

// daysIn returns the number of days of month m of year (proleptic Gregorian).
func daysIn(m time.Month, year int) int {
	if m == time.February {
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	}
	return 31 - int((m-1)%7%2)
}

// parsePgoutput is pglogrepl.Parse made safe for any input: pglogrepl panics
// on some malformed messages (an empty one, for instance), and one bad
// message must become an error, never a crashed reader.
func parsePgoutput(data []byte) (msg pglogrepl.Message, err error) {
	if len(data) == 0 {
		return nil, errors.New("empty pgoutput message")
	}
	defer func() {
		if p := recover(); p != nil {
			msg, err = nil, fmt.Errorf("malformed pgoutput message: %v", p)
		}
	}()
	return pglogrepl.Parse(data)
}

// isJSONNumber reports whether v is a number in JSON's grammar, so it can be
// written unquoted. Postgres' text output of integers and floats always is;
// this guards the envelope against anything else.
// appendJavaFloat appends f (a float64, or with bits 32 a float32) as
// Kafka Connect's JsonConverter writes a FLOAT64 or FLOAT32 value, which is
// Java's Double.toString or Float.toString (JDK 19 and later): the
// shortest decimal that reads back as f, with at least two significant
// digits (the closest two where one would do: 4.9E-324, not 5E-324); plain
// with at least one fractional digit from 10^-3 up to 10^7 (1.0, 0.001,
// 1234567.0), else d.dddE±n (1.0E7, 1.0E-4).
func appendJavaFloat(b []byte, f float64, bits int) []byte {
	if f == 0 {
		if math.Signbit(f) {
			return append(b, "-0.0"...)
		}
		return append(b, "0.0"...)
	}
	var buf [32]byte
	e := strconv.AppendFloat(buf[:0], f, 'e', -1, bits) // -d.ddde±dd
	if i := bytes.IndexByte(e, 'e'); i == 1 || i == 2 && e[0] == '-' {
		e = strconv.AppendFloat(buf[:0], f, 'e', 1, bits) // one digit: the closest two
	}
	if e[0] == '-' {
		b, e = append(b, '-'), e[1:]
	}
	mant, exp, _ := bytes.Cut(e, []byte{'e'})
	x, _ := strconv.Atoi(string(exp))
	var dbuf [24]byte
	digits := append(append(dbuf[:0], mant[0]), bytes.TrimPrefix(mant[1:], []byte{'.'})...)
	if len(digits) > 1 {
		digits = bytes.TrimRight(digits, "0")
	}
	if x < -3 || x >= 7 {
		b = append(b, digits[0], '.')
		if len(digits) == 1 {
			b = append(b, '0')
		}
		b = append(b, digits[1:]...)
		b = append(b, 'E')
		return strconv.AppendInt(b, int64(x), 10)
	}
	if x < 0 {
		b = append(b, "0."...)
		for range -x - 1 {
			b = append(b, '0')
		}
		return append(b, digits...)
	}
	for i := 0; i <= x; i++ {
		if i < len(digits) {
			b = append(b, digits[i])
		} else {
			b = append(b, '0')
		}
	}
	b = append(b, '.')
	if x+1 >= len(digits) {
		return append(b, '0')
	}
	return append(b, digits[x+1:]...)
}

func isJSONNumber(v []byte) bool {
	i := 0
	if i < len(v) && v[i] == '-' {
		i++
	}
	switch {
	case i < len(v) && v[i] == '0':
		i++
	case i < len(v) && v[i] >= '1' && v[i] <= '9':
		i, _ = digits(v, i)
	default:
		return false
	}
	var ok bool
	if i < len(v) && v[i] == '.' {
		if i, ok = digits(v, i+1); !ok {
			return false
		}
	}
	if i < len(v) && (v[i] == 'e' || v[i] == 'E') {
		i++
		if i < len(v) && (v[i] == '+' || v[i] == '-') {
			i++
		}
		if i, ok = digits(v, i); !ok {
			return false
		}
	}
	return i == len(v)
}

// digits returns the offset after the decimal digits at v[i:], and whether
// there is at least one.
func digits(v []byte, i int) (int, bool) {
	start := i
	for i < len(v) && v[i] >= '0' && v[i] <= '9' {
		i++
	}
	return i, i > start
}

// rowMessage is a pgoutput Insert, Update or Delete as rowDecoder decodes it.
type rowMessage struct {
	op    byte // 'I', 'U' or 'D'
	relID uint32
	// oldType is 'K' (the old key) or 'O' (the whole old row, REPLICA
	// IDENTITY FULL) when old is set, else 0.
	oldType  byte
	old, new *pglogrepl.TupleData
}

// rowDecoder decodes the row-carrying pgoutput messages, which are nearly
// all of the stream, without allocating: the tuples and columns it returns
// are reused by the next call, and the column values are slices of the
// message itself, so they are valid only until the next message is
// received. It gives up (ok false) on anything but a well-formed message,
// which the reader then dead-letters (pglogrepl, given a malformed message,
// allocates whatever length it claims); where it succeeds, its result
// equals pglogrepl's (FuzzPgoutputToEnvelope checks it).
type rowDecoder struct {
	cols     []pglogrepl.TupleDataColumn
	ptrs     []*pglogrepl.TupleDataColumn
	old, new pglogrepl.TupleData
}

// decode decodes data, a pgoutput message starting with its type byte.
func (d *rowDecoder) decode(data []byte) (m rowMessage, ok bool) {
	if len(data) < 6 {
		return m, false
	}
	m.op, m.relID = data[0], binary.BigEndian.Uint32(data[1:])
	d.cols = d.cols[:0]
	at, oldCols := 5, -1
	kind := data[at]
	at++
	switch m.op {
	case 'I':
		if kind != 'N' || len(data) < 9 { // pglogrepl wants 8 bytes after the type

			return m, false
		}
	case 'U':
		if kind == 'K' || kind == 'O' {
			m.oldType = kind
			if at, ok = d.tuple(data, at); !ok || at >= len(data) || data[at] != 'N' {
				return m, false
			}
			oldCols = len(d.cols)
			at++
		} else if kind != 'N' {
			return m, false
		}
	case 'D':
		if kind != 'K' && kind != 'O' {
			return m, false
		}
		m.oldType = kind
		if _, ok = d.tuple(data, at); !ok {
			return m, false
		}
		oldCols = len(d.cols)
	default:
		return m, false
	}
	if m.op != 'D' {
		if _, ok = d.tuple(data, at); !ok {
			return m, false
		}
	}
	// Point the tuples at the columns only now: d.cols may have grown.
	d.ptrs = d.ptrs[:0]
	for i := range d.cols {
		d.ptrs = append(d.ptrs, &d.cols[i])
	}
	split := max(oldCols, 0)
	if oldCols >= 0 {
		d.old = pglogrepl.TupleData{ColumnNum: uint16(split), Columns: d.ptrs[:split:split]}
		m.old = &d.old
	}
	if m.op != 'D' {
		d.new = pglogrepl.TupleData{ColumnNum: uint16(len(d.ptrs) - split), Columns: d.ptrs[split:]}
		m.new = &d.new
	}
	return m, true
}

// tuple decodes the TupleData at src[at:], appending its columns to d.cols,
// and returns the offset after it.
func (d *rowDecoder) tuple(src []byte, at int) (int, bool) {
	if len(src)-at < 2 {
		return 0, false
	}
	n := int(binary.BigEndian.Uint16(src[at:]))
	at += 2
	for range n {
		if at >= len(src) {
			return 0, false
		}
		c := pglogrepl.TupleDataColumn{DataType: src[at]}
		at++
		switch c.DataType {
		case pglogrepl.TupleDataTypeText, pglogrepl.TupleDataTypeBinary:
			if len(src)-at < 4 {
				return 0, false
			}
			c.Length = binary.BigEndian.Uint32(src[at:])
			at += 4
			if uint64(c.Length) > uint64(len(src)-at) {
				return 0, false
			}
			end := at + int(c.Length)
			c.Data = src[at:end:end]
			at = end
		case pglogrepl.TupleDataTypeNull, pglogrepl.TupleDataTypeToast:
		default:
			return 0, false
		}
		d.cols = append(d.cols, c)
	}
	return at, true
}
