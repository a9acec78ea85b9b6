package cdc

import (
	"bytes"
	"math"
	"strconv"
)

// Postgres type OIDs of the temporal types rendered here.
const (
	oidTime     = 1083
	oidTimetz   = 1266
	oidInterval = 1186
)

// minArrayOID is the least of arrayElem's array types (json[]): appendValue
// skips the lookup for text (25) and the other common types below it.
const minArrayOID = 199

// arrayElem returns the element type of the built-in array types Debezium's
// Postgres connector renders as arrays (PostgresValueConverter's
// createArrayConverter cases), else 0. The OIDs are fixed in pg_type.
// time[] and timetz[] are left out: Debezium reads their elements through
// pgjdbc's java.sql.Time, which drops sub-millisecond digits (and, for
// timetz[], goes through the connector JVM's time zone), so they stay
// strings here, as do the arrays Debezium has no converter for (bytea[],
// interval[], money[], name[], ...), which it leaves out of the event.
func arrayElem(oid uint32) uint32 {
	switch oid {
	case 1000:
		return oidBool
	case 1005:
		return oidInt2
	case 1007:
		return oidInt4
	case 1016:
		return oidInt8
	case 1028:
		return oidOID
	case 1021:
		return oidFloat4
	case 1022:
		return oidFloat8
	case 1231:
		return oidNumeric
	case 1182:
		return oidDate
	case 1115:
		return oidTimestamp
	case 1185:
		return oidTimestamptz
	case 199:
		return oidJSON
	case 3807:
		return oidJSONB
	case 2951:
		return 2950 // uuid
	case 1001:
		return oidBytea
	case 1002:
		return 18 // "char"
	case 1014:
		return 1042 // bpchar
	case 1015:
		return 1043 // varchar
	case 1009:
		return 25 // text
	case 1041:
		return 869 // inet
	case 651:
		return 650 // cidr
	case 1040:
		return 829 // macaddr
	case 775:
		return 774 // macaddr8
	case 3905:
		return 3904 // int4range
	case 3907:
		return 3906 // numrange
	case 3909:
		return 3908 // tsrange
	case 3911:
		return 3910 // tstzrange
	case 3913:
		return 3912 // daterange
	case 3927:
		return 3926 // int8range
	}
	return 0
}

// appendArray renders a one-dimensional array in Postgres' text form
// ("{1,2,NULL}", "{\"a b\",\"c\\\"d\"}", optionally after a "[l:u]="
// bounds decoration, which pgjdbc skips too) as a JSON array whose elements
// are rendered as appendValue renders type elem, NULL elements as null.
// Multi-dimensional arrays (which Debezium does not render either) and
// anything malformed give ok false, with b as it was.
func appendArray(b []byte, elem uint32, typmod int32, v []byte) (out []byte, ok bool) {
	start := len(b)
	i := 0
	if len(v) > 0 && v[0] == '[' {
		for i < len(v) && v[i] != '=' {
			i++
		}
		i++
	}
	if i >= len(v) || v[i] != '{' {
		return b, false
	}
	i++
	b = append(b, '[')
	var scratch [64]byte
	for n := 0; ; n++ {
		i = skipArraySpace(v, i)
		if i >= len(v) {
			return b[:start], false
		}
		if n == 0 && v[i] == '}' { // {}
			i++
			break
		}
		val, null, next, ok := readArrayElem(v, i, scratch[:0])
		if !ok {
			return b[:start], false
		}
		i = next
		if n > 0 {
			b = append(b, ',')
		}
		if null {
			b = append(b, "null"...)
		} else {
			b = appendValue(b, elem, typmod, val)
		}
		i = skipArraySpace(v, i)
		if i >= len(v) {
			return b[:start], false
		}
		if v[i] == ',' {
			i++
			continue
		}
		if v[i] != '}' {
			return b[:start], false
		}
		i++
		break
	}
	if i != len(v) {
		return b[:start], false
	}
	return append(b, ']'), true
}

