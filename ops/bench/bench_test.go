package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	// The pipeline scenario runs this binary as its worker processes.
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	os.Exit(m.Run())
}

// TestSmoke runs every scenario but the micro-benchmarks once at tiny
// sizes: the bench code works end to end. It checks the shape of the
// output, never a speed.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Postgres, brokers and processes")
	}
	if _, err := exec.LookPath("pg_recvlogical"); err != nil {
		t.Skip("pg_recvlogical is not on PATH")
	}
	out := filepath.Join(t.TempDir(), "BENCHMARKS.md")
	cfg := config{
		Runs: 1, Quick: true, Out: out, Only: []string{"cdc", "latency", "loss", "pipeline", "memory"},
		Changes: 2_000, Transitions: 100, Rate: 400, Outage: 500 * time.Millisecond, PollInterval: 200 * time.Millisecond,
		Catchup: 2 * time.Second, PipelineJobs: 100, PipelineMembers: 2, BigTx: 5_000,
	}.withDefaults()
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var table, progress bytes.Buffer
	if err := run(ctx, cfg, &table, &progress); err != nil {
		t.Fatalf("bench: %v\nprogress:\n%s", err, progress.String())
	}
	t.Logf("\n%s", table.String())
	for _, want := range []string{"1. CDC throughput", "(b)/(a)", "2. Trigger latency", "floor", "3. Loss", "of 600 never acted on",
		"4. Pipeline throughput", "database alone", "5. Memory", "MiB", "PASS"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q", want)
		}
	}
	md, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Machine", "| PostgreSQL |", "## Results", "go run ./ops/bench -only cdc -runs 1 -quick", "## Against the published anchors"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("BENCHMARKS.md lacks %q", want)
		}
	}
}

func TestParseBench(t *testing.T) {
	t.Parallel()
	out := `goos: linux
goarch: amd64
pkg: github.com/jobstream/jobstream/cdc
cpu: Intel(R) Xeon(R) Processor
BenchmarkAppendRow-2   	  512343	      2210 ns/op	     512 B/op	       3 allocs/op
BenchmarkAppendRow-2   	  512343	      2190 ns/op	     512 B/op	       3 allocs/op
BenchmarkEnvelope/update-2 	  100000	     10400 ns/op	  45.10 MB/s	    1024 B/op	       7 allocs/op
BenchmarkBurst-2         	2026/11/27 00:57:11 INFO created replication slot slot=t_4
2026/11/27 00:57:18 INFO stopped slot=t_4 acknowledged=0/854DA68
       1	7491876033 ns/op	     58658 changes/s	786714024 B/op	 8237002 allocs/op
--- BENCH: BenchmarkBurst-2
    bench_test.go:168: 200000 changes in 2000 transactions drained in 3.41s: 58658 changes/s
PASS
ok  	github.com/jobstream/jobstream/cdc	3.1s
`
	res := parseBench(out)
	if len(res) != 3 {
		t.Fatalf("got %d benchmarks, want 3: %+v", len(res), res)
	}
	if res[2].name != "BenchmarkBurst" || res[2].values["changes/s"][0] != 58658 || res[2].values["ns/op"][0] != 7491876033 {
		t.Errorf("Burst (split by its log): %+v", res[2])
	}
	if res[0].name != "BenchmarkAppendRow" || len(res[0].values["ns/op"]) != 2 || median(res[0].values["ns/op"]) != 2200 {
		t.Errorf("AppendRow: %+v", res[0])
	}
	if got := strings.Join(res[1].units, ","); got != "ns/op,MB/s,B/op,allocs/op" {
		t.Errorf("units %s", got)
	}
	if res[1].pkg != "github.com/jobstream/jobstream/cdc" || res[1].values["allocs/op"][0] != 7 {
		t.Errorf("Envelope: %+v", res[1])
	}
}

func TestPercentile(t *testing.T) {
	t.Parallel()
	xs := make([]float64, 100)
	for i := range xs {
		xs[i] = float64(i + 1)
	}
	for _, c := range []struct{ p, want float64 }{{50, 50}, {95, 95}, {99, 99}, {100, 100}, {1, 1}} {
		if got := percentile(xs, c.p); got != c.want {
			t.Errorf("p%.0f = %v, want %v", c.p, got, c.want)
		}
	}
	if got := thousands(1234567.4); got != "1,234,567" {
		t.Errorf("thousands = %s", got)
	}
}

func TestHandoffs(t *testing.T) {
	t.Parallel()
	at := func(msec int) time.Time { return time.Unix(0, 0).Add(time.Duration(msec) * time.Millisecond) }
	marks := map[jobStep]mark{
		{"a", "vlm_analyze"}: {at(3), at(10)}, {"a", "yolo_detect"}: {at(12), at(20)},
		{"a", "planner"}: {at(25), at(30)}, {"a", "overlay"}: {at(101), at(102)}, // past the cutoff
		{"b", "yolo_detect"}: {at(5), at(6)}, // no vlm_analyze: nothing of b counts
	}
	got := handoffs([]string{"a", "b"}, map[string]time.Time{"a": at(1), "b": at(1)}, marks, at(100))
	if want := []float64{2, 2, 5}; !slices.Equal(got, want) {
		t.Errorf("handoffs = %v, want %v", got, want)
	}
}
