package schema

import (
	"slices"
	"testing"
)

// TestKeyForms: both key forms name the same job, and the candidates cover
// every form a topic may hold after an operator switched --key.
func TestKeyForms(t *testing.T) {
	for _, c := range []struct{ key, id string }{
		{`{"job_id":"j1"}`, "j1"}, {`{"job_id":42}`, "42"}, {`{"job_id":"a\"b"}`, `a"b`}, {"j1", "j1"}, {"{not json", "{not json"},
	} {
		if got := JobIDFromKey([]byte(c.key)); got != c.id {
			t.Errorf("JobIDFromKey(%s) = %q, want %q", c.key, got, c.id)
		}
	}
	want := []string{`{"job_id":"42"}`, `{"job_id":42}`, `42`}
	var got []string
	for _, k := range KeyCandidates("42") {
		got = append(got, string(k))
	}
	if !slices.Equal(got, want) {
		t.Errorf("KeyCandidates(42) = %q, want %q", got, want)
	}
	if n := len(KeyCandidates("j1")); n != 2 {
		t.Errorf("KeyCandidates(j1) has %d forms, want 2 (no number form)", n)
	}
}
