package schema

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
)

// DefaultSteps is the pipeline order used when no config file is given.
var DefaultSteps = []string{"img_gen", "vlm_analyze", "yolo_detect", "planner", "overlay"}

// Pipeline is the ordered list of steps a job walks through. A job enters at
// (Steps[0], done); the worker of step S is triggered by (Trigger(S), done).
type Pipeline struct {
	// Steps in order, at least two, each a valid topic-name component.
	Steps []string `json:"steps"`
	// Workers holds the settings of each step's worker, by step (none for
	// the first step, which has no worker): `jobstream worker --step S`
	// reads its part, and its flags override it.
	Workers map[string]WorkerSettings `json:"workers,omitempty"`
}

// DefaultPipeline returns img_gen → vlm_analyze → yolo_detect → planner → overlay.
func DefaultPipeline() Pipeline { return Pipeline{Steps: slices.Clone(DefaultSteps)} }

// LoadPipeline reads a pipeline config file: JSON of the form
// {"steps": ["img_gen", "vlm_analyze", ...]}. Unknown keys are an error.
// An empty path gives the default pipeline.
func LoadPipeline(path string) (Pipeline, error) {
	if path == "" {
		return DefaultPipeline(), nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return Pipeline{}, fmt.Errorf("read pipeline config: %w", err)
	}
	p, err := ParsePipeline(data)
	if err != nil {
		return Pipeline{}, fmt.Errorf("pipeline config %s: %w", path, err)
	}
	return p, nil
}

// ParsePipeline reads a pipeline config from data (see LoadPipeline):
// {"steps": [...], "workers": {"<step>": {<WorkerSettings>}}}. Unknown keys
// and bad values are an error naming the key.
func ParsePipeline(data []byte) (Pipeline, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return Pipeline{}, fmt.Errorf("%w (expected {\"steps\": [\"a\", \"b\", ...], \"workers\": {...}})", err)
	}
	if err := knownKeys("", top, "steps", "workers"); err != nil {
		return Pipeline{}, err
	}
	var p Pipeline
	if err := json.Unmarshal(top["steps"], &p.Steps); err != nil || top["steps"] == nil {
		return Pipeline{}, fmt.Errorf(`"steps" must be a list of step names, such as ["img_gen", "vlm_analyze"]`)
	}
	if err := p.Validate(); err != nil {
		return Pipeline{}, err
	}
	if raw, ok := top["workers"]; ok {
		var workers map[string]json.RawMessage
		if err := json.Unmarshal(raw, &workers); err != nil {
			return Pipeline{}, fmt.Errorf(`"workers" must map step names to settings, such as {"vlm_analyze": {"serve": ["python3", "model.py"]}}`)
		}
		p.Workers = map[string]WorkerSettings{}
		for _, step := range slices.Sorted(maps.Keys(workers)) {
			if _, err := p.Trigger(step); err != nil {
				return Pipeline{}, fmt.Errorf("workers.%s: %w", step, err)
			}
			ws, err := parseWorkerSettings("workers."+step, workers[step])
			if err != nil {
				return Pipeline{}, err
			}
			p.Workers[step] = ws
		}
	}
	return p, nil
}

// Validate checks that the pipeline has at least two distinct steps, each a
// valid topic-name component.
func (p Pipeline) Validate() error {
	if len(p.Steps) < 2 {
		return fmt.Errorf("a pipeline needs at least two steps, got %d", len(p.Steps))
	}
	seen := map[string]bool{}
	for _, s := range p.Steps {
		if err := ValidStepName(s); err != nil {
			return err
		}
		if seen[s] {
			return fmt.Errorf("step %q appears twice; a pipeline is a line, not a cycle", s)
		}
		seen[s] = true
	}
	return nil
}

// Trigger returns the step whose completion starts step s.
func (p Pipeline) Trigger(s string) (string, error) {
	i := slices.Index(p.Steps, s)
	switch {
	case i < 0:
		return "", fmt.Errorf("unknown step %q; the pipeline's steps are %s", s, strings.Join(p.Steps, ", "))
	case i == 0:
		return "", fmt.Errorf("step %q is the first step: jobs enter the pipeline at (%s, done), so it has no worker; pick one of %s", s, s, strings.Join(p.Steps[1:], ", "))
	}
	return p.Steps[i-1], nil
}

// Last returns the final step.
func (p Pipeline) Last() string { return p.Steps[len(p.Steps)-1] }

// String renders the pipeline as "a → b → c".
func (p Pipeline) String() string { return strings.Join(p.Steps, " → ") }

// ValidStepName reports why s cannot be a step name, or nil. A step name is
// a component of a Kafka topic name: ASCII letters, digits, '.', '_', '-'.
func ValidStepName(s string) error {
	if s == "" {
		return fmt.Errorf("a step name must not be empty")
	}
	if len(s) > 200 {
		return fmt.Errorf("step name %.20q... is %d bytes; at most 200 fit in a topic name", s, len(s))
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("step name %q has %q; topic names allow only letters, digits, '.', '_' and '-'", s, r)
		}
	}
	return nil
}
