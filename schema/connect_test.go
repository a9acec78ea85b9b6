package schema

import (
	"bytes"
	"encoding/json"
	"testing"
)

// TestUnwrap: a value in Kafka Connect's schema/payload form gives its
// payload; anything else is left as it is.
func TestUnwrap(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		in, want string
		ok       bool
	}{
		{`{"schema":{"type":"string","optional":false},"payload":"x"}`, `"x"`, true},
		{` { "payload" : {"a":[1,2]} , "schema" : null } `, `{"a":[1,2]}`, true},
		{`{"schema":{},"payload":null}`, `null`, true},
		{`{"before":null,"after":{"job_id":"j1"}}`, ``, false},
		{`{"schema":{}}`, ``, false},
		{`{"payload":1}`, ``, false},
		{`{"schema":{},"payload":1,"op":"c"}`, ``, false},
		{`{"schema":{},"payload":1,"payload":2}`, ``, false},
		{`{"schema":{,"payload":1}`, ``, false},
		{`{"schema":{},"payload":1}x`, ``, false},
		{`{"schema":{},"payload":t`, ``, false},
		{`{"schema":t,"payload":1}`, ``, false},
		{`j1`, ``, false},
		{``, ``, false},
	} {
		got, ok := Unwrap([]byte(c.in))
		if ok != c.ok || ok && string(got) != c.want || !ok && string(got) != c.in {
			t.Errorf("Unwrap(%s) = %s, %v; want %s, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

// TestConnectKeys: JobIDFromKey reads a key struct in the schema/payload
// form, and KeyCandidates holds the form the reader writes for each job_id
// type, given the key struct's name.
func TestConnectKeys(t *testing.T) {
	t.Parallel()
	name := ConnectName("jobs", "public", "jobs", "Key")
	for _, c := range []struct {
		id, field string
		numeric   bool
	}{
		{"j1", ConnectJobIDString, false},
		{"0b6f4a2e-8c1d-4b7e-9f3a-2d5c6e7f8a9b", ConnectJobIDUUID, false},
		{"42", ConnectJobIDInt32, true},
		{"-7", ConnectJobIDInt64, true},
		{"3", ConnectJobIDInt16, true},
	} {
		key := ConnectWrap(AppendConnectKeySchema(nil, "jobs", "public", "jobs", []byte(c.field)), Key(c.id, c.numeric))
		if !json.Valid(key) {
			t.Fatalf("invalid key %s", key)
		}
		if got := JobIDFromKey(key); got != c.id {
			t.Errorf("JobIDFromKey(%s) = %q, want %q", key, got, c.id)
		}
		found := false
		for _, k := range KeyCandidates(c.id, name) {
			found = found || bytes.Equal(k, key)
		}
		if !found {
			t.Errorf("KeyCandidates(%q, %q) lacks %s", c.id, name, key)
		}
	}
	if n := len(KeyCandidates("j1")); n != 2 {
		t.Errorf("KeyCandidates without Connect names: %d keys, want 2", n)
	}
}

// TestDecodeConnectEnvelope: DecodeTrigger and DecodeEnvelope read an
// envelope in the schema/payload form as its payload, on the fast path.
func TestDecodeConnectEnvelope(t *testing.T) {
	t.Parallel()
	wrapped := ConnectWrap([]byte(`{"type":"struct","fields":[],"optional":false,"name":"p.public.jobs.Envelope","version":2}`), realEnv)
	got, err := DecodeTrigger(wrapped)
	if err != nil || got.Op != "u" || got.After == nil || *got.After.JobID != "job-1" || got.After.Status != "done" || got.Source.LSN != 23456999 {
		t.Fatalf("DecodeTrigger: %+v, %v", got, err)
	}
	env, err := DecodeEnvelope(wrapped)
	if err != nil || env.Op != "u" || env.After["status"] != "done" {
		t.Fatalf("DecodeEnvelope: %+v, %v", env, err)
	}
}

// BenchmarkDecodeTriggerConnect is BenchmarkDecodeTrigger's fast case with
// the envelope in the schema/payload form, with the jobs table's schema.
func BenchmarkDecodeTriggerConnect(b *testing.B) {
	fields := `{"type":"string","optional":false,"field":"job_id"},{"type":"string","optional":true,"field":"current_step"},` +
		`{"type":"string","optional":false,"field":"status"},{"type":"string","optional":false,"name":"io.debezium.data.Json","version":1,"field":"payload"},` +
		`{"type":"string","optional":false,"name":"io.debezium.data.Json","version":1,"field":"results"},{"type":"string","optional":true,"field":"error"},` +
		`{"type":"string","optional":false,"name":"io.debezium.time.ZonedTimestamp","version":1,"field":"updated_at"}`
	v := ConnectWrap(AppendConnectEnvelopeSchema(nil, "pipeline1", "public", "jobs", []byte(fields)), realEnv)
	b.SetBytes(int64(len(v)))
	for b.Loop() {
		if _, err := DecodeTrigger(v); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzUnwrap: what Unwrap takes for the schema/payload form is a JSON
// object of exactly those two members, and its payload is that member's
// value; it never panics.
func FuzzUnwrap(f *testing.F) {
	for _, s := range []string{`{"schema":{"type":"string"},"payload":"x"}`, `{"payload":null,"schema":{}}`, `{"schema":{},"payload":t`,
		`{"schema":1,"payload":[1,{"a":"b"}]}`, `{"schema":{},"payload":1,"x":2}`, ` {"schema" : {} , "payload" : {} } `, `{"schema":`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, ok := Unwrap(b)
		if !ok {
			if !bytes.Equal(p, b) {
				t.Fatalf("not unwrapped, yet %q became %q", b, p)
			}
			return
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(b, &m); err != nil || len(m) != 2 || m["schema"] == nil || m["payload"] == nil {
			t.Fatalf("unwrapped %q: %v, members %v", b, err, m)
		}
		if !bytes.Equal(bytes.TrimSpace(m["payload"]), p) {
			t.Fatalf("payload %q, encoding/json reads %q", p, m["payload"])
		}
	})
}
