package main

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// microResult is one Go benchmark over every -count run.
type microResult struct {
	pkg    string
	name   string
	values map[string][]float64 // unit (ns/op, B/op, allocs/op, custom) → one value per run
	units  []string             // in the order go test printed them
}

// runMicro runs the repository's Go benchmarks of cfg.MicroPkgs, cfg.Runs
// times each.
func runMicro(ctx context.Context, cfg config) ([]microResult, error) {
	root, err := moduleRoot(ctx)
	if err != nil {
		return nil, err
	}
	args := []string{"test", "-run", "^$", "-bench", cfg.MicroBench, "-benchmem", "-benchtime", cfg.MicroTime, "-count", strconv.Itoa(cfg.Runs)}
	cmd := exec.CommandContext(ctx, "go", append(args, cfg.MicroPkgs...)...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("go %s: %v: %s", strings.Join(args, " "), err, tail(out, 1500))
	}
	return parseBench(string(out)), nil
}

var (
	benchLine   = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+(\d+)\s+(\S+ ns/op.*)$`)
	benchStart  = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?(?:\s|$)`)
	benchResult = regexp.MustCompile(`^(\d+)\s+(\S+ ns/op.*)$`)
)

// parseBench reads go test -bench output: "pkg:" lines name the package,
// "BenchmarkX-2  N  v unit  v unit ..." lines give one run of a benchmark.
// A benchmark that logs while it runs splits its line: the name, then the
// log, then "N  v unit ..." on a line of its own.
func parseBench(out string) []microResult {
	var res []microResult
	index := map[string]int{}
	pkg, pending := "", ""
	add := func(name, values string) {
		key := pkg + " " + name
		i, ok := index[key]
		if !ok {
			i = len(res)
			index[key] = i
			res = append(res, microResult{pkg: pkg, name: name, values: map[string][]float64{}})
		}
		f := strings.Fields(values)
		for j := 0; j+1 < len(f); j += 2 {
			v, err := strconv.ParseFloat(f[j], 64)
			if err != nil {
				continue
			}
			unit := f[j+1]
			if _, seen := res[i].values[unit]; !seen {
				res[i].units = append(res[i].units, unit)
			}
			res[i].values[unit] = append(res[i].values[unit], v)
		}
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg, pending = strings.TrimSpace(p), ""
			continue
		}
		if m := benchLine.FindStringSubmatch(line); m != nil {
			add(m[1], m[3])
			pending = ""
			continue
		}
		if m := benchStart.FindStringSubmatch(line); m != nil {
			pending = m[1]
			continue
		}
		if m := benchResult.FindStringSubmatch(line); m != nil && pending != "" {
			add(pending, m[2])
			pending = ""
		}
	}
	return res
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
