package schema

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
)

// encodeEnvelope renders an envelope with the encoder, as the reader does.
func encodeEnvelope(name, db string, s *EventSource, after []byte, op string) []byte {
	v := []byte(`{"before":null,"after":`)
	v = append(v, after...)
	v = append(v, ',')
	v = NewSourceHead(name, db).AppendSource(v, s)
	return AppendTail(v, op)
}

// checkEnvelope decodes what the encoder wrote with DecodeEnvelope and
// DecodeTrigger and compares it with what went in.
func checkEnvelope(t *testing.T, name, db string, s *EventSource, op string) {
	t.Helper()
	b := encodeEnvelope(name, db, s, []byte(`{"job_id":"j1","current_step":"img_gen","status":"done"}`), op)
	env, err := DecodeEnvelope(b)
	if err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	seq := `[null,"` + fmt.Sprint(s.LSN) + `"]`
	if s.LastCommit != 0 {
		seq = fmt.Sprintf(`["%d","%d"]`, s.LastCommit, s.LSN)
	}
	// Invalid UTF-8 comes back as U+FFFD, one per byte.
	valid := func(s string) string { return string([]rune(s)) }
	want := Source{Version: Version, Connector: Connector, Name: valid(name), TsMs: s.TsMs, Snapshot: s.Snapshot, DB: valid(db),
		Sequence: seq, Schema: valid(s.Schema), Table: valid(s.Table), TxID: int64(s.TxID), LSN: int64(s.LSN)}
	if env.Source != want || env.Op != op || env.Before != nil || env.After["job_id"] != "j1" || env.Transaction != nil {
		t.Fatalf("%s:\n got %+v\nwant %+v", b, env.Source, want)
	}
	tr, err := DecodeTrigger(b)
	if err != nil {
		t.Fatalf("DecodeTrigger(%s): %v", b, err)
	}
	var ref Trigger
	if err := json.Unmarshal(b, &ref); err != nil || !reflect.DeepEqual(*tr, ref) {
		t.Fatalf("DecodeTrigger %+v, encoding/json %+v (%v)", *tr, ref, err)
	}
	short := func(n int64) bool { return n > -1e18 && n < 1e18 } // intField reads at most 18 digits
	if _, fast := fastTrigger(b); !fast && isPlain(name, db, s.Schema, s.Table) && short(s.TsMs) && short(int64(s.LSN)) && short(int64(s.TxID)) {
		t.Fatalf("the fast path skipped an envelope the encoder wrote: %s", b)
	}
	if tr.Op != op || tr.Source.TxID != int64(s.TxID) || tr.Source.LSN != int64(s.LSN) || tr.Source.TsMs != s.TsMs || tr.Source.Snapshot != s.Snapshot {
		t.Fatalf("trigger %+v from %s", *tr, b)
	}
}

// isPlain reports whether every s is printable ASCII without escapes.
func isPlain(ss ...string) bool {
	for _, s := range ss {
		for i := 0; i < len(s); i++ {
			if !jsonPlain[s[i]] {
				return false
			}
		}
	}
	return true
}

// TestEnvelopeEncoder: what the reader's encoder writes is an Envelope
// that DecodeEnvelope and DecodeTrigger (on its fast path) read back.
func TestEnvelopeEncoder(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, db, op string
		s            EventSource
	}{
		{"jobs", "app", OpUpdate, EventSource{TsMs: 1795750232697, Snapshot: "false", LastCommit: 23456789, LSN: 23456999, Schema: "public", Table: "jobs", TxID: 12345}},
		{"pipeline1", "bench", OpCreate, EventSource{TsMs: 1, Snapshot: "false", LSN: 2, Schema: "public", Table: "jobs", TxID: 4294967295}},
		{"jobs", "app", OpRead, EventSource{TsMs: 1, Snapshot: "first", LSN: 2, Schema: "public", Table: "jobs"}},
		{"jobs", "dé\"b\\", OpDelete, EventSource{TsMs: 1, Snapshot: "last", LSN: 9, Schema: "s\n\t", Table: "t\x01\xff"}},
	} {
		checkEnvelope(t, c.name, c.db, &c.s, c.op)
	}
	b := encodeEnvelope("jobs", "app", &EventSource{Snapshot: "false"}, []byte("null"), OpTruncate)
	if env, err := DecodeEnvelope(b); err != nil || env.Op != OpTruncate || env.After != nil {
		t.Fatalf("truncate %s: %+v, %v", b, env, err)
	}
}

// FuzzEnvelopeEncoder: on any source block, the encoder writes an envelope
// that encoding/json, DecodeEnvelope and DecodeTrigger read back as written.
func FuzzEnvelopeEncoder(f *testing.F) {
	f.Add("jobs", "app", int64(1795750232697), uint8(0), uint64(23456789), uint64(23456999), "public", "jobs", uint64(12345), uint8(1))
	f.Add("a\"b", "\xff", int64(-1), uint8(2), uint64(0), uint64(1), "\u2028", "<t>", uint64(0), uint8(3))
	snapshots := []string{"false", "first", "true", "last"}
	ops := []string{OpCreate, OpUpdate, OpDelete, OpRead}
	f.Fuzz(func(t *testing.T, name, db string, tsMs int64, snap uint8, lastCommit, lsn uint64, schema, table string, txID uint64, op uint8) {
		s := EventSource{TsMs: tsMs, Snapshot: snapshots[snap%4], LastCommit: lastCommit >> 1, LSN: lsn >> 1,
			Schema: schema, Table: table, TxID: txID >> 1}
		checkEnvelope(t, name, db, &s, ops[op%4])
	})
}

// BenchmarkEnvelopeEncoder renders the source block and tail of one event,
// the part of every envelope that is not its rows.
func BenchmarkEnvelopeEncoder(b *testing.B) {
	h := NewSourceHead("pipeline1", "bench_pipeline_1")
	s := &EventSource{TsMs: 1795750232697, Snapshot: "false", LastCommit: 23456789, LSN: 23456999, Schema: "public", Table: "jobs", TxID: 12345}
	v := make([]byte, 0, 1024)
	for b.Loop() {
		v = AppendTail(h.AppendSource(v[:0], s), OpUpdate)
	}
	b.SetBytes(int64(len(v)))
}
