package schema

import (
	"encoding/json"
	"testing"
)

// FuzzDecodeEnvelope is the worker's event parsing: whatever bytes arrive in
// a step topic, decoding returns an envelope or an error, never panics, and
// a row it extracts has a job_id.
func FuzzDecodeEnvelope(f *testing.F) {
	f.Add([]byte(`{"before":null,"after":{"job_id":"j1","current_step":"img_gen","status":"done","payload":"{}"},` +
		`"source":{"version":"jobstream-0.1.0","connector":"postgresql","name":"jobs","ts_ms":1,"snapshot":"false","db":"d",` +
		`"sequence":"[\"1\",\"2\"]","schema":"public","table":"jobs","txId":7,"lsn":2,"xmin":null},"op":"c","ts_ms":2,"transaction":null}`))
	f.Add([]byte(`{"before":{"job_id":"j1"},"after":null,"op":"d"}`))
	f.Add([]byte(`{"after":{"job_id":7,"status":["done"]}}`))
	f.Add([]byte(`{"after":`))
	f.Add([]byte(`null`))
	f.Add([]byte{0xff, 0xfe, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := DecodeEnvelope(b)
		if err != nil {
			if env != nil {
				t.Fatal("an envelope and an error")
			}
			return
		}
		for _, m := range []map[string]any{env.Before, env.After} {
			if row, ok := Row(m); ok && row.JobID == "" && m["job_id"] != "" {
				t.Fatalf("row without job_id from %v", m)
			}
		}
		if _, err := json.Marshal(env); err != nil {
			t.Fatalf("decoded envelope does not encode: %v", err)
		}
	})
}
