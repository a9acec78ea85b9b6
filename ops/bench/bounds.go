package main

import (
	"fmt"
	"strings"
)

// bounds writes, under the figures, what bounds each target missed: the
// CPU each process used over the measurement (from /proc) and what the
// profiles of the reader and the workers (-profile) showed.
func (r *results) bounds(p func(string, ...any)) {
	var notes []string
	if len(r.pipeline) > 0 {
		js := median(each(r.pipeline, func(x pipelineResult) float64 { return cpuTotal(x.pipeCPU) / float64(max(x.completed, 1)) }))
		db := median(each(r.pipeline, func(x pipelineResult) float64 { return cpuTotal(x.dbCPU) / float64(max(x.jobs, 1)) }))
		ratio := median(each(r.pipeline, func(x pipelineResult) float64 { return x.pipeRate() / x.dbRate() }))
		if ratio < 0.6 {
			notes = append(notes, fmt.Sprintf("*Pipeline / database alone (4, 9).* CPU: with the machine all but fully busy, jobstream spends %s ms of CPU per job "+
				"(every process in 4's CPU row) against the database alone's %s ms, and the ratio of the rates follows the ratio of CPU per job (%s against %s); "+
				"a ratio of 0.6 needs about %s ms per job. Beyond the shared SQL, the reader, the broker and the WAL sender and, in the workers, the round trips of each event: "+
				"the profile of a worker process (`-profile`) puts a third of its time in the claim and complete statements (mostly send/receive system calls), "+
				"about a fifth in fetching from the broker and a tenth in committing offsets; the worker's own Go work (decoding the event) is a few per cent. "+
				"Deployed, the broker and the workers run on other machines; on 2 cores they share the database's.",
				f2(1000*js), f2(1000*db), f2(ratio), f2(db/js), f2(1000*db/0.6)))
		}
	}
	if js, floor, listen := r.latency[sysJobstream], r.latency[sysFloor], r.latency[sysListen]; len(js) > 0 && len(floor) > 0 && len(listen) > 0 {
		p50 := median(each(js, func(t trigResult) float64 { return t.pct(50) }))
		acked := median(each(js, func(t trigResult) float64 { return percentile(t.acked, 50) }))
		produced := median(each(js, func(t trigResult) float64 { return percentile(t.produced, 50) }))
		f50 := median(each(floor, func(t trigResult) float64 { return t.pct(50) }))
		if row := r.latencyTargets(); strings.HasPrefix(row.result, "MISS") {
			notes = append(notes, fmt.Sprintf("*Latency against the floor (2).* Hops, not CPU: the floor is the WAL sender → one client (p50 %s ms); jobstream's path is "+
				"WAL sender → reader → a visibility check (a query) and a produce round trip to the broker (%s ms p50 together) → acknowledged (%s ms p50 from the commit) → "+
				"the worker's fetch → its claim statement → the handler (%s ms p50 in all, so %s ms from the acknowledgement), four processes, each a wake-up and a scheduling delay on a busy machine (the p99s). "+
				"LISTEN/NOTIFY's is the backend → the listener → its claim statement; it pays the claim too, which the floor does not. The CPU profile of the reader and worker under this load "+
				"shows them mostly idle (about a fifth of a core), waiting on those round trips.",
				lat(f50), lat(produced), lat(acked), lat(p50), lat(p50-acked)))
		}
	}
	for _, n := range txShapeSizes(r.cfg.Quick) {
		runs := r.txShape[n]
		if len(runs) == 0 || median(each(runs, txShapeResult.ratio)) >= 0.9 {
			continue
		}
		c := func(get func(txShapeResult) cpuSnap, part string) string {
			return f1(median(each(runs, func(x txShapeResult) float64 { return get(x).by[part] })))
		}
		rd := func(x txShapeResult) cpuSnap { return x.rdCPU }
		rc := func(x txShapeResult) cpuSnap { return x.recvCPU }
		m := func(f func(txShapeResult) float64) float64 { return median(each(runs, f)) }
		notes = append(notes, fmt.Sprintf("*Transaction shape, %s updates (10).* The broker: pg_recvlogical's pass is the WAL sender's decoding (%s CPU-s) and a client that writes to /dev/null (%s); "+
			"the reader's pass needs the same decoding (%s), the reader (%s) and the broker (%s, %s µs per event: kfake handles each produce request in its one goroutine, its data on disk). "+
			"The reader produced %s batches, which took %s s of the pass's %s s from send to acknowledgement; with one batch in flight and the next full, "+
			"the reader stops reading and the WAL sender waits on it. A real Kafka cluster takes produce requests on other machines and cores.",
			thousands(float64(n)), c(rc, "walsender"), c(rc, "pg_recvlogical"), c(rd, "walsender"), c(rd, "reader"), c(rd, "broker"),
			f1(m(func(x txShapeResult) float64 { return 1e6 * x.rdCPU.by["broker"] / float64(x.updates) })),
			thousands(m(func(x txShapeResult) float64 { return float64(x.batches) })), f1(m(func(x txShapeResult) float64 { return x.produce })),
			f1(m(func(x txShapeResult) float64 { return x.rdSecs }))))
	}
	if len(notes) == 0 {
		return
	}
	p("\n## What bounds the targets missed\n\n")
	for _, n := range notes {
		p("- %s\n", n)
	}
}

// cpuTotal is the CPU seconds of every part of s.
func cpuTotal(s cpuSnap) float64 {
	t := 0.0
	for _, v := range s.by {
		t += v
	}
	return t
}