// readArrayElem reads the element of array text v at i: quoted (unescaped into
// scratch when it has escapes) or bare (null when NULL). It returns where
// the element ends; ok is false for a sub-array or text Postgres never
// writes.
func readArrayElem(v []byte, i int, scratch []byte) (val []byte, null bool, next int, ok bool) {
	if v[i] == '{' {
		return nil, false, i, false // a sub-array
	}
	if v[i] != '"' {
		s := i
		for i < len(v) && !isArraySpace(v[i]) && v[i] != ',' && v[i] != '}' {
			if c := v[i]; c == '"' || c == '\\' || c == '{' {
				return nil, false, i, false
			}
			i++
		}
		if i == s {
			return nil, false, i, false
		}
		return v[s:i], string(v[s:i]) == "NULL", i, true
	}
	i++
	s, escaped := i, false
	for i < len(v) && v[i] != '"' {
		if v[i] == '\\' {
			escaped = true
			i++
		}
		i++
	}
	if i >= len(v) {
		return nil, false, i, false
	}
	val = v[s:i]
	if escaped {
		val = unescapeArrayElem(scratch, val)
	}
	return val, false, i + 1, true
}

// unescapeArrayElem appends s with its backslash escapes resolved to dst.
func unescapeArrayElem(dst, s []byte) []byte {
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		dst = append(dst, s[i])
	}
	return dst
}

// isArraySpace reports whether c is white space as array_in skips it.
func isArraySpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

func skipArraySpace(v []byte, i int) int {
	for i < len(v) && isArraySpace(v[i]) {
		i++
	}
	return i
}

// appendTime renders a time (Postgres' "15:04:05.999999", "24:00:00" at
// most) as Debezium's default time.precision.mode=adaptive does: by the
// column's precision (its typmod; -1, unspecified, is 6 as pgjdbc reports
// it), 0 to 3 as io.debezium.time.Time (milliseconds past midnight), 4 to 6
// as io.debezium.time.MicroTime (microseconds past midnight), more as
// io.debezium.time.NanoTime. 24:00:00 is a whole day, which Debezium
// accepts. Anything else gives ok false.
func appendTime(b []byte, typmod int32, v []byte) ([]byte, bool) {
	nanos, ok := parseTimeOfDay(v)
	if !ok {
		return b, false
	}
	prec := typmod
	if prec < 0 {
		prec = 6
	}
	switch {
	case prec <= 3:
		return strconv.AppendInt(b, nanos/1e6, 10), true
	case prec <= 6:
		return strconv.AppendInt(b, nanos/1e3, 10), true
	}
	return strconv.AppendInt(b, nanos, 10), true
}

// parseTimeOfDay parses "HH:MM:SS" with an optional fraction of 1 to 9
// digits into nanoseconds past midnight, as Debezium's Strings.asDuration
// reads a time column, and reports false beyond 24:00:00, which Debezium
// refuses.
func parseTimeOfDay(v []byte) (int64, bool) {
	var f [3]int64
	i := 0
	for k := range f {
		if k > 0 {
			if i >= len(v) || v[i] != ':' {
				return 0, false
			}
			i++
		}
		s := i
		for i < len(v) && i-s < 2 && v[i] >= '0' && v[i] <= '9' {
			f[k] = f[k]*10 + int64(v[i]-'0')
			i++
		}
		if i == s {
			return 0, false
		}
	}
	frac, i, ok := parseFraction(v, i)
	if !ok || i != len(v) {
		return 0, false
	}
	nanos := ((f[0]*60+f[1])*60+f[2])*1e9 + frac
	if nanos > 86400*1e9 {
		return 0, false
	}
	return nanos, true
}

// parseFraction parses an optional '.' and 1 to 9 digits at v[i:] as
// nanoseconds.
func parseFraction(v []byte, i int) (nanos int64, next int, ok bool) {
	if i >= len(v) || v[i] != '.' {
		return 0, i, true
	}
	i++
	s := i
	for i < len(v) && v[i] >= '0' && v[i] <= '9' {
		if i-s == 9 {
			return 0, i, false
		}
		nanos = nanos*10 + int64(v[i]-'0')
		i++
	}
	if i == s {
		return 0, i, false
	}
	for n := i - s; n < 9; n++ {
		nanos *= 10
	}
	return nanos, i, true
}

