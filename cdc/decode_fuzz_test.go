package cdc

import (
	"encoding/binary"
	"encoding/json"
	"testing"

	"github.com/jackc/pglogrepl"
)

// fuzzRelation has one column of every type the decoder renders specially.
func fuzzRelation() *pglogrepl.RelationMessage {
	rel := testRelation()
	for _, oid := range []uint32{oidBool, oidBytea, oidInt8, oidInt2, oidInt4, oidOID, oidJSON, oidFloat4, oidFloat8, oidDate, oidTimestamp, 1700, 2950} {
		rel.Columns = append(rel.Columns, &pglogrepl.RelationMessageColumn{Name: "c" + string(rune('a'+len(rel.Columns))), DataType: oid, TypeModifier: -1})
	}
	// time, time(3), timetz, interval, int4[], text[], numeric(5,2)[], timestamptz[], jsonb[].
	for _, c := range [][2]int32{{oidTime, -1}, {oidTime, 3}, {oidTimetz, -1}, {oidInterval, -1}, {1007, -1}, {1009, -1}, {1231, 5<<16 | 2 + 4}, {1185, -1}, {3807, -1}} {
		rel.Columns = append(rel.Columns, &pglogrepl.RelationMessageColumn{Name: "c" + string(rune('a'+len(rel.Columns))), DataType: uint32(c[0]), TypeModifier: c[1]})
	}
	return rel
}

// insertMessage encodes a pgoutput Insert of text values (nil is NULL).
func insertMessage(vals ...[]byte) []byte {
	b := []byte{'I', 0, 0, 0, 1, 'N'}
	b = binary.BigEndian.AppendUint16(b, uint16(len(vals)))
	for _, v := range vals {
		if v == nil {
			b = append(b, 'n')
			continue
		}
		b = append(b, 't')
		b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
		b = append(b, v...)
	}
	return b
}

// addRowSeeds adds the row seeds the fuzz targets share: a plain insert, and
// one whose every column holds something odd for its type.
func addRowSeeds(f *testing.F) {
	f.Add(insertMessage([]byte("j1"), []byte("img_gen"), []byte("done"), []byte(`{"a":1}`), nil, nil, []byte("2026-11-26 23:00:00+00")))
	f.Add(insertMessage([]byte("j2"), []byte("x"), []byte("done"), []byte("{}"), []byte("{}"), []byte("e\x00\xff"), []byte("garbage"),
		[]byte("t"), []byte(`\x0g`), []byte("99999999999999999999"), []byte("-1"), []byte("3"), []byte("7"), []byte("[1,"),
		[]byte("NaN"), []byte("-Infinity"), []byte("2026-02-30"), []byte("infinity"), []byte("1e400"), []byte("not-a-uuid")))
}

// fuzzRow decodes a row-carrying message as the reader does; ok is false
// for any other kind (those come from Postgres' own relation and
// begin/commit messages, which pglogrepl decodes) and for inputs over 4 KiB.
func fuzzRow(data []byte) (m rowMessage, ok bool) {
	if len(data) > 4096 {
		return m, false
	}
	var d rowDecoder
	return d.decode(data)
}

