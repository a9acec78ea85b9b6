package ops_test

import (
	"os"
	"slices"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/jobstream/jobstream/schema"
)

// TestComposeFile checks compose.yaml without a Docker engine: every
// jobstream service runs a real subcommand with real flags, every step has a
// worker service, the GPU steps reserve GPUs, and the servers have
// healthchecks.
func TestComposeFile(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Services map[string]struct {
			Image       string         `yaml:"image"`
			Command     []string       `yaml:"command"`
			Healthcheck map[string]any `yaml:"healthcheck"`
			Environment map[string]any `yaml:"environment"`
			Deploy      struct {
				Resources struct {
					Reservations struct {
						Devices []struct {
							Capabilities []string `yaml:"capabilities"`
						} `yaml:"devices"`
					} `yaml:"reservations"`
				} `yaml:"resources"`
			} `yaml:"deploy"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	workers := map[string]bool{}
	for name, s := range c.Services {
		if s.Image != "jobstream:dev" {
			if s.Healthcheck == nil {
				t.Errorf("service %s has no healthcheck", name)
			}
			continue
		}
		if len(s.Command) == 0 {
			t.Errorf("service %s has no command", name)
			continue
		}
		if s.Environment["DATABASE_URL"] == nil || s.Environment["KAFKA_BROKERS"] == nil {
			t.Errorf("service %s lacks DATABASE_URL or KAFKA_BROKERS", name)
		}
		// The flags before "--" must parse: ask for --help after them.
		args := slices.Clone(s.Command)
		i := slices.Index(args, "--")
		if i < 0 {
			i = len(args)
		}
		check := append(append(slices.Clone(args[:i]), "--help"), args[i:]...)
		if code, _, stderr := runMain(t, check...); code != 0 {
			t.Errorf("service %s: `jobstream %v` is not a valid command line (exit %d): %s", name, s.Command, code, stderr)
		}
		if args[0] == "worker" {
			j := slices.Index(args, "--step")
			if j < 0 || j+1 >= len(args) {
				t.Errorf("worker service %s has no --step", name)
				continue
			}
			step := args[j+1]
			if _, err := schema.DefaultPipeline().Trigger(step); err != nil {
				t.Errorf("worker service %s: %v", name, err)
			}
			workers[step] = true
			gpu := false
			for _, d := range s.Deploy.Resources.Reservations.Devices {
				gpu = gpu || slices.Contains(d.Capabilities, "gpu")
			}
			if wantGPU := step != "planner"; gpu != wantGPU {
				t.Errorf("worker service %s: GPU reservation %v, want %v", name, gpu, wantGPU)
			}
		}
	}
	for _, step := range schema.DefaultSteps[1:] {
		if !workers[step] {
			t.Errorf("compose.yaml has no worker for step %s", step)
		}
	}
	for _, need := range []string{"postgres", "kafka", "reader", "migrate"} {
		if _, ok := c.Services[need]; !ok {
			t.Errorf("compose.yaml has no %s service", need)
		}
	}
}
