package main

import (
	"context"
	"fmt"
	"slices"
)

// scaleSize is one size of scenario 11.
type scaleSize struct {
	jobs    int
	once    bool // measured in the first run only (it takes minutes)
	backlog bool // inserted before the workers start (-long)
}

// scaleSizes are the sizes of scenario 11: how the pipeline's cost grows
// with the work.
func scaleSizes(c config) []scaleSize {
	s := []scaleSize{{jobs: 1_000}, {jobs: c.PipelineJobs}, {jobs: 100_000, once: true}, {jobs: 1_000_000, once: true, backlog: true}}
	if c.Quick {
		s = []scaleSize{{jobs: 200}, {jobs: c.PipelineJobs}, {jobs: 5_000, once: true}, {jobs: 20_000, once: true, backlog: true}}
	}
	if !c.Long {
		s = s[:3]
	}
	return s
}

func (s scaleSize) name() string {
	n := thousands(float64(s.jobs))
	switch {
	case s.backlog:
		return n + " jobs, a backlog inserted before the workers start (-long), once"
	case s.once:
		return n + " jobs, once per bench"
	}
	return n + " jobs"
}

// benchScale runs the pipeline of scenario 4 at each size of scaleSizes
// (the size of scenario 4 is its result when it ran in this run).
func benchScale(ctx context.Context, e *env, run int, four *pipelineResult, into map[int][]pipelineResult) error {
	for _, s := range scaleSizes(e.cfg) {
		if s.once && run > 1 {
			continue
		}
		if four != nil && s.jobs == four.jobs && !s.backlog {
			into[s.jobs] = append(into[s.jobs], *four)
			continue
		}
		res := pipelineResult{jobs: s.jobs, members: e.cfg.PipelineMembers}
		if err := pipelineJobstream(ctx, e, fmt.Sprintf("scale_%d_%d", s.jobs, run), &res, s.backlog, nil); err != nil {
			return fmt.Errorf("%d jobs: %w", s.jobs, err)
		}
		into[s.jobs] = append(into[s.jobs], res)
		e.logf("  %s jobs: %s jobs/s, %d stranded", thousands(float64(s.jobs)), thousands(res.pipeRate()), res.stranded)
	}
	return nil
}

// scaleRows renders scenario 11.
func (r *results) scaleRows() []row {
	cmd := r.cfg.command("scale")
	var rows []row
	for _, s := range scaleSizes(r.cfg) {
		runs := r.scale[s.jobs]
		if len(runs) == 0 {
			continue
		}
		rw := row{figure: s.name(), cmd: cmd}
		if len(rows) == 0 {
			rw.scenario = "11. How cost grows: the pipeline of 4 (jobstream) at each size"
		}
		rates := each(runs, pipelineResult.pipeRate)
		m := func(f func(pipelineResult) float64) float64 { return median(each(runs, f)) }
		stranded := each(runs, func(p pipelineResult) float64 { return float64(p.stranded) })
		rw.value = thousands(median(rates)) + " jobs/s"
		rw.target, rw.result = "0 stranded", passMiss(slices.Max(stranded) == 0)
		rw.runs = joinRuns(rates, thousands) + " · stranded " + joinRuns(stranded, thousands)
		rows = append(rows, rw,
			row{figure: "  CPU ms per job", value: cpuCell(runs, func(p pipelineResult) (cpuSnap, int) { return p.pipeCPU, p.completed },
				[]string{"postgres", "walsender", "broker", "reader", "workers"}), cmd: cmd},
			row{figure: "  peak RSS; WAL the slot holds at the end; table sizes", value: fmt.Sprintf("reader %s, broker %s, worker %s MiB; %s MiB from restart_lsn, %s MiB from confirmed_flush_lsn; jobstream_runs %s MiB (%s bytes/job), jobs %s MiB",
				f1(m(func(p pipelineResult) float64 { return mib(p.readerHWM) })), f1(m(func(p pipelineResult) float64 { return mib(p.brokerHWM) })),
				f1(m(func(p pipelineResult) float64 { return mib(p.workerHWM) })),
				f1(m(func(p pipelineResult) float64 { return mib(uint64(p.walRestart)) })), f1(m(func(p pipelineResult) float64 { return mib(uint64(p.walConfirmed)) })),
				f1(m(func(p pipelineResult) float64 { return mib(uint64(p.runsBytes)) })), thousands(m(func(p pipelineResult) float64 { return float64(p.runsBytes) / float64(p.jobs) })),
				f1(m(func(p pipelineResult) float64 { return mib(uint64(p.jobsBytes)) }))), cmd: cmd},
		)
	}
	return rows
}
