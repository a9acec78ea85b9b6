package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		stop()
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	err = run(ctx, cfg, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// scenarios in the order they run.
var scenarios = []string{"cdc", "latency", "loss", "pipeline", "memory", "serve", "console", "peers", "scale", "txshape", "micro"}

// config is what one invocation measures. Zero sizes take the defaults of
// the issue (or, with Quick, of a smoke run).
type config struct {
	// Runs is how many times each scenario runs; the table shows medians (default 3).
	Runs int
	// Quick shrinks every size for a smoke run.
	Quick bool
	// Long adds the sizes that take long (scenario 11's backlog of
	// 1,000,000 jobs): make bench-long.
	Long bool
	// Out is the Markdown report to write ("" writes none).
	Out string
	// Only lists the scenarios to run (default all).
	Only []string
	// Dir is the work folder (default a fresh temporary one, removed after).
	Dir string
	// Keep keeps the work folder (logs, profiles) after the run.
	Keep bool
	// Profile, when set, is a folder for CPU profiles of the reader
	// (scenario 1), of the reader and worker under the latency load
	// (scenario 2) and of the worker processes (scenario 4).
	Profile string
	// Jobstream is a prebuilt jobstream binary (default: go build ./ops/jobstream).
	Jobstream string

	// Changes is the number of changes of scenario 1 (default 200,000).
	Changes int
	// CDCPasses is how many times per run pg_recvlogical and the reader
	// each stream them, alternately (default 3; quick: 1).
	CDCPasses int
	// Transitions is the number of measured transitions per system in
	// scenario 2 (default 2,000).
	Transitions int
	// Rate is the transitions per second of scenarios 2 and 3 (default 200).
	Rate int
	// Outage is how long the listener or worker is away in scenario 3
	// (default 5s); the run lasts three outages.
	Outage time.Duration
	// PollInterval is the polling loop's interval (default 1s).
	PollInterval time.Duration
	// Members is the group members per step of the jobstream workers
	// (default 2 in scenarios 2 and 3, 4 in scenario 4).
	LatencyMembers, PipelineMembers int
	// PipelineJobs is the number of jobs of scenario 4 (default 10,000).
	PipelineJobs int
	// BigTx is the row count of scenario 5's transaction (default 1,000,000).
	BigTx int
	// MicroPkgs are the packages whose Go benchmarks run in scenario 6.
	MicroPkgs []string
	// MicroTime is go test's -benchtime (default 1s; quick: 100ms).
	MicroTime string
	// MicroBench is go test's -bench pattern (default ".").
	MicroBench string
	// Catchup is how long after the last commit of scenarios 2 and 3 a
	// system may still act before what it has not acted on counts as lost
	// (default 5s).
	Catchup time.Duration
}

func (c config) withDefaults() config {
	c.Runs = cmp.Or(c.Runs, 3)
	c.Rate = cmp.Or(c.Rate, 200)
	c.PollInterval = cmp.Or(c.PollInterval, time.Second)
	c.LatencyMembers = cmp.Or(c.LatencyMembers, 2)
	c.PipelineMembers = cmp.Or(c.PipelineMembers, 4)
	if len(c.Only) == 0 {
		c.Only = scenarios
	}
	if len(c.MicroPkgs) == 0 {
		c.MicroPkgs = []string{"./cdc/", "./schema/", "./consumers/"}
	}
	if c.Quick {
		c.Changes = cmp.Or(c.Changes, 10_000)
		c.CDCPasses = cmp.Or(c.CDCPasses, 1)
		c.Transitions = cmp.Or(c.Transitions, 400)
		c.Outage = cmp.Or(c.Outage, time.Second)
		c.PipelineJobs = cmp.Or(c.PipelineJobs, 1_000)
		c.BigTx = cmp.Or(c.BigTx, 50_000)
		c.MicroTime = cmp.Or(c.MicroTime, "100ms")
		c.Catchup = cmp.Or(c.Catchup, max(2*time.Second, 2*c.PollInterval))
	}
	c.Changes = cmp.Or(c.Changes, 200_000)
	c.CDCPasses = cmp.Or(c.CDCPasses, 3)
	c.Transitions = cmp.Or(c.Transitions, 2_000)
	c.Outage = cmp.Or(c.Outage, 5*time.Second)
	c.PipelineJobs = cmp.Or(c.PipelineJobs, 10_000)
	c.BigTx = cmp.Or(c.BigTx, 1_000_000)
	c.MicroTime = cmp.Or(c.MicroTime, "1s")
	c.MicroBench = cmp.Or(c.MicroBench, ".")
	c.Catchup = cmp.Or(c.Catchup, max(5*time.Second, 3*c.PollInterval))
	return c
}

func (c config) validate() error {
	for _, s := range c.Only {
		if !slices.Contains(scenarios, s) {
			return fmt.Errorf("-only %q: scenarios are %s", s, strings.Join(scenarios, ","))
		}
	}
	switch {
	case c.Runs < 1 || c.Runs > 50:
		return fmt.Errorf("-runs %d is out of range 1..50", c.Runs)
	case c.Changes < 2:
		return fmt.Errorf("-changes %d: need at least 2", c.Changes)
	case c.CDCPasses < 1 || c.CDCPasses > 20:
		return fmt.Errorf("-cdc-passes %d is out of range 1..20", c.CDCPasses)
	case c.Transitions < 10:
		return fmt.Errorf("-transitions %d: need at least 10", c.Transitions)
	case c.Rate < 1 || c.Rate > 10_000:
		return fmt.Errorf("-rate %d is out of range 1..10000", c.Rate)
	case c.Outage < 100*time.Millisecond:
		return fmt.Errorf("-outage %s is too short; use 100ms or more", c.Outage)
	case c.PollInterval < 10*time.Millisecond:
		return fmt.Errorf("-poll-interval %s is too short; use 10ms or more", c.PollInterval)
	case c.PipelineJobs < 1 || c.BigTx < 1:
		return errors.New("-pipeline-jobs and -bigtx must be positive")
	case c.LatencyMembers < 1 || c.PipelineMembers < 1 || c.LatencyMembers > 64 || c.PipelineMembers > 64:
		return errors.New("-latency-members and -pipeline-members must be in 1..64")
	}
	return nil
}

func (c config) has(scenario string) bool { return slices.Contains(c.Only, scenario) }

// command returns the command line that reproduces the figures of
// scenario: its flags that differ from their defaults.
func (c config) command(scenario string) string {
	if scenario == "micro" {
		return fmt.Sprintf("go test -run '^$' -bench '%s' -benchmem -benchtime %s -count %d %s", c.MicroBench, c.MicroTime, c.Runs, strings.Join(c.MicroPkgs, " "))
	}
	d := config{Quick: c.Quick}.withDefaults()
	s := "go run ./ops/bench -only " + scenario
	flag := func(name string, v, def any) {
		if v != def {
			s += fmt.Sprintf(" -%s %v", name, v)
		}
	}
	flag("runs", c.Runs, d.Runs)
	if c.Quick {
		s += " -quick"
	}
	switch scenario {
	case "cdc":
		flag("changes", c.Changes, d.Changes)
		flag("cdc-passes", c.CDCPasses, d.CDCPasses)
	case "latency", "loss":
		if scenario == "latency" {
			flag("transitions", c.Transitions, d.Transitions)
		} else {
			flag("outage", c.Outage, d.Outage)
		}
		flag("rate", c.Rate, d.Rate)
		flag("poll-interval", c.PollInterval, d.PollInterval)
		flag("latency-members", c.LatencyMembers, d.LatencyMembers)
		flag("catchup", c.Catchup, d.Catchup)
	case "pipeline", "console", "peers", "scale":
		if c.Long && scenario == "scale" {
			s += " -long"
		}
		if scenario == "peers" {
			flag("rate", c.Rate, d.Rate)
			flag("outage", c.Outage, d.Outage)
			flag("poll-interval", c.PollInterval, d.PollInterval)
		}
		flag("pipeline-jobs", c.PipelineJobs, d.PipelineJobs)
		flag("pipeline-members", c.PipelineMembers, d.PipelineMembers)
		flag("catchup", c.Catchup, d.Catchup)
	case "memory":
		flag("bigtx", c.BigTx, d.BigTx)
	}
	return s
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	var only, micro string
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: go run ./ops/bench [flags]\n\nMeasures jobstream against pg_recvlogical, LISTEN/NOTIFY, polling and the database's own limit;\nprints one table and writes BENCHMARKS.md. Sizes of 0 take the issue's defaults (or -quick's).")
		fs.PrintDefaults()
	}
	fs.IntVar(&c.Runs, "runs", 3, "runs of each scenario; the table shows medians")
	fs.BoolVar(&c.Quick, "quick", false, "small sizes, for a smoke run")
	fs.BoolVar(&c.Long, "long", false, "add the long sizes: a backlog of 1,000,000 jobs in scenario 11 (make bench-long)")
	fs.StringVar(&c.Out, "out", "", "write the Markdown report here (e.g. BENCHMARKS.md)")
	fs.StringVar(&only, "only", "", "comma-separated scenarios to run: "+strings.Join(scenarios, ","))
	fs.StringVar(&c.Dir, "dir", "", "work folder (default: a temporary folder, removed afterwards)")
	fs.BoolVar(&c.Keep, "keep", false, "keep the work folder (logs) afterwards")
	fs.StringVar(&c.Profile, "profile", "", "folder for CPU profiles of the reader and the workers")
	fs.StringVar(&c.Jobstream, "jobstream", "", "prebuilt jobstream binary (default: go build ./ops/jobstream)")
	fs.IntVar(&c.Changes, "changes", 0, "changes streamed in scenario 1 (default 200000)")
	fs.IntVar(&c.CDCPasses, "cdc-passes", 0, "times per run each client streams the changes of scenario 1, alternately (default 3)")
	fs.IntVar(&c.Transitions, "transitions", 0, "measured transitions per system in scenario 2 (default 2000)")
	fs.IntVar(&c.Rate, "rate", 0, "transitions per second in scenarios 2 and 3 (default 200)")
	fs.DurationVar(&c.Outage, "outage", 0, "how long the listener/worker is away in scenario 3 (default 5s)")
	fs.DurationVar(&c.PollInterval, "poll-interval", 0, "interval of the polling loop (default 1s)")
	fs.DurationVar(&c.Catchup, "catchup", 0, "time after the last commit a system may still act (default 5s)")
	fs.IntVar(&c.LatencyMembers, "latency-members", 0, "group members of the worker in scenarios 2 and 3 (default 2)")
	fs.IntVar(&c.PipelineMembers, "pipeline-members", 0, "group members per step in scenario 4 (default 4)")
	fs.IntVar(&c.PipelineJobs, "pipeline-jobs", 0, "jobs through the pipeline in scenario 4 (default 10000)")
	fs.IntVar(&c.BigTx, "bigtx", 0, "rows of the one transaction of scenario 5 (default 1000000)")
	fs.StringVar(&micro, "micro-pkgs", "", "packages whose Go benchmarks run in scenario 6 (default ./cdc/,./schema/,./consumers/)")
	fs.StringVar(&c.MicroTime, "micro-benchtime", "", "go test -benchtime of scenario 6 (default 1s)")
	fs.StringVar(&c.MicroBench, "micro-bench", "", "go test -bench pattern of scenario 6 (default .)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	c.Only = splitList(only)
	c.MicroPkgs = splitList(micro)
	c = c.withDefaults()
	return c, c.validate()
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// run measures every scenario of cfg cfg.Runs times, prints the table to out
// (progress goes to progress) and writes the report.
func run(ctx context.Context, cfg config, out, progress io.Writer) error {
	e, err := newEnv(ctx, cfg, progress)
	if err != nil {
		return err
	}
	defer e.close()
	res := &results{cfg: cfg, machine: e.machine, started: time.Now(), loadStart: loadAvg()}
	for i := 1; i <= cfg.Runs; i++ {
		for _, s := range scenarios {
			if !cfg.has(s) || s == "micro" {
				continue
			}
			e.logf("run %d/%d: %s", i, cfg.Runs, s)
			if err := res.measure(ctx, e, s, i); err != nil {
				return fmt.Errorf("run %d, scenario %s: %w", i, s, err)
			}
		}
	}
	if cfg.has("micro") {
		e.logf("micro-benchmarks: %s", cfg.command("micro"))
		m, err := runMicro(ctx, cfg)
		if err != nil {
			return fmt.Errorf("micro-benchmarks: %w", err)
		}
		res.micro = m
	}
	res.finished, res.loadEnd = time.Now(), loadAvg()
	rows := res.rows()
	printTable(out, rows)
	if cfg.Out != "" {
		if err := os.WriteFile(cfg.Out, []byte(res.markdown(rows)), 0o644); err != nil {
			return err
		}
		e.logf("wrote %s", cfg.Out)
	}
	return nil
}
