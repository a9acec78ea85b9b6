package schema

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// TestDeadLetterShapes: both writers' letters keep the field names they
// always had; a worker's letter is byte for byte what it wrote as a map
// before DeadLetter existed, and every letter decodes back to itself.
func TestDeadLetterShapes(t *testing.T) {
	t.Parallel()
	event := []byte(`{"before":null,"after":{"job_id":"j1","current_step":"img_gen","status":"done"},"op":"u"}`)
	worker := DeadLetter{Reason: "step failed", Step: "vlm_analyze", JobID: "j1", Attempts: 3, Error: "exit status 1", TriggerLSN: "42"}
	worker.SetEvent(event)
	old, _ := json.Marshal(map[string]any{"reason": "step failed", "step": "vlm_analyze", "job_id": "j1", "attempts": 3,
		"error": "exit status 1", "event": json.RawMessage(event), "trigger_lsn": "42"})
	if got := worker.Encode(); !bytes.Equal(got, old) {
		t.Errorf("worker letter\n %s\nwant\n %s", got, old)
	}
	for _, c := range []struct {
		name   string
		letter DeadLetter
		fields []string
	}{
		{"worker", worker, []string{"attempts", "error", "event", "job_id", "reason", "step", "trigger_lsn"}},
		{"reader", DeadLetter{Reason: "the row has no job_id, so the event has no key", Topic: "jobs.img_gen", LSN: 23456999, Event: event},
			[]string{"event", "lsn", "reason", "topic"}},
		{"reader, event too large", DeadLetter{Reason: "event is 2000000 bytes", Topic: "jobs.img_gen", LSN: 7},
			[]string{"event", "lsn", "reason", "topic"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := c.letter.Encode()
			var m map[string]json.RawMessage
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatalf("%s: %v", b, err)
			}
			var names []string
			for k := range m {
				names = append(names, k)
			}
			if strings.Join(sorted(names), " ") != strings.Join(c.fields, " ") {
				t.Errorf("%s: fields %v, want %v", b, sorted(names), c.fields)
			}
			got, err := DecodeDeadLetter(b)
			if err != nil {
				t.Fatal(err)
			}
			want := c.letter
			if want.Event == nil {
				want.Event = json.RawMessage("null")
			}
			if !reflect.DeepEqual(*got, want) {
				t.Errorf("decoded %+v, want %+v", *got, want)
			}
		})
	}
}

func sorted(s []string) []string {
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s
}

// TestDeadLetterSetEvent: a consumed value is carried as it is when it is
// JSON, as a string when not, cut to MaxLetterEvent when longer; a
// letter's event keeps its very bytes (no HTML escaping).
func TestDeadLetterSetEvent(t *testing.T) {
	t.Parallel()
	big := bytes.Repeat([]byte("x"), MaxLetterEvent+10)
	for _, c := range []struct {
		name      string
		in        []byte
		want      string
		truncated bool
	}{
		{"json", []byte(`{"a":"<b>&"}`), `{"a":"<b>&"}`, false},
		{"not json", []byte("not json"), `"not json"`, false},
		{"gone", nil, `""`, false},
		{"too long", big, `"` + string(big[:MaxLetterEvent]) + `"`, true},
	} {
		var l DeadLetter
		l.SetEvent(c.in)
		if string(l.Event) != c.want || l.EventTruncated != c.truncated {
			t.Errorf("%s: event %.40s (truncated %v), want %.40s (%v)", c.name, l.Event, l.EventTruncated, c.want, c.truncated)
		}
		if !json.Valid(l.Encode()) {
			t.Errorf("%s: letter is not JSON", c.name)
		}
	}
	l := DeadLetter{Reason: "r", Event: json.RawMessage(`{"a":"<b>"}`)}
	if got := string(l.Encode()); got != `{"event":{"a":"<b>"},"reason":"r"}` {
		t.Errorf("letter %s", got)
	}
	l.Event = json.RawMessage(`{not json`)
	if got := string(l.Encode()); got != `{"event":"{not json","reason":"r"}` {
		t.Errorf("letter with a broken event %s", got)
	}
}
