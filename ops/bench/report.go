package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// results collects every run of every scenario.
type results struct {
	cfg                config
	machine            machine
	started, finished  time.Time
	loadStart, loadEnd string // /proc/loadavg: other work on the machine
	cdc                []cdcResult
	latency, loss      map[string][]trigResult // system → one result per run
	pipeline           []pipelineResult
	memory             []memResult
	serve              map[string][]serveResult // mode → one result per run
	console            []consoleResult
	peers              []peersResult
	scale              map[int][]pipelineResult // jobs → one result per run that measured it
	txShape            map[int][]txShapeResult  // updates → one result per run
	micro              []microResult
}

var (
	latencySystems = []string{sysFloor, sysJobstream, sysListen, sysPoll}
	lossSystems    = []string{sysJobstream, sysListen, sysPoll}
)

// measure runs scenario once (run is 1-based) and keeps the result.
func (r *results) measure(ctx context.Context, e *env, scenario string, run int) error {
	switch scenario {
	case "cdc":
		res, err := benchCDC(ctx, e, run)
		if err := keep(&r.cdc, res, err); err != nil {
			return err
		}
		e.logf("  pg_recvlogical %s changes/s, reader %s changes/s, ratio %.2f",
			thousands(res.recvRate()), thousands(res.readerRate()), res.readerRate()/res.recvRate())
	case "latency", "loss":
		systems, into := latencySystems, &r.latency
		if scenario == "loss" {
			systems, into = lossSystems, &r.loss
		}
		if *into == nil {
			*into = map[string][]trigResult{}
		}
		for _, s := range systems {
			res, err := benchTrigger(ctx, e, scenario, s, run, scenario == "loss")
			if err != nil {
				return fmt.Errorf("%s: %w", s, err)
			}
			(*into)[s] = append((*into)[s], res)
			e.logf("  %-9s p50 %.2f ms, p95 %.2f ms, p99 %.2f ms, lost %d of %d", s, res.pct(50), res.pct(95), res.pct(99), res.lost, res.n)
		}
	case "pipeline":
		res, err := benchPipeline(ctx, e, run)
		if err := keep(&r.pipeline, res, err); err != nil {
			return err
		}
		e.logf("  jobstream %s jobs/s, database alone %s jobs/s, ratio %.2f", thousands(res.pipeRate()), thousands(res.dbRate()), res.pipeRate()/res.dbRate())
	case "memory":
		res, err := benchMemory(ctx, e, run)
		if err := keep(&r.memory, res, err); err != nil {
			return err
		}
		e.logf("  reader peak RSS %.0f MiB, streamed in %.1fs", mib(res.readerHWM), res.stream)
	case "txshape":
		if r.txShape == nil {
			r.txShape = map[int][]txShapeResult{}
		}
		for _, n := range txShapeSizes(e.cfg.Quick) {
			res, err := benchTxShape(ctx, e, run, n)
			if err != nil {
				return fmt.Errorf("%d updates: %w", n, err)
			}
			r.txShape[n] = append(r.txShape[n], res)
			e.logf("  one transaction of %s updates: pg_recvlogical %.1fs, reader %.1fs (ratio %.2f)", thousands(float64(n)), res.recvSecs, res.rdSecs, res.ratio())
		}
	case "peers":
		four := r.pipelineOf(run)
		res, err := benchPeers(ctx, e, run, four)
		if err := keep(&r.peers, res, err); err != nil {
			return err
		}
		e.logf("  jobstream/River %.2f, jobstream/database %.2f", res[peerJobstream].rate()/res[peerRiver].rate(), res[peerJobstream].rate()/res[peerDatabase].rate())
	case "scale":
		if r.scale == nil {
			r.scale = map[int][]pipelineResult{}
		}
		four := r.pipelineOf(run)
		return benchScale(ctx, e, run, four, r.scale)
	case "console":
		res, err := benchConsole(ctx, e, run)
		if err := keep(&r.console, res, err); err != nil {
			return err
		}
		e.logf("  pipeline %s jobs/s, with the console open %s jobs/s (ratio %.2f); jobs pages on %s rows: first %.1f ms, deep %.1f ms",
			thousands(res.plain.pipeRate()), thousands(res.observed.pipeRate()), res.observed.pipeRate()/res.plain.pipeRate(),
			thousands(float64(res.rows)), median(res.pageMs[consoleQueries[0].name]), median(res.pageMs[consoleQueries[1].name]))
	case "serve":
		if r.serve == nil {
			r.serve = map[string][]serveResult{}
		}
		for _, m := range serveModes {
			res, err := benchServe(ctx, e, m, run)
			if err != nil {
				return fmt.Errorf("%s: %w", m.name, err)
			}
			r.serve[m.name] = append(r.serve[m.name], res)
			e.logf("  %-26s %s jobs/s (%d jobs in %.1fs), worker CPU %.2f ms/job", m.name, rateCell(res.rate()), res.jobs, res.secs, res.cpuPerJob())
		}
	}
	return nil
}

