package schema

import (
	"encoding/json"
	"reflect"
	"testing"
)

var realEnv = []byte(`{"before":{"job_id":"job-1","current_step":"img_gen","status":"running","payload":"{}","results":"{\"img_gen\": {\"ok\": true}}","error":null,"updated_at":"2026-11-27T03:30:33.123456Z"},"after":{"job_id":"job-1","current_step":"img_gen","status":"done","payload":"{}","results":"{\"img_gen\": {\"ok\": true}}","error":null,"updated_at":"2026-11-27T03:30:33.223456Z"},"source":{"version":"jobstream-0.1.0","connector":"postgresql","name":"pipeline1","ts_ms":1795750232697,"snapshot":"false","db":"bench_pipeline_1","sequence":"[\"23456789\",\"23456999\"]","schema":"public","table":"jobs","txId":12345,"lsn":23456999,"xmin":null},"op":"u","ts_ms":1795750232699,"transaction":null}`)

// FuzzDecodeTrigger: the worker's one-pass decoder of the fields it needs gives
// what json.Unmarshal gives, result and error, on any input.
func FuzzDecodeTrigger(f *testing.F) {
	f.Add(realEnv)
	for _, s := range []string{
		`{"before":null,"after":{"job_id":"j1","current_step":"img_gen","status":"done","payload":"{}"},"source":{"version":"jobstream-0.1.0","connector":"postgresql","name":"jobs","ts_ms":1,"snapshot":"false","db":"d","sequence":"[\"1\",\"2\"]","schema":"public","table":"jobs","txId":7,"lsn":2,"xmin":null},"op":"c","ts_ms":2,"transaction":null}`,
		`{"before":{"job_id":"j1"},"after":null,"op":"d"}`, `{"after":{"job_id":7,"status":["done"]}}`, `{"after":`, `null`, "\xff\xfe\x00",
		`{"OP":"c"}`, `{"op":"c","op":"u"}`, `{"after":{"job_id":"a"},"after":{"status":"done"}}`, `{"source":{"txid":5}}`, `{"source":{"txId":1.0}}`,
		`{"source":{"txId":-0,"lsn":01}}`, `{"after":{"job_id":"\u00e9"}}`, `{"after":{"job_id":"é"}}`, `{"after":{"job_id":"\xff"}}`,
		`{"\u006fp":"c"}`, `{"after":{"Ĵob_id":"x"}}`, `{"after":{"STATUS":"done"}}`, `{"a":[1,2,{"b":[true,false,null,-1.5e+3]}]}`,
		` {"op" : "u" } `, `{"op":"u"}x`, `{"op":"u",}`, `{"after":{"job_id":null,"current_step":null}}`, `{"source":null,"after":null}`,
		`{"source":{"ts_ms":99999999999999999999}}`, `{"source":{"ts_ms":-9223372036854775808}}`, `[]`, `"x"`, `{}`, `{"x":"\ud800"}`,
		`{"x":"a\tb"}`, `{"op":"a\u0000"}`, `{"after":{"ſtatus":"done"}}`, `{"source":{"snapshot":"true","txId":4294967296}}`,
		`{"after":{"job_id":42,"status":"done"}}`, `{"after":{"job_id":-0}}`, `{"after":{"job_id":1e3}}`, `{"after":{"job_id":1.5}}`,
		`{"after":{"job_id":01}}`, `{"after":{"job_id":true}}`, `{"after":{"job_id":{}}}`, `{"after":{"job_id":99999999999999999999999}}`,
		`{"after":{"job_id":"a","job_id":7}}`, `{"after":{"job_id":7,"JOB_ID":"x"}}`, `{"after":"x"}`, `{"after":[]}`,
		`{"schema":{"type":"struct"},"payload":{"op":"c","after":{"job_id":"j1","status":"done"}}}`, `{"payload":{"op":"u"},"schema":null}`,
		`{"schema":{},"payload":null}`, `{"schema":{},"payload":{"op":"c"},"op":"u"}`, `{"schema":{},"schema":{},"payload":{}}`,
		`{"schema":{},"payload":[1]}`, `{"schema":{"fields":[}},"payload":{}}`, `{"schema":{}}`, `{"payload":{"op":"c"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var want Trigger
		ref, _ := Unwrap(b) // Kafka Connect's schema/payload form is read as its payload
		werr := json.Unmarshal(ref, &want)
		got, err := DecodeTrigger(b)
		if (err != nil) != (werr != nil) {
			t.Fatalf("%q: err %v, want %v", b, err, werr)
		}
		if err != nil {
			if err.Error() != werr.Error() {
				t.Fatalf("%q: err %v, want %v", b, err, werr)
			}
			return
		}
		if !reflect.DeepEqual(*got, want) {
			t.Fatalf("%q: got %+v, want %+v", b, *got, want)
		}
		if ft, ok := fastTrigger(ref); ok && !reflect.DeepEqual(*ft, want) {
			t.Fatalf("fast %q", b)
		}
	})
}

// TestDecodeTriggerJobIDKinds is issue 11 item 6 (decoder): job_id comes as
// a JSON string from text, varchar and uuid keys and as a JSON number from
// integer and bigint keys; both give the id's text, on the fast path and
// through encoding/json alike. Other kinds are errors, never a silent "".
func TestDecodeTriggerJobIDKinds(t *testing.T) {
	t.Parallel()
	env := func(id string) []byte {
		return []byte(`{"before":null,"after":{"job_id":` + id + `,"current_step":"img_gen","status":"done","n":1.5},` +
			`"source":{"version":"v","ts_ms":1,"snapshot":"false","txId":7,"lsn":2,"xmin":null},"op":"c","ts_ms":2,"transaction":null}`)
	}
	for _, c := range []struct {
		name, json string
		want       *string
		fast       bool // the fast path reads it
		err        bool
	}{
		{"text", `"job-1"`, ptr("job-1"), true, false},
		{"uuid", `"0b6f4a2e-8c1d-4b7e-9f3a-2d5c6e7f8a9b"`, ptr("0b6f4a2e-8c1d-4b7e-9f3a-2d5c6e7f8a9b"), true, false},
		{"integer", `42`, ptr("42"), true, false},
		{"negative", `-7`, ptr("-7"), true, false},
		{"zero", `0`, ptr("0"), true, false},
		{"bigint max", `9223372036854775807`, ptr("9223372036854775807"), true, false},
		{"bigint min", `-9223372036854775808`, ptr("-9223372036854775808"), true, false},
		{"escaped string", `"a\nb"`, ptr("a\nb"), false, false},
		{"null", `null`, nil, true, false},
		{"fraction", `1.5`, nil, false, true},
		{"exponent", `1e3`, nil, false, true},
		{"boolean", `true`, nil, false, true},
		{"object", `{"id":1}`, nil, false, true},
		{"leading zero", `042`, nil, false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := env(c.json)
			got, err := DecodeTrigger(b)
			if c.err {
				if err == nil {
					t.Fatalf("job_id %s: no error, got %+v", c.json, got.After)
				}
				return
			}
			if err != nil {
				t.Fatalf("job_id %s: %v", c.json, err)
			}
			if got.After == nil || !reflect.DeepEqual(got.After.JobID, c.want) || got.After.Status != "done" || got.After.CurrentStep != "img_gen" {
				t.Fatalf("job_id %s: got %+v", c.json, got.After)
			}
			var want Trigger
			if err := json.Unmarshal(b, &want); err != nil || !reflect.DeepEqual(*got, want) {
				t.Fatalf("job_id %s: encoding/json gives %+v (%v), DecodeTrigger %+v", c.json, want.After, err, got.After)
			}
			if _, ok := fastTrigger(b); ok != c.fast {
				t.Fatalf("job_id %s: fast path taken %v, want %v", c.json, ok, c.fast)
			}
		})
	}
}

func ptr(s string) *string { return &s }

func TestFastPathTaken(t *testing.T) {
	if _, ok := fastTrigger(realEnv); !ok {
		t.Fatal("fast path not taken on a real envelope")
	}
}

func BenchmarkDecodeTrigger(b *testing.B) {
	b.Run("fast", func(b *testing.B) {
		b.SetBytes(int64(len(realEnv)))
		for b.Loop() {
			DecodeTrigger(realEnv)
		}
	})
	b.Run("json", func(b *testing.B) {
		b.SetBytes(int64(len(realEnv)))
		for b.Loop() {
			var t Trigger
			json.Unmarshal(realEnv, &t)
		}
	})
}
