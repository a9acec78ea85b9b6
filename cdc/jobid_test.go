package cdc_test

import (
	"encoding/json"
	"testing"

	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
)

// TestJobIDKindsKeyedByText is issue 11 item 6 (reader side): whatever the
// type of job_id (text, varchar, uuid, integer, bigint), the Kafka key is
// the id's text form, for snapshot reads and streamed changes alike, and
// after.job_id is a JSON string (text, varchar, uuid) or number (integer,
// bigint), as Debezium renders them.
func TestJobIDKindsKeyedByText(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		typ, before, after string
		number             bool
	}{
		{"text", "j-1", "j-2", false},
		{"varchar(40)", "j-1", "j-2", false},
		{"uuid", "0b6f4a2e-8c1d-4b7e-9f3a-2d5c6e7f8a9b", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", false},
		{"integer", "41", "-42", true},
		{"bigint", "9223372036854775807", "9007199254740993", true},
	} {
		t.Run(c.typ, func(t *testing.T) {
			t.Parallel()
			e := harness.New(t)
			e.Exec(t, `ALTER TABLE jobs ALTER COLUMN job_id TYPE `+c.typ+` USING job_id::`+c.typ)
			e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ($1::text::`+c.typ+`, 'img_gen', 'done')`, c.before)
			startReader(t, e, nil)
			e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ($1::text::`+c.typ+`, 'img_gen', 'done')`, c.after)
			msgs := waitMessages(t, e, e.Topic("img_gen"), 2)
			ops := map[string]string{}
			for _, m := range msgs {
				var v struct {
					Op    string                     `json:"op"`
					After map[string]json.RawMessage `json:"after"`
				}
				if err := json.Unmarshal(m.Value, &v); err != nil {
					t.Fatal(err)
				}
				want := `"` + schema.JobIDFromKey(m.Key) + `"`
				if c.number {
					want = schema.JobIDFromKey(m.Key)
				}
				if got := string(v.After["job_id"]); got != want {
					t.Errorf("key %q: after.job_id %s, want %s", m.Key, got, want)
				}
				ops[schema.JobIDFromKey(m.Key)] = v.Op
			}
			if ops[c.before] != "r" || ops[c.after] != "c" {
				t.Fatalf("keys and ops %v, want %s: r, %s: c", ops, c.before, c.after)
			}
		})
	}
}
