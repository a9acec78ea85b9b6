package ops_test

import (
	"cmp"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/jobstream/jobstream/schema"
)

// TestComposeFile checks compose.yaml (and the Dockerfile) without a Docker
// engine: every jobstream service runs a real subcommand with real flags,
// every step has a worker service, the GPU steps reserve named GPUs with one
// member each (never `count`, which gives every replica GPU 0), Compose
// waits longer than the workers' grace before killing them, the servers
// have healthchecks, Kafka keeps its topics in its volume, Postgres and
// Kafka are reachable from the host, and the image trusts public CAs.
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
			Ports       []string       `yaml:"ports"`
			Volumes     []string       `yaml:"volumes"`
			StopGrace   string         `yaml:"stop_grace_period"`
			Healthcheck map[string]any `yaml:"healthcheck"`
			Environment map[string]any `yaml:"environment"`
			Deploy      struct {
				Resources struct {
					Reservations struct {
						Devices []struct {
							Capabilities []string `yaml:"capabilities"`
							Count        any      `yaml:"count"`
							DeviceIDs    []string `yaml:"device_ids"`
						} `yaml:"devices"`
					} `yaml:"reservations"`
				} `yaml:"resources"`
			} `yaml:"deploy"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	// The workers' settings not on their command line come from the
	// pipeline file the stack names, read as the image holds it (/app).
	file, _ := c.Services["reader"].Environment["JOBSTREAM_PIPELINE"].(string)
	if file != "ops/pipeline.json" {
		t.Fatalf("the stack's JOBSTREAM_PIPELINE is %q, want ops/pipeline.json (the file the image copies to /app)", file)
	}
	p, err := schema.LoadPipeline("pipeline.json")
	if err != nil {
		t.Fatal(err)
	}
	for step, ws := range p.Workers {
		argv := slices.Concat(ws.Command, ws.Serve)
		if len(argv) == 0 && ws.HTTP == "" {
			t.Errorf("pipeline.json: workers.%s has no executor", step)
			continue
		}
		if i := slices.Index(argv, "python3"); i >= 0 {
			argv = argv[i+1:]
		}
		if _, err := os.Stat("../" + argv[0]); err != nil && ws.HTTP == "" {
			t.Errorf("pipeline.json: workers.%s runs %s, which the repository (and the image's /app) lacks", step, argv[0])
		}
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
			gpu, ids := false, 0
			for _, d := range s.Deploy.Resources.Reservations.Devices {
				if slices.Contains(d.Capabilities, "gpu") {
					gpu, ids = true, ids+len(d.DeviceIDs)
					if d.Count != nil || len(d.DeviceIDs) == 0 {
						t.Errorf("worker service %s reserves GPUs by count, not device_ids: every replica would get GPU 0", name)
					}
				}
			}
			if wantGPU := step != "planner"; gpu != wantGPU {
				t.Errorf("worker service %s: GPU reservation %v, want %v", name, gpu, wantGPU)
			}
			// One member per reserved GPU, numbered as the container sees them.
			gpus := p.Workers[step].GPUs
			if k := slices.Index(args[:i], "--gpus"); k >= 0 && k+1 < i {
				gpus = strings.Split(args[k+1], ",")
			}
			if gpu {
				want := make([]string, ids)
				for n := range want {
					want[n] = strconv.Itoa(n)
				}
				if !slices.Equal(gpus, want) {
					t.Errorf("worker service %s reserves %d GPU(s) but runs GPUs %v (--gpus or the pipeline file), want %s", name, ids, gpus, strings.Join(want, ","))
				}
			}
			// Compose's stop_grace_period (10s by default) must outlast --grace.
			grace := cmp.Or(time.Duration(p.Workers[step].Grace), 30*time.Second)
			if k := slices.Index(args[:i], "--grace"); k >= 0 && k+1 < i {
				grace, _ = time.ParseDuration(args[k+1])
			}
			stop, err := time.ParseDuration(cmp.Or(s.StopGrace, "10s"))
			if err != nil || stop < grace+5*time.Second {
				t.Errorf("worker service %s: stop_grace_period %q does not outlast --grace %s", name, s.StopGrace, grace)
			}
		}
	}
	if strings.Contains(string(b), "--scale yolo_detect") || strings.Contains(string(b), "--scale vlm_analyze") {
		t.Error("compose.yaml suggests --scale for a GPU step: every replica would share one GPU")
	}

	// Kafka: the topics in the volume, a listener the host can reach.
	kafka := c.Services["kafka"]
	logDirs, _ := kafka.Environment["KAFKA_LOG_DIRS"].(string)
	inVolume := false
	for _, v := range kafka.Volumes {
		if parts := strings.Split(v, ":"); len(parts) >= 2 && logDirs != "" && strings.HasPrefix(logDirs, parts[1]) && !strings.HasPrefix(parts[0], "/") {
			inVolume = true
		}
	}
	if !inVolume {
		t.Errorf("Kafka's KAFKA_LOG_DIRS %q is not in a named volume %v: the topics die with the container", logDirs, kafka.Volumes)
	}
	advertised, _ := kafka.Environment["KAFKA_ADVERTISED_LISTENERS"].(string)
	hostPort := ""
	for _, l := range strings.Split(advertised, ",") {
		if strings.Contains(l, "://127.0.0.1:") || strings.Contains(l, "://localhost:") {
			hostPort = l[strings.LastIndex(l, ":")+1:]
		}
	}
	if hostPort == "" || !publishes(kafka.Ports, hostPort) {
		t.Errorf("Kafka advertises %q and publishes %v: no listener the host can reach", advertised, kafka.Ports)
	}
	if listeners, _ := kafka.Environment["KAFKA_LISTENERS"].(string); !strings.Contains(listeners, ":"+hostPort) {
		t.Errorf("Kafka listens on %q, not on the advertised host port %s", listeners, hostPort)
	}
	if !publishes(c.Services["postgres"].Ports, "5432") {
		t.Errorf("Postgres publishes %v: psql on the host cannot reach it", c.Services["postgres"].Ports)
	}

	// The runtime image trusts public CAs.
	df, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	stages := strings.Split(string(df), "\nFROM ")
	if runtime := stages[len(stages)-1]; !strings.Contains(runtime, "ca-certificates") {
		t.Error("the Dockerfile's runtime stage does not install ca-certificates: TLS to public CAs fails")
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

// publishes reports whether ports (Compose's short syntax) publish the
// container port on the host under the same number.
func publishes(ports []string, port string) bool {
	for _, p := range ports {
		parts := strings.Split(p, ":")
		if len(parts) >= 2 && parts[len(parts)-1] == port && parts[len(parts)-2] == port {
			return true
		}
	}
	return false
}