// keep appends res to *runs, unless err.
func keep[T any](runs *[]T, res T, err error) error {
	if err != nil {
		return err
	}
	*runs = append(*runs, res)
	return nil
}

// pipelineOf returns scenario 4's result of run, nil when it did not run.
func (r *results) pipelineOf(run int) *pipelineResult {
	if len(r.pipeline) < run {
		return nil
	}
	return &r.pipeline[run-1]
}

// row is one line of the table.
type row struct {
	scenario, figure, value, ratio, target, result, runs, cmd string
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func each[T any](xs []T, f func(T) float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = f(x)
	}
	return out
}

func joinRuns(xs []float64, format func(float64) string) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = format(x)
	}
	return strings.Join(parts, "; ")
}

func passMiss(ok bool) string {
	if ok {
		return "PASS"
	}
	return "MISS"
}

// thousands renders x rounded, with thousands separators.
func thousands(x float64) string {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return "-"
	}
	s := strconv.FormatInt(int64(math.Round(x)), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

func f1(x float64) string { return strconv.FormatFloat(x, 'f', 1, 64) }
func f2(x float64) string { return strconv.FormatFloat(x, 'f', 2, 64) }

// latencyCell renders p50 / p95 / p99.
func latencyCell(p50, p95, p99 float64) string {
	return fmt.Sprintf("%s / %s / %s ms", lat(p50), lat(p95), lat(p99))
}

func lat(x float64) string {
	if math.Abs(x) >= 100 {
		return strconv.FormatFloat(x, 'f', 0, 64)
	}
	return f2(x)
}

// rows turns the results into the table: medians over the runs, the
// ratios, the targets of issue 6 and PASS or MISS.
func (r *results) rows() []row {
	c := r.cfg
	var rows []row
	if len(r.cdc) > 0 {
		scen := fmt.Sprintf("1. CDC throughput, %s changes", thousands(float64(r.cdc[0].changes)))
		recv, rd, ratios := each(r.cdc, cdcResult.recvRate), each(r.cdc, cdcResult.readerRate), each(r.cdc, cdcResult.ratio)
		ratio := median(ratios)
		rows = append(rows,
			row{scen, "(a) pg_recvlogical, pgoutput → /dev/null", thousands(median(recv)) + " changes/s", "", "", "", joinRuns(recv, thousands), c.command("cdc")},
			row{"", "(b) jobstream reader, every event acked by the broker", thousands(median(rd)) + " changes/s", "(b)/(a) " + f2(ratio), "≥ 0.6", passMiss(ratio >= 0.6),
				joinRuns(rd, thousands) + " · ratio " + joinRuns(ratios, f2), c.command("cdc")},
		)
		perChange := func(get func(cdcResult) cpuSnap, parts ...string) string {
			var cells []string
			for _, part := range parts {
				us := median(each(r.cdc, func(x cdcResult) float64 {
					return 1e6 * get(x).by[part] / float64(x.changes*max(len(x.recvSecs), 1))
				}))
				cells = append(cells, part+" "+f1(us))
			}
			return strings.Join(cells, ", ")
		}
		rows = append(rows, row{"", "CPU µs per change (user+system)",
			"(a) " + perChange(func(x cdcResult) cpuSnap { return x.recvCPU }, "walsender", "pg_recvlogical") +
				" · (b) " + perChange(func(x cdcResult) cpuSnap { return x.readerCPU }, "walsender", "reader", "broker", "postgres"),
			"", "", "", "", c.command("cdc")})
	}
	if len(r.latency) > 0 {
		n := r.latency[sysFloor][0].n
		scen := fmt.Sprintf("2. Trigger latency, commit of (img_gen, done) → handler start, %s at %d/s", thousands(float64(n)), c.Rate)
		floor := r.latency[sysFloor]
		// toFloor is the median over the runs of each run's ratio of
		// percentile p of runs to the floor's.
		toFloor := func(runs []trigResult, p float64) string {
			var rs []float64
			for i := range min(len(runs), len(floor)) {
				if f := floor[i].pct(p); f > 0 {
					rs = append(rs, runs[i].pct(p)/f)
				}
			}
			if len(rs) == 0 {
				return "-"
			}
			return ratioCell(median(rs))
		}
		for i, s := range latencySystems {
			runs := r.latency[s]
			p50 := median(each(runs, func(t trigResult) float64 { return t.pct(50) }))
			p95 := median(each(runs, func(t trigResult) float64 { return t.pct(95) }))
			p99 := median(each(runs, func(t trigResult) float64 { return t.pct(99) }))
			rw := row{figure: systemNames[s], value: latencyCell(p50, p95, p99), cmd: c.command("latency"),
				runs: "p50 " + joinRuns(each(runs, func(t trigResult) float64 { return t.pct(50) }), lat) + " · p99 " +
					joinRuns(each(runs, func(t trigResult) float64 { return t.pct(99) }), lat)}
			if i == 0 {
				rw.scenario = scen
			} else {
				rw.ratio = fmt.Sprintf("×%s / ×%s / ×%s of floor", toFloor(runs, 50), toFloor(runs, 95), toFloor(runs, 99))
			}
			if s == sysJobstream {
				rw.target = "p50 ≤ 3 ms, p99 ≤ 15 ms"
				switch {
				case p50 <= 3 && p99 <= 15:
					rw.result = "PASS"
				case p50 > 3 && p99 > 15:
					rw.result = "MISS (p50, p99)"
				case p50 > 3:
					rw.result = "MISS (p50)"
				default:
					rw.result = "MISS (p99)"
				}
			}
			rows = append(rows, rw)
			if s == sysJobstream {
				rows = append(rows,
					subLatency(runs, "  of which commit → acked by the broker (reader's OnCommitAcked, every transaction)", func(t trigResult) []float64 { return t.acked }, c.command("latency")),
					subLatency(runs, "  of which a batch's visibility check and produce round trip (reader's OnProduced, every batch)", func(t trigResult) []float64 { return t.produced }, c.command("latency")))
			}
		}
	}
	if len(r.latency) > 0 {
		rows = append(rows, r.latencyTargets())
		// Zero loss is a target without an outage too.
		var cells, each0 []string
		jsLost := 0.0
		for _, s := range latencySystems {
			lost := each(r.latency[s], func(t trigResult) float64 { return float64(t.lost) })
			cells = append(cells, fmt.Sprintf("%s %s", s, thousands(median(lost))))
			each0 = append(each0, s+" "+joinRuns(lost, thousands))
			if s == sysJobstream {
				jsLost = slices.Max(lost)
			}
		}
		rows = append(rows, row{"", "transitions never acted on in 2 (no outage)", strings.Join(cells, ", ") + " of " + thousands(float64(r.latency[sysFloor][0].n)),
			"", "jobstream 0 in every run", passMiss(jsLost == 0), strings.Join(each0, " · "), c.command("latency")})
	}
	if len(r.loss) > 0 {
		first := r.loss[sysJobstream][0]
		scen := fmt.Sprintf("3. Loss, listener/worker away %s of a %s run (%s transitions at %d/s)",
			first.outage, 3*first.outage, thousands(float64(first.n)), c.Rate)
		for i, s := range lossSystems {
			runs := r.loss[s]
			lost := each(runs, func(t trigResult) float64 { return float64(t.lost) })
			rw := row{figure: systemNames[s], value: fmt.Sprintf("%s of %s never acted on", thousands(median(lost)), thousands(float64(runs[0].n))),
				runs: joinRuns(lost, thousands), cmd: c.command("loss")}
			if i == 0 {
				rw.scenario = scen
			}
			if s == sysListen {
				rw.target = "(loses by design)"
			} else {
				rw.target = "0 in every run"
				rw.result = passMiss(slices.Max(lost) == 0)
			}
			rows = append(rows, rw)
		}
	}
	if len(r.pipeline) > 0 {
		p0 := r.pipeline[0]
		scen := fmt.Sprintf("4. Pipeline throughput, %s jobs through 4 steps", thousands(float64(p0.jobs)))
		pipe, db := each(r.pipeline, pipelineResult.pipeRate), each(r.pipeline, pipelineResult.dbRate)
		ratios := each(r.pipeline, func(p pipelineResult) float64 { return p.pipeRate() / p.dbRate() })
		ratio := median(ratios)
		res := "PASS"
		switch {
		case median(pipe) < 500 && ratio < 0.6:
			res = "MISS (both)"
		case median(pipe) < 500:
			res = "MISS (jobs/s)"
		case ratio < 0.6:
			res = "MISS (ratio)"
		}
		rows = append(rows,
			row{scen, fmt.Sprintf("jobstream: reader + 4 worker processes, %d members/step, no-op handlers", p0.members), thousands(median(pipe)) + " jobs/s",
				"jobstream/database " + f2(ratio), "≥ 500 jobs/s, ratio ≥ 0.6", res, joinRuns(pipe, thousands) + " · ratio " + joinRuns(ratios, f2), c.command("pipeline")},
			row{"", fmt.Sprintf("database alone: the same claim/complete SQL, %d connections", p0.conns), thousands(median(db)) + " jobs/s",
				"", "", "", joinRuns(db, thousands), c.command("pipeline")},
		)
		rows = append(rows,
			row{"", "CPU ms per job, jobstream (postgres = its backends)", cpuCell(r.pipeline, func(p pipelineResult) (cpuSnap, int) { return p.pipeCPU, p.completed },
				[]string{"postgres", "walsender", "broker", "reader", "workers", "bench"}), "", "", "", "", c.command("pipeline")},
			row{"", "CPU ms per job, database alone (bench = the SQL client)", cpuCell(r.pipeline, func(p pipelineResult) (cpuSnap, int) { return p.dbCPU, p.jobs },
				[]string{"postgres", "bench"}), "", "", "", "", c.command("pipeline")},
		)
		stranded := each(r.pipeline, func(p pipelineResult) float64 { return float64(p.stranded) })
		rows = append(rows, row{"", "jobstream: jobs stranded at a (step, done) no worker claimed", fmt.Sprintf("%s of %s", thousands(median(stranded)), thousands(float64(p0.jobs))),
			"", "0 in every run", passMiss(slices.Max(stranded) == 0), joinRuns(stranded, thousands), c.command("pipeline")})
	}
	if len(r.memory) > 0 || len(r.pipeline) > 0 {
		scen := "5. Memory, peak RSS (VmHWM)"
		if len(r.memory) > 0 {
			hwm := each(r.memory, func(m memResult) float64 { return mib(m.readerHWM) })
			rows = append(rows, row{scen, fmt.Sprintf("jobstream reader process, one %s-row transaction", thousands(float64(r.memory[0].rows))),
				f1(median(hwm)) + " MiB", "", "≤ 128 MiB", passMiss(median(hwm) <= 128), joinRuns(hwm, f1), c.command("memory")})
			scen = ""
		}
		if len(r.pipeline) > 0 {
			w := each(r.pipeline, func(p pipelineResult) float64 { return mib(p.workerHWM) })
			rd := each(r.pipeline, func(p pipelineResult) float64 { return mib(p.readerHWM) })
			rows = append(rows,
				row{scen, "worker process during scenario 4 (largest of the 4 steps)", f1(median(w)) + " MiB", "", "", "", joinRuns(w, f1), c.command("pipeline")},
				row{"", "reader process during scenario 4", f1(median(rd)) + " MiB", "", "", "", joinRuns(rd, f1), c.command("pipeline")},
			)
		}
	}
	rows = append(rows, r.serveRows()...)
	rows = append(rows, r.consoleRows()...)
	rows = append(rows, r.peersRows()...)
	rows = append(rows, r.scaleRows()...)
	rows = append(rows, r.txShapeRows()...)
	for i, m := range r.micro {
		rw := row{figure: strings.TrimPrefix(m.pkg, "github.com/jobstream/jobstream/") + " " + m.name, cmd: c.command("micro")}
		if i == 0 {
			rw.scenario = "6. Go micro-benchmarks"
		}
		var cells []string
		for _, u := range m.units {
			cells = append(cells, benchValue(median(m.values[u]), u))
		}
		rw.value = strings.Join(cells, ", ")
		rw.runs = joinRuns(m.values["ns/op"], func(v float64) string { return benchValue(v, "ns/op") })
		rows = append(rows, rw)
	}
	return rows
}

// subLatency is a row of p50 / p95 / p99 of a part of the jobstream path.
func subLatency(runs []trigResult, figure string, get func(trigResult) []float64, cmd string) row {
	pct := func(p float64) []float64 {
		return each(runs, func(t trigResult) float64 { return percentile(get(t), p) })
	}
	return row{figure: figure, value: latencyCell(median(pct(50)), median(pct(95)), median(pct(99))),
		runs: "p50 " + joinRuns(pct(50), lat) + " · p99 " + joinRuns(pct(99), lat), cmd: cmd}
}

// latencyTargets is scenario 2's row of issue 17's targets: jobstream
// within 2× the floor at p50 and p99, and its p99 no worse than
// LISTEN/NOTIFY's, each a ratio within one run.
func (r *results) latencyTargets() row {
	js, floor, listen := r.latency[sysJobstream], r.latency[sysFloor], r.latency[sysListen]
	var f50, f99, l99 []float64
	for i := range min(len(js), len(floor), len(listen)) {
		f50 = append(f50, js[i].pct(50)/floor[i].pct(50))
		f99 = append(f99, js[i].pct(99)/floor[i].pct(99))
		l99 = append(l99, js[i].pct(99)/listen[i].pct(99))
	}
	var missed []string
	for _, m := range []struct {
		name string
		ok   bool
	}{{"p50", median(f50) <= 2}, {"p99", median(f99) <= 2}, {"p99 vs LISTEN", median(l99) <= 1}} {
		if !m.ok {
			missed = append(missed, m.name)
		}
	}
	res := "PASS"
	if len(missed) > 0 {
		res = "MISS (" + strings.Join(missed, ", ") + ")"
	}
	return row{"", "jobstream against the floor and LISTEN/NOTIFY, each run's ratio", "",
		fmt.Sprintf("p50 ×%s, p99 ×%s of floor; p99 ×%s of LISTEN/NOTIFY", f2(median(f50)), f2(median(f99)), f2(median(l99))),
		"p50, p99 ≤ 2× floor; p99 ≤ LISTEN/NOTIFY's", res,
		"p50/floor " + joinRuns(f50, f2) + " · p99/floor " + joinRuns(f99, f2) + " · p99/listen " + joinRuns(l99, f2), r.cfg.command("latency")}
}

// cpuCell renders the median CPU milliseconds per job of each part, and
// how busy the machine was.
func cpuCell[T any](runs []T, get func(T) (cpuSnap, int), parts []string) string {
	var cells []string
	for _, part := range parts {
		ms := median(each(runs, func(p T) float64 {
			s, n := get(p)
			return 1000 * s.by[part] / float64(max(n, 1))
		}))
		cells = append(cells, fmt.Sprintf("%s %s", part, f2(ms)))
	}
	busy := median(each(runs, func(p T) float64 {
		s, _ := get(p)
		if s.total <= 0 {
			return 0
		}
		return 100 * s.busy / s.total
	}))
	return strings.Join(cells, ", ") + fmt.Sprintf("; machine %.0f%% busy", busy)
}

// benchValue renders a go test -bench value with its unit, in a unit a
// reader takes in at a glance.
func benchValue(v float64, unit string) string {
	switch {
	case unit == "ns/op" && v >= 1e9:
		return f2(v/1e9) + " s/op"
	case unit == "ns/op" && v >= 1e6:
		return f2(v/1e6) + " ms/op"
	case unit == "ns/op":
		return thousands(v) + " ns/op"
	case unit == "B/op" && v >= 1<<20:
		return f1(v/(1<<20)) + " MiB/op"
	case math.Abs(v) >= 1000 || v == math.Trunc(v):
		return thousands(v) + " " + unit
	}
	return strconv.FormatFloat(v, 'g', 4, 64) + " " + unit
}

func ratioCell(r float64) string {
	if r >= 100 {
		return thousands(r)
	}
	return f1(r)
}

var header = row{"SCENARIO", "FIGURE", "MEDIAN", "RATIO", "TARGET", "RESULT", "EACH RUN", "REPRODUCE"}

// printTable prints rows as one aligned table.
func printTable(w io.Writer, rows []row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, r := range append([]row{header}, rows...) {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.scenario, r.figure, r.value, r.ratio, r.target, r.result, r.runs, r.cmd)
	}
	tw.Flush()
}

