package schema

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadPipeline(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	p, err := LoadPipeline("")
	if err != nil || p.String() != "img_gen → vlm_analyze → yolo_detect → planner → overlay" {
		t.Fatalf("default pipeline %v, %v", p, err)
	}
	p, err = LoadPipeline(write("ok.json", `{"steps": ["gen", "caption", "ship"]}`))
	if err != nil || p.Last() != "ship" {
		t.Fatalf("custom pipeline %v, %v", p, err)
	}
	if tr, err := p.Trigger("caption"); err != nil || tr != "gen" {
		t.Fatalf("Trigger(caption) = %q, %v", tr, err)
	}
	for _, c := range []struct{ name, body, want string }{
		{"unknown key", `{"steps": ["a", "b"], "retries": 3}`, `no key "retries"; its keys are steps, workers`},
		{"cycle", `{"steps": ["a", "b", "a"]}`, "appears twice"},
		{"one step", `{"steps": ["a"]}`, "at least two steps"},
		{"bad name", `{"steps": ["a", "b c"]}`, "topic names allow only"},
		{"not json", `steps: [a, b]`, "expected {"},
	} {
		_, err := LoadPipeline(write(c.name+".json", c.body))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want it to say %q", c.name, err, c.want)
		}
	}
	if _, err := DefaultPipeline().Trigger("img_gen"); err == nil || !strings.Contains(err.Error(), "first step") {
		t.Errorf("Trigger(first) = %v", err)
	}
	if _, err := DefaultPipeline().Trigger("paint"); err == nil || !strings.Contains(err.Error(), "unknown step") {
		t.Errorf("Trigger(unknown) = %v", err)
	}
}
