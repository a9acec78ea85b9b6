package admin

import (
	"encoding/json"
	"testing"
	"time"
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