// appendTimetz renders a timetz ("15:04:05.999999+05:30") as Debezium's
// io.debezium.time.ZonedTime: the time shifted to UTC, as Java's
// DateTimeFormatter.ISO_OFFSET_TIME writes it ("09:34:05.999999Z", the
// fraction without trailing zeros, none when zero). Debezium parses the
// value with ISO_LOCAL_TIME and an offset "+HH:mm", in which 24:00:00 is
// midnight; an offset with seconds does not parse there, nor here.
func appendTimetz(b []byte, v []byte) ([]byte, bool) {
	var f [3]int
	i, k := 0, 0
	for ; k < 3; k++ {
		if k > 0 {
			if i >= len(v) || v[i] != ':' {
				break
			}
			i++
		}
		if len(v)-i < 2 || v[i]-'0' > 9 || v[i+1]-'0' > 9 {
			return b, false
		}
		f[k] = int(v[i]-'0')*10 + int(v[i+1]-'0')
		i += 2
	}
	if k < 2 { // the seconds, and their fraction, are optional
		return b, false
	}
	frac, ok := int64(0), true
	if k == 3 {
		frac, i, ok = parseFraction(v, i)
	}
	if !ok || f[1] > 59 || f[2] > 59 {
		return b, false
	}
	if f[0] == 24 && f[1] == 0 && f[2] == 0 && frac == 0 {
		f[0] = 0 // the resolver's end of day
	} else if f[0] > 23 {
		return b, false
	}
	// The offset: sign, two-digit hours, optionally ":" and two-digit minutes.
	if len(v)-i != 3 && (len(v)-i != 6 || v[i+3] != ':') {
		return b, false
	}
	sign := 0
	switch v[i] {
	case '+':
		sign = 1
	case '-':
		sign = -1
	default:
		return b, false
	}
	var off [2]int
	for k := 0; k < 1+(len(v)-i)/6; k++ {
		j := i + 1 + 3*k
		if v[j]-'0' > 9 || v[j+1]-'0' > 9 {
			return b, false
		}
		off[k] = int(v[j]-'0')*10 + int(v[j+1]-'0')
	}
	if off[1] > 59 || off[0]*60+off[1] > 18*60 {
		return b, false
	}
	secs := f[0]*3600 + f[1]*60 + f[2] - sign*(off[0]*3600+off[1]*60)
	secs = ((secs % 86400) + 86400) % 86400
	b = append(b, '"')
	b = append2(b, secs/3600)
	b = append(b, ':')
	b = append2(b, secs/60%60)
	b = append(b, ':')
	b = append2(b, secs%60)
	if frac != 0 {
		b = append(b, '.')
		digits := 9
		for frac%10 == 0 {
			frac /= 10
			digits--
		}
		var buf [9]byte
		for k := digits - 1; k >= 0; k-- {
			buf[k] = byte('0' + frac%10)
			frac /= 10
		}
		b = append(b, buf[:digits]...)
	}
	return append(b, `Z"`...), true
}

// append2 appends n (0 to 99) as two digits.
func append2(b []byte, n int) []byte {
	return append(b, byte('0'+n/10), byte('0'+n%10))
}

// appendInterval renders an interval as Debezium's default
// interval.handling.mode=numeric does: io.debezium.time.MicroDuration, an
// approximate number of microseconds. Debezium reads the text with pgjdbc's
// PGInterval and converts it with MicroDuration.durationMicros, in double
// precision, with months of 365.25/12 days; this does the same
// computations in the same order, so it gives the same number.
func appendInterval(b []byte, v []byte) ([]byte, bool) {
	iv, ok := parseInterval(v)
	if !ok {
		return b, false
	}
	return strconv.AppendInt(b, iv.micros(), 10), true
}