// markdown renders the report: the machine, the command, the table, how
// each figure was measured, and where it stands against the published anchors.
func (r *results) markdown(rows []row) string {
	c := r.cfg
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# Benchmarks\n\n")
	p("Measured side by side in one run of `%s` on %s (%s, %s).\n", r.invocation(), r.started.UTC().Format("2006-01-02 15:04 UTC"),
		r.finished.Sub(r.started).Round(time.Second), plural(c.Runs, "run"))
	p("Each figure is the median of %s; EACH RUN lists every run. A ratio is the median of the runs' ratios, each run measuring both sides "+
		"back to back, so that load from elsewhere on the machine hits both alike. Regenerate with `make bench`.\n\n", plural(c.Runs, "run"))
	p("## Machine\n\n")
	p("| | |\n|---|---|\n| CPU | %s |\n| cores | %d |\n| RAM | %.1f GiB |\n| PostgreSQL | %s (throwaway server from ops/localpg: wal_level=logical, fsync=off, full_page_writes=off) |\n| Go | %s |\n| kernel | Linux %s |\n| load average (1, 5, 15 min) | %s at the start, %s at the end |\n\n",
		mdEscape(r.machine.CPU), r.machine.Cores, float64(r.machine.RAM)/(1<<30), r.machine.Postgres, r.machine.Go, r.machine.Kernel, r.loadStart, r.loadEnd)
	p("## Results\n\n")
	p("| %s |\n|%s\n", strings.Join([]string{header.scenario, header.figure, header.value, header.ratio, header.target, header.result, header.runs, header.cmd}, " | "),
		strings.Repeat("---|", 8))
	for _, rw := range rows {
		p("| %s | %s | %s | %s | %s | %s | %s | `%s` |\n", mdEscape(rw.scenario), mdEscape(rw.figure), mdEscape(rw.value), mdEscape(rw.ratio),
			mdEscape(rw.target), bold(rw.result), mdEscape(rw.runs), rw.cmd)
	}
	p("\n## How each figure is measured\n\n")
	if len(r.cdc) > 0 {
		x := r.cdc[0]
		p("1. **CDC throughput.** One database, %d pgoutput slots created before the changes. The server itself writes %s changes "+
			"(%s inserts of jobs with a ~330-byte jsonb payload, each followed 50 jobs later by an update to (img_gen, done) with ~200 bytes of jsonb results; "+
			"%d inserts and %d updates per transaction, %s transactions, %.0f MiB of WAL). "+
			"(a) `pg_recvlogical --start -o proto_version=1 -o publication_names=jobstream --endpos <end> -f /dev/null`, timed from start to exit: "+
			"the rate at which Postgres decodes pgoutput. (b) `cdc.Reader`, timed from `Run` until `Stats().AckedLSN` passes the same end "+
			"(every event acknowledged by the broker, acks=all). The broker is a fresh `jobstream broker` (kfake, in memory) in its own process. "+
			"Each run streams the changes %s with each client, alternately, each time from a slot of its own; a run's rate is the median of its passes. "+
			"CPU µs per change: user+system CPU time (/proc) of the WAL sender (pgoutput decoding), the client, the broker and the server's other backends, over the passes.\n",
			2*c.CDCPasses, thousands(float64(x.changes)), thousands(float64(x.changes/2)), perTx, perTx, thousands(float64(x.txs)), float64(x.walBytes)/(1<<20), times(c.CDCPasses))
	}
	if len(r.latency) > 0 {
		var rtts []float64
		for _, s := range latencySystems {
			rtts = append(rtts, each(r.latency[s], func(t trigResult) float64 { return t.commitRTT })...)
		}
		p("2. **Trigger latency.** Each system gets its own database with %s jobs at (img_gen, running); after %d warm-up transitions, one connection "+
			"moves them to (img_gen, done) one `UPDATE` (one transaction) at a time, %d per second. Latency runs from the moment the committing `UPDATE` "+
			"was sent to the moment the next step's handler started, on the same clock; the `UPDATE` itself took %.2f ms median to return (subtract it for "+
			"latency from the commit's acknowledgement; the floor's message often arrives before that acknowledgement). "+
			"*jobstream*: reader and a vlm_analyze worker (%s) in the bench process, broker in its own; the handler is an in-process Go function. "+
			"*LISTEN/NOTIFY*: an `AFTER UPDATE` trigger calls `pg_notify`; a pgx listener waits in `WaitForNotification`, claims the job with the same compare-and-set and starts the handler. "+
			"*Polling*: every %s, `UPDATE … WHERE job_id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING job_id`, then the handler. "+
			"*Floor*: a bare pglogrepl client on its own slot; the time the row's logical-replication message arrives. Ratios are to the floor's figure.\n",
			thousands(float64(r.latency[sysFloor][0].n)), warmup, c.Rate, median(rtts), plural(c.LatencyMembers, "group member"), c.PollInterval)
	}
	if len(r.loss) > 0 {
		x := r.loss[sysJobstream][0]
		p("3. **Loss under disconnect.** As 2, with %s transitions at %d/s; %s into the run the listener (LISTEN/NOTIFY), the worker (jobstream; the reader keeps running) "+
			"or the polling loop stops for %s, then starts again. A transition counts as lost when its handler never started within %s of the last commit.\n",
			thousands(float64(x.n)), c.Rate, x.outageStart, x.outage, c.Catchup)
	}
	if len(r.pipeline) > 0 {
		x := r.pipeline[0]
		p("4. **Pipeline throughput.** The system as deployed: `jobstream broker`, `jobstream reader` and one worker process per step (vlm_analyze, yolo_detect, planner, overlay; "+
			"each this program's worker role, `consumers.Worker` with %d members and a no-op Go handler; topics of %d partitions). After 20 warm-up jobs, %s jobs are inserted at "+
			"(img_gen, done) in one COPY and timed until all are at (overlay, done). The database alone: a fresh database, the same jobs, and %d connections each walking one job "+
			"after another through the four steps with the worker's own claim and complete statements (consumers/store.go), without CDC or Kafka. "+
			"Jobs/s is jobs done over the time from the COPY to the last job's completing transaction. A job still short of (overlay, done) when nothing has moved for %s is stranded. "+
			"CPU ms per job: the user+system CPU time (/proc/<pid>/stat) each part used over the batch, divided by the jobs done: postgres is the server's backends and "+
			"background processes, walsender its logical decoding, bench this program (it polls for completion four times a second; in the database-only loop it is the SQL client).\n",
			x.members, 12, thousands(float64(x.jobs)), x.conns, c.Catchup)
	}
	if len(r.memory) > 0 {
		x := r.memory[0]
		p("5. **Memory.** A `jobstream reader` process streams one transaction of %s inserted rows (the row shape of 1; in the first run committed in %.1f s, streamed and acknowledged %.1f s after its commit; median %.1f s); "+
			"its VmHWM from /proc/<pid>/status once Postgres reports the transaction flushed by the reader. The workers' and the reader's VmHWM in 4 are read the same way at the end of the batch.\n",
			thousands(float64(x.rows)), x.insert, x.stream, median(each(r.memory, func(m memResult) float64 { return m.stream })))
	}
	if len(r.txShape) > 0 {
		p("10. **Transaction shape.** Scenario 1 measures 5-row transactions; here one transaction updates every row of a table of n (written before the slots were created), " +
			"streamed from the same position by pg_recvlogical (pgoutput to /dev/null) and by the reader (every event acknowledged by a fresh `jobstream broker` keeping its data on disk, `--data-dir`, as a deployed broker does: " +
			"in memory, a million events make its heap 1.5 GB and its garbage collector the bound, 0.6-0.8 against 1.0 on disk), each from a slot of its own; " +
			"the ratio is pg_recvlogical's seconds over the reader's.\n")
	}
	if len(r.peers) > 0 {
		p("9. **Pipeline peers.** Each system on a fresh database of the same Postgres, in an order that turns with the run, with %s per step (jobstream's members; "+
			"River's client has as many workers for all steps), after %d warm-up jobs. *Batch*: %s jobs inserted at (img_gen, done) in one transaction, timed until all are at (overlay, done) "+
			"(jobstream's and the database alone's are scenario 4's of the same run when it ran). *Paced*: on a fresh deployment, %d jobs/s inserted one transaction each for %s; "+
			"a handoff is a step's start minus the commit of the step before (for vlm_analyze, the insert's statement sent): for the systems that claim with the workers' statements "+
			"(jobstream, LISTEN/NOTIFY, polling) the claim's and the completion's now() in jobstream_runs (each a one-statement transaction), for River the time its worker began and the time it sent its commit; "+
			"the handoffs of the jobs before the outage count. From %s to %s the first step's worker is away: jobstream's vlm_analyze worker process is stopped (SIGTERM) and started again, "+
			"the LISTEN/NOTIFY listener of vlm_analyze closes its connection, the poller stops, River's client (its unit of deployment, serving every step) stops; "+
			"a job not at (overlay, done) %s after the last insert is lost. "+
			"*jobstream*: as in 4. *River* "+riverVersion+" (`github.com/riverqueue/river`, the Go Postgres job queue), with its migrations, one client in this process (fetch cooldown 5ms and poll 50ms instead of its defaults of 100ms and 1s) "+
			"whose one worker kind, in one transaction, moves the job (trigger, done) → (step, done) with its result merged, inserts the next step's River job and completes its own; the jobs are inserted with their first River jobs. "+
			"*LISTEN/NOTIFY workers* (the seed design): the trigger of 2 on every (step, done), one listener connection per step handing the job ids to the members, which claim and complete with the workers' own statements (`consumers.ClaimAndComplete`). "+
			"*Polling workers*: per step, every %s, the oldest 1,000 jobs at (trigger, done), claimed and completed the same way, again at once while a poll fills. "+
			"*Database alone*: as in 4. CPU ms per job is the batch's, by process as in 4.\n",
			plural(c.PipelineMembers, "member"), warmup, thousands(float64(c.PipelineJobs)), c.Rate, 3*c.Outage, c.Outage, 2*c.Outage, c.Catchup, c.PollInterval)
	}
	if len(r.scale) > 0 {
		p("11. **How cost grows.** The pipeline of 4 (jobstream as deployed, %s per step) with batches of each size (the size of 4 is 4's result of the same run); the largest runs once per bench, not every run. "+
			"Peak RSS is each process's VmHWM at the end; the WAL held is pg_wal_lsn_diff(pg_current_wal_lsn(), the slot's restart_lsn and confirmed_flush_lsn) once the last job is done; "+
			"jobstream_runs and jobs are pg_total_relation_size. The broker keeps its data in memory, so its peak RSS grows with the events it holds (every step's, about 9 per job); with -long (`make bench-long`), 1,000,000 jobs are inserted (100,000 a transaction) while the reader streams, before the workers start, and timed from their start, with the broker's data on disk (`jobstream broker --data-dir`).\n",
			plural(c.PipelineMembers, "member"))
	}
	if len(r.console) > 0 {
		p("8. **Web console.** The pipeline of 4, run twice per run in alternating order: without the console, and with `jobstream ui`'s handler open on it " +
			"(sampling the status every 2 s, one client streaming the overview's server-sent events and fetching a jobs page, the history and the dead letters every 2 s). " +
			"Then a fresh table of jobs spread over the 5 steps and 4 statuses, and each jobs page the console asks for (`admin.Jobs`) timed 20 times per run.\n")
	}
	if len(r.serve) > 0 {
		p("7. **GPU step modes.** The vlm_analyze step alone (a `jobstream broker`, a `jobstream reader` and one `jobstream worker --step vlm_analyze --concurrency 2` process) " +
			"runs `ops/steps/model_server.py`, a stand-in model that sleeps 2 s to load and 5 ms + 1 ms per job of a call: as an exec step (a process, and a model load, per job), " +
			"with `--serve` (one process per slot, loaded once) and with `--serve --batch 8`. The worker is ready (its processes loaded) before the jobs are inserted in one COPY; " +
			"jobs/s is jobs over the time from the COPY to the last job at (vlm_analyze, done). Worker CPU is the worker process's own user+system time per job, not the model's.\n")
	}
	if len(r.micro) > 0 {
		p("6. **Micro-benchmarks.** `%s`, medians of the %s.\n", c.command("micro"), plural(c.Runs, "count"))
	}
	r.bounds(p)
	r.anchors(p)
	return b.String()
}