// FuzzPgoutputToEnvelope is the reader's decoding path: any pgoutput
// message, parsed and rendered as an envelope row, gives valid JSON and never
// panics, whatever the bytes and column types.
func FuzzPgoutputToEnvelope(f *testing.F) {
	addRowSeeds(f)
	f.Add(insertMessage([]byte("j3"), []byte("x"), []byte("done"), []byte("{}"), []byte("{}"), nil, []byte("2026-11-26 23:00:00+00"),
		nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil,
		[]byte("24:00:00"), []byte("13:14:15.123"), []byte("04:05:06.789+05:30"), []byte("-1 years -2 mons +3 days -04:05:06"),
		[]byte("{1,NULL,3}"), []byte(`{"a b","c\"d",NULL,"NULL"}`), []byte("{1.50,-1.28}"), []byte(`{"2026-11-26 23:32:21+00"}`), []byte(`{"{\"a\": 1}"}`)))
	f.Add([]byte{'U', 0, 0, 0, 1, 'O', 0, 1, 'u', 'N', 0, 1, 't', 0, 0, 0, 1, 'x'})
	f.Add([]byte{'D', 0, 0, 0, 1, 'K', 0, 1, 't', 0, 0, 0, 2, 'j', '1'})
	f.Add([]byte{'I', 0, 0, 0, 1, 'N', 0xff, 0xff})
	rel := fuzzRelation()
	f.Fuzz(func(t *testing.T, data []byte) {
		m, ok := fuzzRow(data)
		if !ok {
			return
		}
		// What it decodes, pglogrepl decodes the same (its lengths are
		// checked, so pglogrepl allocates no more than the message holds).
		msg, err := parsePgoutput(data)
		if err != nil {
			t.Fatalf("rowDecoder took a message pglogrepl refuses (%v): %q", err, data)
		}
		var wantNew, wantOld *pglogrepl.TupleData
		switch pm := msg.(type) {
		case *pglogrepl.InsertMessage:
			wantNew = pm.Tuple
		case *pglogrepl.UpdateMessage:
			wantNew, wantOld = pm.NewTuple, pm.OldTuple
		case *pglogrepl.DeleteMessage:
			wantOld = pm.OldTuple
		}
		if !sameTuple(m.new, wantNew) || !sameTuple(m.old, wantOld) {
			t.Fatalf("rowDecoder and pglogrepl disagree on %q", data)
		}
		var tuples [][2]*pglogrepl.TupleData
		switch m.op {
		case 'I':
			tuples = append(tuples, [2]*pglogrepl.TupleData{m.new, nil})
		case 'U':
			tuples = append(tuples, [2]*pglogrepl.TupleData{m.new, m.old}, [2]*pglogrepl.TupleData{m.old, nil})
		default:
			tuples = append(tuples, [2]*pglogrepl.TupleData{m.old, nil})
		}
		for _, tp := range tuples {
			row, _, _, _ := appendRow(nil, rel, tp[0], tp[1], nil)
			if !json.Valid(row) {
				t.Fatalf("invalid JSON row %q from %q", row, data)
			}
		}
	})
}

// fuzzValueTypes are the types whose text FuzzAppendValue parses.
var fuzzValueTypes = []uint32{oidTime, oidTimetz, oidInterval, 1007, 1009, 1231, 1185, 3807, 1000, 1022, 1115, 1182}

// FuzzAppendValue is the parsers of time, timetz, interval and arrays: any
// text, with any type modifier, gives one valid JSON value appended to what
// was there, and never panics.
func FuzzAppendValue(f *testing.F) {
	for _, s := range []struct {
		kind   uint8
		typmod int32
		v      string
	}{
		{0, -1, "24:00:00"}, {0, 3, "13:14:15.123"}, {1, -1, "04:05:06.789+05:30"}, {1, -1, "24:00:00-15:59"},
		{2, -1, "1 year 2 mons 3 days 04:05:06.789"}, {2, -1, "-00:00:01"}, {2, -1, "@ 1 day 2 hours ago"},
		{3, -1, "{1,2,NULL}"}, {3, -1, "[0:1]={1,2}"}, {3, -1, "{{1,2},{3,4}}"}, {4, -1, `{"a b","c\"d","e\\f",NULL,"NULL"}`},
		{5, 5<<16 | 2 + 4, "{1.50,NaN}"}, {6, -1, `{"2026-11-26 23:32:21.123456+00"}`}, {7, -1, `{"{\"a\": 1}"}`},
		{8, -1, "{t,f}"}, {9, -1, "{1.5,-Infinity}"}, {10, -1, `{"1970-01-01 00:00:01.5"}`}, {11, -1, "{1970-01-11,infinity}"},
	} {
		f.Add(s.kind, s.typmod, []byte(s.v))
	}
	f.Fuzz(func(t *testing.T, kind uint8, typmod int32, v []byte) {
		oid := fuzzValueTypes[int(kind)%len(fuzzValueTypes)]
		out := appendValue([]byte("x"), oid, typmod, v)
		if out[0] != 'x' || !json.Valid(out[1:]) {
			t.Fatalf("appendValue(%d, %d, %q) = %q", oid, typmod, v, out)
		}
	})
}

// sameTuple reports whether a and b hold the same columns.
func sameTuple(a, b *pglogrepl.TupleData) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	if len(a.Columns) != len(b.Columns) {
		return false
	}
	for i, c := range a.Columns {
		d := b.Columns[i]
		if c.DataType != d.DataType || string(c.Data) != string(d.Data) {
			return false
		}
	}
	return true
}