// pgInterval is pgjdbc's PGInterval: each field as Postgres writes it, the
// seconds split into whole seconds and microseconds.
type pgInterval struct {
	years, months, days, hours, minutes int32
	wholeSeconds, microSeconds          int32
}

// daysPerMonthAvg is MicroDuration.DAYS_PER_MONTH_AVG.
const daysPerMonthAvg = 365.25 / 12.0

// micros is MicroDuration.durationMicros(years, months, days, hours,
// minutes, seconds, DAYS_PER_MONTH_AVG). The explicit float64 conversions
// keep every step rounded as Java rounds it (no fused multiply-add).
func (iv pgInterval) micros() int64 {
	seconds := float64(iv.wholeSeconds) + float64(float64(iv.microSeconds)/1e6)
	months := iv.years*12 + iv.months // int arithmetic, as in Java
	days := float64(float64(months)*daysPerMonthAvg) + float64(iv.days)
	s := float64(days * 24)
	s = float64(s + float64(iv.hours))
	s = float64(s * 60)
	s = float64(s + float64(iv.minutes))
	s = float64(s * 60)
	s = float64(s + seconds)
	return javaLong(float64(s * 1e6))
}

// javaLong converts f to int64 as Java's (long) cast does: toward zero,
// NaN as 0, saturating at the ends of the range.
func javaLong(f float64) int64 {
	switch {
	case f != f:
		return 0
	case f >= 0x1p63:
		return math.MaxInt64
	case f <= -0x1p63:
		return math.MinInt64
	}
	return int64(f)
}

// parseInterval parses an interval as PGInterval.setValue does, for the
// text Postgres writes with IntervalStyle postgres (the default: "1 year 2
// mons -3 days +04:05:06.789", "-00:00:01") or postgres_verbose ("@ 1 year
// 2 mons 3 days 4 hours 5 mins 6.789 secs ago"): tokens separated by white
// space, '+' and '@'; a number then its unit, or a time [-]H:MM:SS[.f].
// Where PGInterval would skip a token, throw, or read something Postgres
// never writes, this reports false instead; the sql_standard and iso_8601
// styles are not read.
func parseInterval(v []byte) (iv pgInterval, ok bool) {
	if len(v) == 0 || v[0] == 'P' {
		return iv, false
	}
	verbose := v[0] == '@'
	var seconds float64
	var value []byte // the number before its unit, nil when none
	seen := false
	ago := false
	odd := true
	for i := 0; ; {
		for i < len(v) && isIntervalSpace(v[i]) {
			i++
		}
		if i == len(v) {
			break
		}
		s := i
		for i < len(v) && !isIntervalSpace(v[i]) {
			i++
		}
		tok := v[s:i]
		if ago { // "ago" ends the text
			return iv, false
		}
		if odd {
			odd = false
			colon := bytes.IndexByte(tok, ':')
			if colon < 0 {
				if verbose && string(tok) == "ago" && value == nil {
					ago = true
					continue
				}
				value = tok
				continue
			}
			if value != nil {
				return iv, false
			}
			h, m, sec, ok := parseIntervalTime(tok, colon)
			if !ok {
				return iv, false
			}
			iv.hours, iv.minutes, seconds = h, m, sec
			seen = true
			continue
		}
		odd = true
		if value == nil || !iv.setUnit(tok, value, &seconds) {
			return iv, false
		}
		value = nil
		seen = true
	}
	if !seen || value != nil {
		return iv, false
	}
	return iv.withSeconds(seconds, ago)
}

// setUnit stores value, the number before unit tok, in its field (seconds
// into *seconds), as PGInterval does; false for a unit it does not know.
func (iv *pgInterval) setUnit(tok, value []byte, seconds *float64) (ok bool) {
	var n int32
	if !bytes.HasPrefix(tok, []byte("sec")) {
		if n, ok = parseInt32(value); !ok {
			return false
		}
	}
	switch {
	case bytes.HasPrefix(tok, []byte("year")):
		iv.years = n
	case bytes.HasPrefix(tok, []byte("mon")):
		iv.months = n
	case bytes.HasPrefix(tok, []byte("day")):
		iv.days = n
	case bytes.HasPrefix(tok, []byte("hour")):
		iv.hours = n
	case bytes.HasPrefix(tok, []byte("min")):
		iv.minutes = n
	case bytes.HasPrefix(tok, []byte("sec")):
		if *seconds, ok = parseSeconds(value); !ok {
			return false
		}
	default:
		return false
	}
	return true
}

