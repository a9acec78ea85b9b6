package admin

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// A replay mark becomes the rewind it made: the change from its from_state
// to its rewound_to that committed last before it, in LSN order; a mark
// with no such change stays a "replay" entry; a change delivered twice is
// shown once.
func TestMarkRewinds(t *testing.T) {
	t0 := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	mark := func(from string, at time.Time) json.RawMessage {
		b, _ := json.Marshal(ReplayMark{Step: "planner", FromState: []string{from, "done"}, RewoundTo: []string{"yolo_detect", "done"}, At: at})
		return b
	}
	change := func(lsn int64, step, status string) AuditEntry {
		return AuditEntry{Kind: "change", Op: "u", LSN: lsn, Step: step, Status: status, Time: t0.Add(time.Duration(lsn) * time.Millisecond)}
	}
	entries := []AuditEntry{
		change(10, "yolo_detect", "done"),
		change(20, "planner", "running"),
		change(30, "planner", "done"),
		change(40, "overlay", "running"),
		change(50, "overlay", "done"),
		change(60, "yolo_detect", "done"),
		change(60, "yolo_detect", "done"), // delivered twice
		{Kind: "replay", Detail: mark("overlay", t0.Add(61*time.Millisecond)), Time: t0.Add(time.Second)},
		{Kind: "replay", Detail: mark("planner", t0.Add(62*time.Millisecond)), Time: t0.Add(time.Second)},
	}
	got := markRewinds(dedupe(entries))
	var kinds []string
	for _, e := range got {
		kinds = append(kinds, e.Kind)
	}
	want := []string{"change", "change", "change", "change", "change", "rewind", "replay"}
	if len(kinds) != len(want) {
		t.Fatalf("kinds %v, want %v", kinds, want)
	}
	for i := range want {
		if kinds[i] != want[i] {
			t.Fatalf("kinds %v, want %v", kinds, want)
		}
	}
	var m ReplayMark
	if err := json.Unmarshal(got[5].Detail, &m); err != nil || m.FromState[0] != "overlay" {
		t.Fatalf("the rewind carries %s, want the mark from overlay", got[5].Detail)
	}
}

// A delete's entry has the step and status of its before only when before
// is the whole old row (REPLICA IDENTITY FULL); under the default replica
// identity before is the key with what Debezium writes for the NOT NULL
// columns (status 'pending', its DEFAULT), which is no state of the job.
func TestChangeEntryOfDelete(t *testing.T) {
	for _, c := range []struct{ name, before, step, status string }{
		{"key only", `{"job_id":"j1","current_step":null,"status":"pending","updated_at":"1970-01-01T00:00:00Z"}`, "", ""},
		{"whole row", `{"job_id":"j1","current_step":"planner","status":"done","updated_at":"2026-11-26T10:00:00.000000Z"}`, "planner", "done"},
	} {
		var e AuditEntry
		changeEntry(&e, kafka.Message{Value: []byte(`{"before":` + c.before + `,"after":null,"source":{"ts_ms":1,"lsn":2},"op":"d","ts_ms":1}`)})
		if e.Kind != "change" || e.Op != "d" || e.Step != c.step || e.Status != c.status {
			t.Errorf("%s: %+v, want step %q status %q", c.name, e, c.step, c.status)
		}
	}
}