// anchors says where the figures stand against the vendors' published ones.
func (r *results) anchors(p func(string, ...any)) {
	if len(r.cdc) == 0 && len(r.latency) == 0 {
		return
	}
	p("\n## Against the published anchors\n\n")
	p("Vendor figures, each on 16 vCPUs: Sequin 50,000 ops/s at 55 ms mean / 253 ms p99; Debezium Server about 20,000 ops/s at 210 ms mean / 440 ms p99. ")
	p("Here, on %d cores:", r.machine.Cores)
	if len(r.cdc) > 0 {
		p(" the reader streams %s changes/s into the broker (%s of Sequin's rate, %s of Debezium's);",
			thousands(median(each(r.cdc, cdcResult.readerRate))),
			pct(median(each(r.cdc, cdcResult.readerRate))/50000), pct(median(each(r.cdc, cdcResult.readerRate))/20000))
	}
	if runs := r.latency[sysJobstream]; len(runs) > 0 {
		p(" commit → handler start is %s ms mean / %s ms p99 at %d/s, where the anchors' latencies are commit → consumer.",
			lat(median(each(runs, trigResult.mean))), lat(median(each(runs, func(t trigResult) float64 { return t.pct(99) }))), r.cfg.Rate)
	}
	p(" The anchors ran at their own loads on larger machines with a real Kafka cluster; the comparison is of orders of magnitude, not a race.\n")
}

// loadAvg returns the 1, 5 and 15 minute load averages.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func pct(x float64) string { return strconv.FormatFloat(100*x, 'f', 0, 64) + "%" }

func (r *results) invocation() string {
	if r.cfg.Runs == 3 && !r.cfg.Quick && len(r.cfg.Only) == len(scenarios) {
		return "make bench"
	}
	s := fmt.Sprintf("go run ./ops/bench -runs %d", r.cfg.Runs)
	if r.cfg.Quick {
		s += " -quick"
	}
	if len(r.cfg.Only) != len(scenarios) {
		s += " -only " + strings.Join(r.cfg.Only, ",")
	}
	return s
}

func times(n int) string {
	switch n {
	case 1:
		return "once"
	case 2:
		return "twice"
	}
	return strconv.Itoa(n) + " times"
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return strconv.Itoa(n) + " " + word + "s"
}

func mdEscape(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

func bold(s string) string {
	if s == "" {
		return ""
	}
	return "**" + s + "**"
}