// withSeconds negates iv for a trailing "ago" and stores seconds as
// PGInterval.setSeconds does.
func (iv pgInterval) withSeconds(seconds float64, ago bool) (pgInterval, bool) {
	if ago {
		iv.years, iv.months, iv.days, iv.hours, iv.minutes = -iv.years, -iv.months, -iv.days, -iv.hours, -iv.minutes
		seconds = -seconds
	}
	if math.Abs(seconds) >= 1<<31 {
		return iv, false
	}
	iv.wholeSeconds = int32(seconds)
	iv.microSeconds = int32(javaRound(float64(seconds-float64(iv.wholeSeconds)) * 1e6))
	return iv, true
}

// parseIntervalTime parses tok, "[-]H:MM:SS[.f]" with its first ':' at
// colon, as PGInterval does: hours and minutes as int, seconds as double,
// all negated after a '-'.
func parseIntervalTime(tok []byte, colon int) (h, m int32, sec float64, ok bool) {
	neg := tok[0] == '-'
	hs := tok[:colon]
	if neg {
		hs = hs[1:]
	}
	if len(hs) == 0 || hs[0] == '-' || hs[0] == '+' {
		return 0, 0, 0, false
	}
	if h, ok = parseInt32(hs); !ok {
		return 0, 0, 0, false
	}
	rest := tok[colon+1:]
	if len(rest) < 4 || rest[2] != ':' || rest[0]-'0' > 9 || rest[1]-'0' > 9 {
		return 0, 0, 0, false
	}
	m = int32(rest[0]-'0')*10 + int32(rest[1]-'0')
	if sec, ok = parseSeconds(rest[3:]); !ok || rest[3] == '-' {
		return 0, 0, 0, false
	}
	if neg {
		h, m, sec = -h, -m, -sec
	}
	return h, m, sec, true
}

// parseInt32 parses [-]digits within int32, as Integer.parseInt does.
func parseInt32(s []byte) (int32, bool) {
	i := 0
	if len(s) > 0 && s[0] == '-' {
		i++
	}
	if i == len(s) || len(s)-i > 10 {
		return 0, false
	}
	var n int64
	for ; i < len(s); i++ {
		if s[i]-'0' > 9 {
			return 0, false
		}
		n = n*10 + int64(s[i]-'0')
	}
	if s[0] == '-' {
		n = -n
	}
	if n < math.MinInt32 || n > math.MaxInt32 {
		return 0, false
	}
	return int32(n), true
}

// parseSeconds parses [-]digits[.digits] as Double.parseDouble does
// (both round to the nearest double).
func parseSeconds(s []byte) (float64, bool) {
	i := 0
	if len(s) > 0 && s[0] == '-' {
		i++
	}
	digits, dot := 0, false
	for ; i < len(s); i++ {
		switch c := s[i]; {
		case c >= '0' && c <= '9':
			digits++
		case c == '.' && !dot && digits > 0:
			dot = true
		default:
			return 0, false
		}
	}
	if digits == 0 || s[len(s)-1] == '.' {
		return 0, false
	}
	f, err := strconv.ParseFloat(string(s), 64)
	return f, err == nil
}

// javaRound is Java's Math.round: the nearest integer, ties up.
func javaRound(x float64) float64 {
	f := math.Floor(x)
	if x-f >= 0.5 {
		f++
	}
	return f
}

// isIntervalSpace reports whether c separates PGInterval's tokens: the
// StringTokenizer's white space, and '+' and '@', which it blanks first.
func isIntervalSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '+' || c == '@'
}
