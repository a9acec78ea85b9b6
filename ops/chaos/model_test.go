package chaos

// TestModel is the model-based test of the job state machine. A seeded
// generator interleaves what users do (insert, requeue by hand, replay one
// job, replay a range, cancel by SQL and by `jobstream cancel`, delete,
// truncate and reuse the ids, update the payload or an extra column, add and
// drop columns) with faults (SIGKILL of the reader and of workers, the
// broker down, Postgres down longer than the lease, SIGSTOP of a worker)
// while jobs flow through real jobstream processes. The steps run
// testdata/modelstep, whose every attempt is a pure function of the job's
// payload and attempt number. At the end, with the system quiescent, every
// job is judged against a reference model of the state machine (judge,
// below): its final row, each attempt chain's attempts and outcomes, the
// completions per chain, the dead letters, the step executions, and how fast
// a cancelled or deleted job's step stopped. Faults make some outcomes
// nondeterministic (a SIGKILLed worker's run expires and spends an attempt);
// the model accepts such an outcome only where the fault log explains it.
// TestModelJudge shows, on hand-made histories, that each check fails on the
// bug it is there for.
//
// `make test` runs a short schedule (about a minute); `make chaos` runs the
// long one (-chaos.full). The seed is printed; -chaos.seed N replays the
// schedule.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/ops/localpg"
	"github.com/jobstream/jobstream/schema"
	"github.com/jobstream/jobstream/schema/kafkaconn"
)

// ---------------------------------------------------------------------------
// The reference model.

// mpayload is what a job's payload tells modelstep (see its doc comment).
type mpayload struct {
	Fail  map[string]int  `json:"fail,omitempty"`
	Perm  map[string]bool `json:"perm,omitempty"`
	Sleep map[string]int  `json:"sleep_ms,omitempty"`
	Note  int             `json:"note,omitempty"`
}

func (p mpayload) json() string { b, _ := json.Marshal(p); return string(b) }

// epoch is what one user action did to a job, and the span of its history
// until the next action: insert, requeue and replay put the job at (from,
// done) with payload pay and start a new attempt chain for every step after
// from; cancel leaves it at (cancelStep, cancelled); delete (also truncate)
// removes it.
type epoch struct {
	kind       string // insert, requeue, replay, cancel, delete
	what       string // for messages: "requeue to (planner, done) at 12.3s"
	from       string
	cancelStep string
	pay        mpayload
	// seq is the run_id sequence's value at the action: an attempt chain
	// whose first run has a greater id belongs to this epoch or a later one.
	seq int64
	// before and after bracket the action's commit.
	before, after time.Time
	// open are the runs that were open when the action committed (read in
	// the action's transaction); openKnown is false for actions taken
	// through the CLI, whose transaction the test does not see.
	open      map[int64]bool
	openKnown bool
}

type mjob struct {
	id     string
	epochs []*epoch
}

func (j *mjob) last() *epoch { return j.epochs[len(j.epochs)-1] }

func (j *mjob) live() bool { return len(j.epochs) > 0 && j.last().kind != "delete" }

// mrun is a row of jobstream_runs.
type mrun struct {
	id                int64
	job, step         string
	chain, attempt    int
	worker            string
	started           time.Time
	finished          *time.Time
	outcome, err      string
	owes, letterPaid  bool
	chainFromDatabase bool
}

func (r mrun) String() string {
	fin := "open"
	if r.finished != nil {
		fin = r.finished.Format("15:04:05.000")
	}
	return fmt.Sprintf("run %d %s chain %d attempt %d %s [%s..%s] by %s", r.id, r.step, r.chain, r.attempt,
		cmpOr(r.outcome, "(open)"), r.started.Format("15:04:05.000"), fin, r.worker)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

type mrow struct {
	step, status string
	payload      string
}

type mletter struct {
	job, step, reason string
	attempts          int
}

// mexec is one execution of modelstep, from its log.
type mexec struct {
	job, step      string
	attempt, chain int
	start, end     time.Time // end is zero if it never ended (killed)
	how            string    // done, fail, perm, or "" if killed
}

// mfault is one fault the test injected (or a process that died by itself).
type mfault struct {
	kind     string // kill, stop, died, pgdown, broker
	pid      int    // the killed or stopped process, for kill, stop and died
	name     string
	from, to time.Time
}

// history is everything judge needs: the model, and what the system did.
type history struct {
	steps       []string
	maxAttempts int
	jobs        map[string]*mjob
	runs        []mrun
	rows        map[string]mrow
	letters     []mletter
	execs       []mexec
	faults      []mfault
	// hasChain is false when jobstream_runs has no chain column: the runs
	// of a (job, step) then count as one chain.
	hasChain bool
}

func (h *history) index(step string) int { return slices.Index(h.steps, step) }

func (h *history) next(step string) string {
	if i := h.index(step); i >= 0 && i+1 < len(h.steps) {
		return h.steps[i+1]
	}
	return ""
}

// workerPid reads the pid out of a worker id ("host:pid/member").
func workerPid(worker string) int {
	s := worker
	if i := strings.Index(s, "/"); i >= 0 {
		s = s[:i]
	}
	if i := strings.LastIndex(s, ":"); i >= 0 {
		s = s[i+1:]
	}
	n, _ := strconv.Atoi(s)
	return n
}

// explainedExpiry reports whether a fault explains why run r's lease
// expired: its worker was killed, stopped or died while r was open. A
// Postgres outage does not: a live worker's run must survive it.
func (h *history) explainedExpiry(r mrun) bool {
	pid := workerPid(r.worker)
	end := time.Now()
	if r.finished != nil {
		end = *r.finished
	}
	for _, f := range h.faults {
		if f.pid != pid || pid == 0 {
			continue
		}
		switch f.kind {
		case "kill", "died":
			if !f.from.Before(r.started.Add(-time.Second)) && !f.from.After(end.Add(time.Second)) {
				return true
			}
		case "stop":
			if !f.from.After(end) && !f.to.Before(r.started) {
				return true
			}
		}
	}
	return false
}

// faultNear reports whether any fault overlaps [from, to].
func (h *history) faultNear(from, to time.Time) bool {
	for _, f := range h.faults {
		if !f.from.After(to) && !f.to.Before(from) {
			return true
		}
	}
	return false
}

// execOf returns the execution of run r, nil if there is none.
func (h *history) execOf(r mrun) *mexec {
	end := time.Now()
	if r.finished != nil {
		end = *r.finished
	}
	for i, x := range h.execs {
		if x.job == r.job && x.step == r.step && x.attempt == r.attempt && !x.start.Before(r.started.Add(-time.Second)) && !x.start.After(end) {
			return &h.execs[i]
		}
	}
	return nil
}

// faultOnPath reports whether a fault in [from, to] may delay the stop of
// run r's step: Postgres or the broker down, the reader or r's worker
// killed or stopped.
func (h *history) faultOnPath(r mrun, from, to time.Time) bool {
	pid := workerPid(r.worker)
	for _, f := range h.faults {
		if f.from.After(to) || f.to.Before(from) {
			continue
		}
		if f.kind == "pgdown" || f.kind == "broker" || f.name == "reader" || (pid != 0 && f.pid == pid) {
			return true
		}
	}
	return false
}

// chain is one attempt chain of one step of one job.
type chainRuns struct {
	step  string
	chain int
	runs  []mrun // by attempt
	epoch int    // index into the job's epochs
}

// stopLimit is how long a cancelled or deleted job's step may go on: 2 s
// by contract, plus 1 s for a loaded machine.
const stopLimit = 3 * time.Second

// judge compares the history with the model and returns every problem.
func (h *history) judge() []string {
	var probs []string
	bad := func(job, format string, a ...any) { probs = append(probs, job+": "+fmt.Sprintf(format, a...)) }
	if !h.hasChain {
		probs = append(probs, "jobstream_runs has no chain column (feature missing): all runs of a job's step count as one attempt chain")
	}
	if !h.hasChain {
		// Without the column, a chain is what the model says it is: the
		// runs of a step within one epoch.
		for i, r := range h.runs {
			if j := h.jobs[r.job]; j != nil {
				for ei, e := range j.epochs {
					if r.id > e.seq && e.kind != "cancel" && e.kind != "delete" {
						h.runs[i].chain = ei + 1
					}
				}
			}
		}
	}
	byJob := map[string][]mrun{}
	for _, r := range h.runs {
		if h.jobs[r.job] == nil {
			bad(r.job, "%s of a job the test never inserted", r)
			continue
		}
		byJob[r.job] = append(byJob[r.job], r)
		if r.finished == nil {
			bad(r.job, "%s still open after the system went quiet", r)
		}
		if r.owes && !r.letterPaid {
			bad(r.job, "%s owes a dead letter that was never written", r)
		}
	}
	for id := range h.rows {
		if h.jobs[id] == nil {
			bad(id, "in jobs, but the test never inserted it")
		}
	}
	lettersOf := map[string]map[string]int{} // job → step → letters
	for _, l := range h.letters {
		if l.reason != "step failed" && l.reason != "lease expired" {
			bad(l.job, "dead letter for %s with reason %q: only a failed job owes a letter", l.step, l.reason)
			continue
		}
		if lettersOf[l.job] == nil {
			lettersOf[l.job] = map[string]int{}
		}
		lettersOf[l.job][l.step]++
	}
	execs := map[string][]mexec{} // job/step/attempt
	for _, e := range h.execs {
		k := fmt.Sprintf("%s/%s/%d", e.job, e.step, e.attempt)
		execs[k] = append(execs[k], e)
	}

	ids := make([]string, 0, len(h.jobs))
	for id := range h.jobs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		j := h.jobs[id]
		runs := byJob[id]
		// Group the runs into chains; a chain belongs to the epoch of its first run.
		chains := map[string]*chainRuns{}
		var order []*chainRuns
		for _, r := range runs {
			k := r.step + "/" + strconv.Itoa(r.chain)
			c := chains[k]
			if c == nil {
				c = &chainRuns{step: r.step, chain: r.chain, epoch: -1}
				for i, e := range j.epochs {
					if r.id > e.seq {
						c.epoch = i
					}
				}
				chains[k] = c
				order = append(order, c)
			}
			c.runs = append(c.runs, r)
		}
		for _, c := range order {
			sort.Slice(c.runs, func(a, b int) bool { return c.runs[a].attempt < c.runs[b].attempt })
		}
		// Runs per (step, attempt), to compare with the executions.
		runsAt := map[string]int{}
		doneAt := map[string]int{}
		for _, r := range runs {
			k := fmt.Sprintf("%s/%s/%d", id, r.step, r.attempt)
			runsAt[k]++
			if r.outcome == "done" || r.outcome == "failed" {
				doneAt[k]++
			}
		}
		// No event acted on twice, seen from the step's side: never more
		// executions of an attempt than runs of it, and an execution for
		// every attempt that ended by the step's own exit.
		for _, r := range runs {
			k := fmt.Sprintf("%s/%s/%d", id, r.step, r.attempt)
			if n := len(execs[k]); n > runsAt[k] {
				bad(id, "%s attempt %d executed %d times for %d run(s): a step ran without its own run", r.step, r.attempt, n, runsAt[k])
				runsAt[k] = 1 << 30 // once
			} else if n < doneAt[k] {
				bad(id, "%s attempt %d ended %d time(s) by the step's exit but the step ran %d time(s)", r.step, r.attempt, doneAt[k], n)
				doneAt[k] = 0
			}
		}
		for k := range execs {
			if strings.HasPrefix(k, id+"/") && runsAt[k] == 0 {
				bad(id, "the step ran (%s) with no run recorded", k)
			}
		}

		letterMust, letterMay := map[string]int{}, map[string]int{}
		var walkEnd *[2]string // the expected final row of the last epoch
		for ei, e := range j.epochs {
			var mine []*chainRuns
			for _, c := range order {
				if c.epoch == ei {
					mine = append(mine, c)
				}
			}
			var cut *epoch // the action that ended this epoch
			if ei+1 < len(j.epochs) {
				cut = j.epochs[ei+1]
			}
			if e.kind == "cancel" || e.kind == "delete" {
				for _, c := range mine {
					bad(id, "%s ran a new attempt chain (%s) after %s", c.step, c.runs[0], e.what)
				}
				continue
			}
			perStep := map[string][]*chainRuns{}
			for _, c := range mine {
				perStep[c.step] = append(perStep[c.step], c)
			}
			// Walk the pipeline from (from, done).
			end := [2]string{"", ""}
			s := h.next(e.from)
			visited := map[string]bool{}
			for s != "" {
				cs := perStep[s]
				visited[s] = true
				if len(cs) == 0 {
					if cut == nil {
						bad(id, "never claimed by %s after %s: a lost transition (the job waits at (%s, done))", s, e.what, prevStep(h, s))
					}
					end = [2]string{prevStep(h, s), "done"}
					break
				}
				if len(cs) > 1 {
					var firsts []string
					for _, c := range cs {
						firsts = append(firsts, c.runs[0].String())
					}
					bad(id, "%s ran %d attempt chains after %s, where one reaching (%s, done) starts one: an event acted on twice, or a rewind by the sweeper started a new chain (%s)",
						s, len(cs), e.what, prevStep(h, s), strings.Join(firsts, "; "))
				}
				res := h.chainResult(id, e, j.epochs[ei+1:], cs[0], bad)
				if res == "failed" {
					letterMust[s]++
					letterMay[s]++
				}
				if res == "raced-failed" {
					letterMay[s]++
				}
				if res == "failed" || res == "raced-failed" {
					if h.faultNear(cs[0].runs[len(cs[0].runs)-1].started.Add(-2*time.Second), lastFinish(cs[0]).Add(20*time.Second)) {
						letterMay[s]++ // a letter written, then not recorded, is written again
					}
				}
				for _, c := range cs[1:] {
					h.chainResult(id, e, j.epochs[ei+1:], c, bad)
				}
				if res != "done" {
					if res == "failed" {
						end = [2]string{s, "failed"}
					}
					break
				}
				s = h.next(s)
				if s == "" {
					end = [2]string{h.steps[len(h.steps)-1], "done"}
				}
			}
			for st, cs := range perStep {
				if !visited[st] {
					bad(id, "%s ran (%s) after %s, though the job never reached it", st, cs[0].runs[0], e.what)
				}
			}
			if cut == nil && end[0] != "" {
				walkEnd = &end
			}
		}
		// Runs that belong to no epoch (before the job's first insert).
		for _, c := range order {
			if c.epoch < 0 {
				bad(id, "%s before the job was inserted", c.runs[0])
			}
		}

		// The final row.
		row, exists := h.rows[id]
		last := j.last()
		switch {
		case last.kind == "delete":
			if exists {
				bad(id, "row is (%s, %s) but it was deleted (%s)", row.step, row.status, last.what)
			}
		case !exists:
			bad(id, "row is gone; the model expects it after %s", last.what)
		case last.kind == "cancel":
			if row.step != last.cancelStep || row.status != "cancelled" {
				bad(id, "row is (%s, %s); after %s it stays (%s, cancelled)", row.step, row.status, last.what, last.cancelStep)
			}
		case walkEnd != nil && (row.step != walkEnd[0] || row.status != walkEnd[1]):
			bad(id, "row is (%s, %s); the model expects (%s, %s) after %s", row.step, row.status, walkEnd[0], walkEnd[1], last.what)
		}
		if exists && last.kind != "delete" {
			var got mpayload
			json.Unmarshal([]byte(row.payload), &got)
			if got.json() != last.pay.json() {
				bad(id, "payload is %s; the user last wrote %s", row.payload, last.pay.json())
			}
		}

		// Dead letters: exactly one per failed chain (one more where a
		// fault may have made the worker write it twice).
		for _, s := range h.steps {
			got := lettersOf[id][s]
			if got < letterMust[s] || got > letterMay[s] {
				want := strconv.Itoa(letterMust[s])
				if letterMay[s] > letterMust[s] {
					want += ".." + strconv.Itoa(letterMay[s])
				}
				bad(id, "%d dead letter(s) for %s, the model expects %s (one per attempt chain that failed the job; none for a job the user changed)", got, s, want)
			}
		}

		// A step stopped by a cancel or delete stops within the limit: its
		// run is closed and its process is gone.
		for _, e := range j.epochs {
			if e.kind != "cancel" && e.kind != "delete" {
				continue
			}
			for _, r := range runs {
				if !h.openAt(e, r) {
					continue
				}
				if h.faultOnPath(r, e.before.Add(-500*time.Millisecond), e.after.Add(stopLimit)) {
					continue // a fault on the way from the cancel to the step: it may take longer
				}
				if r.finished != nil && r.finished.Sub(e.after) > stopLimit && r.outcome != "done" && r.outcome != "failed" {
					bad(id, "%s closed %.1fs after %s: a running step stops within 2 s", r, r.finished.Sub(e.after).Seconds(), e.what)
				}
				for _, x := range execs[fmt.Sprintf("%s/%s/%d", id, r.step, r.attempt)] {
					if x.start.Before(e.after) && !x.start.Before(r.started.Add(-time.Second)) && !x.end.IsZero() && x.end.Sub(e.after) > stopLimit {
						bad(id, "the step of %s kept running until %.1fs after %s (ended %s): a running step stops within 2 s", r, x.end.Sub(e.after).Seconds(), e.what, x.how)
					}
				}
			}
		}
	}
	return probs
}

// dump renders what the model and the system say about job id, for a
// problem's report: its epochs (the action, the run sequence at it, the
// bounds of its commit, the runs it found open) and its runs and
// executions, in order.
func (h *history) dump(id string) string {
	var b strings.Builder
	ts := func(t time.Time) string { return t.Format("15:04:05.000") }
	if j := h.jobs[id]; j != nil {
		for i, e := range j.epochs {
			open := "unknown (CLI)"
			if e.openKnown {
				var ids []string
				for r := range e.open {
					ids = append(ids, strconv.FormatInt(r, 10))
				}
				sort.Strings(ids)
				open = "[" + strings.Join(ids, " ") + "]"
			}
			fmt.Fprintf(&b, "\n  epoch %d: %s (%s from %s, cancel step %s) seq %d [%s..%s] open %s payload %s",
				i, e.what, e.kind, e.from, e.cancelStep, e.seq, ts(e.before), ts(e.after), open, e.pay.json())
		}
	}
	for _, r := range h.runs {
		if r.job == id {
			fmt.Fprintf(&b, "\n  %s %q", r, r.err)
		}
	}
	for _, x := range h.execs {
		if x.job == id {
			end := "killed"
			if !x.end.IsZero() {
				end = ts(x.end) + " " + x.how
			}
			fmt.Fprintf(&b, "\n  exec %s chain %d attempt %d [%s..%s]", x.step, x.chain, x.attempt, ts(x.start), end)
		}
	}
	if row, ok := h.rows[id]; ok {
		fmt.Fprintf(&b, "\n  row (%s, %s) payload %s", row.step, row.status, row.payload)
	}
	return b.String()
}

func prevStep(h *history, s string) string {
	if i := h.index(s); i > 0 {
		return h.steps[i-1]
	}
	return ""
}

func lastFinish(c *chainRuns) time.Time {
	r := c.runs[len(c.runs)-1]
	if r.finished != nil {
		return *r.finished
	}
	return r.started
}

// openAt reports whether run r was open when action e committed.
func (h *history) openAt(e *epoch, r mrun) bool {
	if e.openKnown {
		return e.open[r.id]
	}
	return r.started.Before(e.after) && (r.finished == nil || r.finished.After(e.before))
}

// doneBefore reports whether run r, which ended done while action e (taken
// through the CLI, so its commit is known only to lie in [before, after])
// was under way, completed before e committed. It did: a completion needs
// the run open and the job at (step, running), and every action closes the
// run or moves the job (a cancel, requeue or delete by the row lock, a replay
// by closing the run); after it the run ends cancelled, discarded, replayed
// or fenced, never done. Such a run is judged as one the action did not find
// open: it counts as the chain's completion, and the walk goes on to the
// next step, which may have claimed the job before the action too.
func (h *history) doneBefore(e *epoch, r mrun) bool {
	return !e.openKnown && r.outcome == "done" && r.finished != nil && !r.finished.After(e.after)
}

// chainResult checks one attempt chain of epoch e (ended by the first of
// the later actions, if any) and returns how it ended: done, failed (the job failed and owes a
// letter), raced-failed (failed as the user's action committed: a letter may
// be owed), cut (stopped by the user's action) or stuck (a problem).
func (h *history) chainResult(id string, e *epoch, later []*epoch, c *chainRuns, bad func(job, format string, a ...any)) string {
	var cut *epoch
	if len(later) > 0 {
		cut = later[0]
	}
	s := c.step
	perm := e.pay.Perm[s]
	fails := e.pay.Fail[s]
	for i, r := range c.runs {
		if r.attempt != i+1 {
			var as []string
			for _, r := range c.runs {
				as = append(as, strconv.Itoa(r.attempt))
			}
			bad(id, "%s chain %d has attempts %s after %s; a chain numbers its attempts 1, 2, … (a rerun gets its full --max-attempts)",
				s, c.chain, strings.Join(as, ","), e.what)
			break
		}
	}
	if n := len(c.runs); n > h.maxAttempts {
		bad(id, "%s chain %d spent %d attempts, over --max-attempts %d", s, c.chain, n, h.maxAttempts)
	}
	result := "stuck"
	dones := 0
	for i, r := range c.runs {
		lastRun := i == len(c.runs)-1
		if cut != nil && !r.started.Before(cut.after) {
			bad(id, "%s started after %s: a job the user changed or removed gets no further attempt", r, cut.what)
			continue
		}
		if cut != nil && h.openAt(cut, r) && !h.doneBefore(cut, r) {
			// The action found this run open: the step's end must not
			// count (no done, no failure, no retry, no letter).
			ok := map[string]bool{}
			// The actions that found the run open: the cut, and any later
			// one before the run closed (a cancel, then a delete).
			for _, a := range later {
				if a != cut && (r.finished == nil || !a.before.Before(*r.finished)) {
					continue
				}
				switch a.kind {
				case "cancel":
					ok["cancelled"] = true
					if x := h.execOf(r); x != nil && !x.end.IsZero() && !x.end.After(a.after) {
						ok["discarded"] = true // the step had ended; its result found the job cancelled
					}
				case "delete", "requeue":
					ok["cancelled"], ok["discarded"] = true, true
				case "replay":
					ok["replayed"] = true
				}
			}
			raced := !cut.openKnown && r.finished != nil && !r.finished.After(cut.after)
			switch {
			case ok[r.outcome]:
				result = "cut"
			case r.outcome == "expired":
				if !h.explainedExpiry(r) {
					bad(id, "%s: the lease expired though its worker was alive and never stopped (an attempt spent by a live worker, e.g. across a Postgres outage)", r)
				}
				result = "cut"
			case raced && r.outcome == "failed":
				// The step ended as the CLI's action committed: either order is right.
				if perm || r.attempt >= h.maxAttempts {
					result = "raced-failed"
				} else {
					result = "cut"
				}
			case r.outcome == "":
				// reported as open
			default:
				bad(id, "%s was running when %s; it must end %s, not %q (a job the user changed or removed keeps no result, gets no retry and no letter)",
					r, cut.what, keys(ok), r.outcome)
				result = "cut"
			}
			continue
		}
		want := "done"
		if perm || r.attempt <= fails {
			want = "failed"
		}
		switch {
		case r.outcome == want:
		case r.outcome == "expired":
			if !h.explainedExpiry(r) {
				bad(id, "%s: the lease expired though its worker was alive and never stopped (an attempt spent by a live worker, e.g. across a Postgres outage)", r)
			}
		case r.outcome == "":
			// reported as open
		default:
			bad(id, "%s ended %q; the payload says attempt %d of %s ends %q", r, r.outcome, r.attempt, s, want)
		}
		switch r.outcome {
		case "done":
			dones++
			result = "done"
			if !lastRun {
				bad(id, "%s completed, then the chain went on (%s)", r, c.runs[i+1])
			}
		case "failed", "expired":
			if perm && r.outcome == "failed" || r.attempt >= h.maxAttempts {
				result = "failed"
				if !lastRun {
					bad(id, "%s failed the job, then the chain went on (%s)", r, c.runs[i+1])
				}
			} else {
				result = "stuck"
			}
		default:
			result = "stuck"
		}
	}
	if dones > 1 {
		bad(id, "%s chain %d completed %d times: a step completes at most once per attempt chain", s, c.chain, dones)
	}
	if result == "stuck" && cut == nil {
		bad(id, "%s chain %d stopped after %s without completing or failing the job: a lost retry", s, c.chain, c.runs[len(c.runs)-1])
	}
	return result
}

func keys(m map[string]bool) string {
	var out []string
	for k := range m {
		out = append(out, strconv.Quote(k))
	}
	sort.Strings(out)
	return strings.Join(out, " or ")
}

// ---------------------------------------------------------------------------
// The run: processes, actions, faults.

type modelScenario struct {
	duration     time.Duration // of the schedule
	actionEvery  time.Duration // mean gap between user actions
	workerKills  int
	readerKills  int
	brokerDowns  int
	pgDowns      int
	stops        int
	truncates    int
	rangeBatch   int           // jobs of the range-replay window
	settle       time.Duration // bound on each wait for quiescence
	workersPer   map[string]int
	maxLongSleep int // ms
}

const (
	modelLease       = 3 * time.Second
	modelMaxAttempts = 3 // the worker's default, which the test does not pass
)

// mevent is one entry of the seeded schedule; r seeds the choices made when
// it runs (which job, which step).
type mevent struct {
	at   time.Duration
	kind string
	r    uint64
}

var actionWeights = []struct {
	kind string
	w    int
}{
	{"insert", 36}, {"requeue", 12}, {"cancel", 7}, {"cancel-cli", 5}, {"delete", 6}, {"replay", 9},
	{"payload", 10}, {"extra", 5}, {"addcol", 3}, {"dropcol", 3},
}

func (sc modelScenario) schedule(r *rand.Rand) []mevent {
	var evs []mevent
	total := 0
	for _, a := range actionWeights {
		total += a.w
	}
	for at := time.Duration(0); at < sc.duration; at += time.Duration(r.Int64N(int64(2 * sc.actionEvery))) {
		kind := "insert"
		if at > sc.duration/8 { // the first eighth fills the pipeline
			n := r.IntN(total)
			for _, a := range actionWeights {
				if n -= a.w; n < 0 {
					kind = a.kind
					break
				}
			}
		}
		evs = append(evs, mevent{at: at, kind: kind, r: r.Uint64()})
	}
	add := func(n int, kind string) {
		for range n {
			evs = append(evs, mevent{at: sc.duration/10 + time.Duration(r.Int64N(int64(sc.duration*8/10))), kind: kind, r: r.Uint64()})
		}
	}
	add(sc.workerKills, "kill-worker")
	add(sc.readerKills, "kill-reader")
	add(sc.brokerDowns, "broker-down")
	add(sc.pgDowns, "postgres-down")
	add(sc.stops, "stop-worker")
	add(sc.truncates, "truncate")
	// Every run alters the table at least once each way.
	evs = append(evs, mevent{at: sc.duration / 5, kind: "addcol", r: r.Uint64()}, mevent{at: sc.duration / 4, kind: "extra", r: r.Uint64()},
		mevent{at: sc.duration * 3 / 4, kind: "dropcol", r: r.Uint64()},
		// and cancels (both ways) and deletes a job whose step runs.
		mevent{at: sc.duration / 3, kind: "cancel-long-cli", r: r.Uint64()}, mevent{at: sc.duration / 2, kind: "cancel-long", r: r.Uint64()},
		mevent{at: sc.duration * 2 / 3, kind: "delete-long", r: r.Uint64()}, mevent{at: sc.duration * 2 / 5, kind: "requeue-long", r: r.Uint64()})
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].at < evs[j].at })
	return evs
}

// randomPayload draws a job's behaviour: most steps succeed at once, some
// fail their first attempts, a few fail every attempt or permanently, and
// some take seconds (long enough to be cancelled or to span an outage).
func randomPayload(r *rand.Rand, steps []string, maxSleep int) mpayload {
	var p mpayload
	for _, s := range steps[1:] {
		switch n := r.IntN(100); {
		case n < 14:
			p.Fail = setInt(p.Fail, s, 1)
		case n < 20:
			p.Fail = setInt(p.Fail, s, 2)
		case n < 23:
			p.Fail = setInt(p.Fail, s, modelMaxAttempts) // fails the job
		case n < 25:
			if p.Perm == nil {
				p.Perm = map[string]bool{}
			}
			p.Perm[s] = true
		}
		switch n := r.IntN(100); {
		case n < 8 && maxSleep > 1500:
			p.Sleep = setInt(p.Sleep, s, 1500+r.IntN(maxSleep-1500))
		case n < 40:
			p.Sleep = setInt(p.Sleep, s, r.IntN(80))
		}
	}
	return p
}

func setInt(m map[string]int, k string, v int) map[string]int {
	if m == nil {
		m = map[string]int{}
	}
	m[k] = v
	return m
}

// modelRun is the state of one run of TestModel.
type modelRun struct {
	t       *testing.T
	bin     string
	dir     string
	url     string
	brokers string
	pool    *pgxpool.Pool
	pg      *localpg.Postgres
	broker  *proc
	reader  *proc
	workers []*proc
	steps   []string
	start   time.Time

	ctl    sync.Mutex // held while the schedule kills or restarts a process
	mu     sync.Mutex // guards faults and probs
	faults []mfault
	outage atomic.Bool // the broker or Postgres is down now

	jobs     map[string]*mjob
	order    []string // job ids in insertion order
	nextID   int
	reusable []string // ids freed by a truncate or delete
	extras   []string // extra columns now in jobs
	nextCol  int
	probs    []string // problems found while acting (e.g. a command that failed)
	counts   map[string]int
}

func (m *modelRun) since() string { return fmt.Sprintf("%.1fs", time.Since(m.start).Seconds()) }

func (m *modelRun) fault(f mfault) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.faults = append(m.faults, f)
}

func (m *modelRun) problem(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	m.t.Logf("%s PROBLEM %s", m.since(), msg)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.probs = append(m.probs, msg)
}

func pidOf(p *proc) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// alive reports whether p's process exists (its Wait reaps it soon after it exits).
func alive(p *proc) bool {
	pid := pidOf(p)
	if pid == 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil {
		return false
	}
	// A zombie not yet reaped counts as gone.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := strings.LastIndexByte(string(b), ')'); i > 0 && i+2 < len(b) && b[i+2] == 'Z' {
		return false
	}
	return true
}

// startedIntoOutage reports whether a process whose log ends with tail
// refused to start because the broker or Postgres was unreachable during
// (or just after) an outage the schedule made.
func (m *modelRun) startedIntoOutage(tail string) bool {
	if !strings.Contains(tail, "cannot reach a Kafka broker") && !strings.Contains(tail, "cannot connect to Postgres") {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, f := range m.faults {
		if (f.kind == "broker" || f.kind == "pgdown") && time.Since(f.to) < 20*time.Second {
			return true
		}
	}
	// The fault is recorded when it ends: one in progress has no entry yet.
	return m.outage.Load()
}

// watch restarts a process that died by itself, recording it as a fault
// and as a problem: nothing in the schedule should make one exit.
func (m *modelRun) watch(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
		m.ctl.Lock()
		for _, p := range append([]*proc{m.reader, m.broker}, m.workers...) {
			if alive(p) {
				continue
			}
			pid := pidOf(p)
			m.fault(mfault{kind: "died", pid: pid, name: p.name, from: time.Now(), to: time.Now()})
			tail := tailOf(filepath.Join(m.dir, p.name+".log"), 600)
			// A process started while the broker or Postgres is down stops
			// at once with the sentence saying so, as a supervisor expects;
			// the supervisor (here) starts it again.
			if !m.startedIntoOutage(tail) {
				m.problem("%s (pid %d) exited by itself; log tail: %s", p.name, pid, tail)
			}
			p.start(m.t, m.bin)
		}
		m.ctl.Unlock()
	}
}

func tailOf(path string, n int) string {
	b, _ := os.ReadFile(path)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}

// seqNow reads the run_id sequence in q (a transaction or the pool).
func seqNow(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (int64, error) {
	var v int64
	var called bool
	if err := q.QueryRow(ctx, `SELECT last_value, is_called FROM jobstream_runs_run_id_seq`).Scan(&v, &called); err != nil {
		return 0, err
	}
	if !called {
		v = 0
	}
	return v, nil
}

// inTx runs an action's statements in one transaction that also reads the
// runs open at the action and the run sequence, and returns the epoch
// bounds. It retries while Postgres is unreachable before the commit; a
// failed commit has an unknown outcome and ends the test.
func (m *modelRun) inTx(job string, body func(tx pgx.Tx) error) (*epoch, error) {
	ctx := context.Background()
	var lastErr error
	for try := 0; try < 20; try++ {
		e := &epoch{open: map[int64]bool{}, openKnown: true, before: time.Now()}
		tx, err := m.pool.Begin(ctx)
		if err != nil {
			lastErr = err
			m.pool.Reset()
			time.Sleep(500 * time.Millisecond)
			continue
		}
		err = body(tx)
		if err == nil {
			q := `SELECT run_id FROM jobstream_runs WHERE finished_at IS NULL AND ($1 = '' OR job_id = $1)`
			var rows pgx.Rows
			if rows, err = tx.Query(ctx, q, job); err == nil {
				var ids []int64
				ids, err = pgx.CollectRows(rows, pgx.RowTo[int64])
				for _, id := range ids {
					e.open[id] = true
				}
			}
		}
		if err == nil {
			e.seq, err = seqNow(ctx, tx)
		}
		if err != nil {
			tx.Rollback(ctx)
			var pe interface{ SQLState() string }
			if errors.As(err, &pe) {
				return nil, err // Postgres refused the statement itself
			}
			lastErr = err
			m.pool.Reset()
			time.Sleep(500 * time.Millisecond)
			continue
		}
		if err := tx.Commit(ctx); err != nil {
			m.t.Fatalf("commit of an action failed, its outcome is unknown: %v", err)
		}
		e.after = time.Now()
		return e, nil
	}
	return nil, fmt.Errorf("postgres unreachable: %w", lastErr)
}

func (m *modelRun) liveIDs() []string {
	var out []string
	for _, id := range m.order {
		if m.jobs[id].live() {
			out = append(out, id)
		}
	}
	return out
}

// dbIDs returns the live model jobs whose row matches where.
func (m *modelRun) dbIDs(where string, args ...any) []string {
	rows, err := m.pool.Query(context.Background(), `SELECT job_id FROM jobs WHERE `+where+` ORDER BY job_id`, args...)
	if err != nil {
		return nil
	}
	ids, _ := pgx.CollectRows(rows, pgx.RowTo[string])
	var out []string
	for _, id := range ids {
		if j := m.jobs[id]; j != nil && j.live() {
			out = append(out, id)
		}
	}
	return out
}

func pick[T any](r *rand.Rand, xs []T) (T, bool) {
	var zero T
	if len(xs) == 0 {
		return zero, false
	}
	return xs[r.IntN(len(xs))], true
}

func (m *modelRun) addEpoch(id string, e *epoch) {
	j := m.jobs[id]
	if j == nil {
		j = &mjob{id: id}
		m.jobs[id] = j
		m.order = append(m.order, id)
	}
	j.epochs = append(j.epochs, e)
	m.counts[e.kind]++
}

// topicEvents describes, for a replay that missed job id, the job's events
// in the topic of step as read now (partition@offset op:step/status), the
// partitions' offsets, its runs and the model's epochs of it: whether the job
// ever finished step, or was only put past it by hand.
func (m *modelRun) topicEvents(step, id string) string {
	topic := schema.Topics{Prefix: schema.DefaultTopicPrefix}.Step(step)
	msgs, err := harness.ReadTopicAt(m.brokers, topic)
	var b strings.Builder
	fmt.Fprintf(&b, "%s holds %d messages (err %v), of %s:", topic, len(msgs), err, id)
	for _, msg := range msgs {
		if schema.JobIDFromKey(msg.Key) != id {
			continue
		}
		what := "?"
		if env, err := schema.DecodeEnvelope(msg.Value); err == nil {
			row, _ := schema.Row(env.After)
			what = env.Op + ":" + row.CurrentStep + "/" + row.Status
		}
		fmt.Fprintf(&b, " p%d@%d %s at %.1fs;", msg.Partition, msg.Offset, what, msg.Time.Sub(m.start).Seconds())
	}
	if pc, err := kafka.DialLeader(context.Background(), "tcp", m.brokers, topic, 0); err == nil {
		parts, _ := pc.ReadPartitions(topic)
		pc.Close()
		fmt.Fprintf(&b, " offsets")
		for _, p := range parts {
			if pc, err := kafka.DialLeader(context.Background(), "tcp", m.brokers, topic, p.ID); err == nil {
				f, l, err := pc.ReadOffsets()
				fmt.Fprintf(&b, " p%d:[%d,%d)", p.ID, f, l)
				if err != nil {
					fmt.Fprintf(&b, "(%v)", err)
				}
				pc.Close()
			}
		}
	}
	fmt.Fprintf(&b, "; runs (step chain attempt outcome): %s", strings.ReplaceAll(strings.TrimSpace(harness.DumpRows(m.pool,
		`SELECT step, chain, attempt, outcome FROM jobstream_runs WHERE job_id = $1 ORDER BY run_id`, id)), "\n", ", "))
	if j := m.jobs[id]; j != nil {
		fmt.Fprintf(&b, "; model epochs:")
		for _, e := range j.epochs {
			fmt.Fprintf(&b, " %s from %s at %.1fs;", e.kind, e.from, e.before.Sub(m.start).Seconds())
		}
	}
	return b.String()
}

// cli runs a jobstream command against the test's Postgres and broker.
func (m *modelRun) cli(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, m.bin, args...)
	cmd.Env = append(os.Environ(), "DATABASE_URL="+m.url, "KAFKA_BROKERS="+m.brokers, "JOBSTREAM_LOG_LEVEL=warn")
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (m *modelRun) insert(r *rand.Rand, id string, maxSleep int) {
	pay := randomPayload(r, m.steps, maxSleep)
	e, err := m.inTx(id, func(tx pgx.Tx) error {
		_, err := tx.Exec(context.Background(), `INSERT INTO jobs (job_id, current_step, status, payload) VALUES ($1, $2, 'done', $3)`, id, m.steps[0], pay.json())
		return err
	})
	if err != nil {
		m.problem("insert %s: %v", id, err)
		return
	}
	e.kind, e.from, e.pay = "insert", m.steps[0], pay
	e.what = fmt.Sprintf("insert at %s", m.since())
	m.addEpoch(id, e)
}

func (m *modelRun) freshID(prefix string) string {
	m.nextID++
	return fmt.Sprintf("%s%04d", prefix, m.nextID)
}

// act runs one user action of the schedule.
func (m *modelRun) act(ev mevent, sc modelScenario) {
	r := rand.New(rand.NewPCG(ev.r, 2))
	ctx := context.Background()
	switch ev.kind {
	case "insert":
		id := m.freshID("m")
		if len(m.reusable) > 0 && r.IntN(100) < 40 {
			i := r.IntN(len(m.reusable))
			id = m.reusable[i]
			m.reusable = slices.Delete(m.reusable, i, i+1)
		}
		m.insert(r, id, sc.maxLongSleep)

	case "requeue":
		// UPDATE jobs SET current_step = T, status = 'done': a new chain from T.
		id, ok := pick(r, m.liveIDs())
		if !ok {
			return
		}
		to := m.steps[r.IntN(len(m.steps)-1)]
		pay := m.jobs[id].last().pay
		if r.IntN(2) == 0 {
			pay = randomPayload(r, m.steps, sc.maxLongSleep)
			pay.Note = m.jobs[id].last().pay.Note
		}
		m.requeue(id, to, pay)

	case "cancel", "cancel-cli":
		// Mostly a running job: that is where cancelling matters.
		id, ok := pick(r, m.dbIDs(`status = 'running'`))
		if !ok || r.IntN(4) == 0 {
			if id, ok = pick(r, m.liveIDs()); !ok {
				return
			}
		}
		m.cancel(id, ev.kind == "cancel-cli")

	case "cancel-long", "cancel-long-cli", "delete-long":
		// A job whose first step runs for seconds, cancelled or deleted
		// while it runs: its step must stop within 2 s.
		id := m.longJob(m.steps[1], 6000)
		if id == "" {
			return
		}
		if ev.kind == "delete-long" {
			m.delete(id)
		} else {
			m.cancel(id, ev.kind == "cancel-long-cli")
		}

	case "requeue-long":
		// Requeued to the trigger of the step it runs, on a step with two
		// workers: the other one claims the rerun while the old attempt
		// still runs, and the old attempt must not complete it.
		step := m.steps[2]
		id := m.longJob(step, 4000)
		if id == "" {
			return
		}
		m.requeue(id, m.steps[1], m.jobs[id].last().pay)

	case "delete":
		id, ok := pick(r, m.dbIDs(`status = 'running'`))
		if !ok || r.IntN(2) == 0 {
			if id, ok = pick(r, m.liveIDs()); !ok {
				return
			}
		}
		m.delete(id)

	case "truncate":
		live := m.liveIDs()
		e, err := m.inTx("", func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `TRUNCATE jobs`)
			return err
		})
		if err != nil {
			m.problem("truncate: %v", err)
			return
		}
		m.t.Logf("%s TRUNCATE jobs (%d jobs)", m.since(), len(live))
		m.counts["truncate"]++
		for _, id := range live {
			ee := *e
			ee.kind, ee.what = "delete", fmt.Sprintf("TRUNCATE at %s", m.since())
			m.addEpoch(id, &ee)
			m.counts["delete"]--
			m.reusable = append(m.reusable, id)
		}

	case "replay":
		// Replay of a job at rest (done at the end, or failed): nothing else
		// moves it, so the replay's effect is the model's to predict.
		last := m.steps[len(m.steps)-1]
		id, ok := pick(r, m.dbIDs(`((current_step = $1 AND status = 'done') OR status = 'failed')
			AND NOT EXISTS (SELECT FROM jobstream_runs r WHERE r.job_id = jobs.job_id AND r.finished_at IS NULL)`, last))
		if !ok {
			return
		}
		var at string
		if err := m.pool.QueryRow(ctx, `SELECT current_step FROM jobs WHERE job_id = $1`, id).Scan(&at); err != nil {
			return
		}
		// Only a step whose trigger the job has finished can be replayed:
		// a requeue by hand may have moved it past steps it never ran.
		var steps []string
		for _, s := range m.steps[1 : max(m.index(at), 1)+1] {
			if m.finished(id, m.steps[m.index(s)-1]) {
				steps = append(steps, s)
			}
		}
		if len(steps) == 0 {
			return
		}
		m.replay(steps[r.IntN(len(steps))], []string{id}, nil, "")

	case "payload":
		id, ok := pick(r, m.liveIDs())
		if !ok {
			return
		}
		note := 1 + r.IntN(1000)
		e, err := m.inTx(id, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `UPDATE jobs SET payload = jsonb_set(coalesce(payload, '{}'), '{note}', to_jsonb($2::int)) WHERE job_id = $1`, id, note)
			return err
		})
		if err != nil {
			m.problem("payload update %s: %v", id, err)
			return
		}
		_ = e
		m.jobs[id].last().pay.Note = note // a payload update is no transition: the epoch goes on
		m.counts["payload"]++

	case "extra":
		id, ok := pick(r, m.liveIDs())
		col, ok2 := pick(r, m.extras)
		if !ok || !ok2 {
			return
		}
		if _, err := m.pool.Exec(ctx, `UPDATE jobs SET `+col+` = $2 WHERE job_id = $1`, id, fmt.Sprint(r.IntN(1000))); err != nil {
			m.problem("update %s of %s: %v", col, id, err)
		}
		m.counts["extra"]++

	case "addcol":
		if len(m.extras) >= 3 {
			return
		}
		m.nextCol++
		col := fmt.Sprintf("extra_%d", m.nextCol)
		if _, err := m.pool.Exec(ctx, `ALTER TABLE jobs ADD COLUMN `+col+` text DEFAULT 'x'`); err != nil {
			m.problem("add column: %v", err)
			return
		}
		m.t.Logf("%s ALTER TABLE jobs ADD COLUMN %s", m.since(), col)
		m.extras = append(m.extras, col)
		m.counts["addcol"]++

	case "dropcol":
		if len(m.extras) == 0 {
			return
		}
		col := m.extras[0]
		if _, err := m.pool.Exec(ctx, `ALTER TABLE jobs DROP COLUMN `+col); err != nil {
			m.problem("drop column: %v", err)
			return
		}
		m.t.Logf("%s ALTER TABLE jobs DROP COLUMN %s", m.since(), col)
		m.extras = m.extras[1:]
		m.counts["dropcol"]++
	}
}

// cancel cancels job id with `jobstream cancel` (cli) or by SQL.
func (m *modelRun) cancel(id string, cli bool) {
	ctx := context.Background()
	if cli {
		before := time.Now()
		out, err := m.cli("cancel", id)
		after := time.Now()
		var step, status string
		qerr := m.pool.QueryRow(ctx, `SELECT current_step, status FROM jobs WHERE job_id = $1`, id).Scan(&step, &status)
		if err == nil && qerr == nil && status == "cancelled" {
			seq, _ := seqNow(ctx, m.pool)
			// No claim can follow a cancel: the runs after seq belong to no chain of a later epoch.
			m.counts["cancel-cli"]++
			m.addEpoch(id, &epoch{kind: "cancel", cancelStep: step, pay: m.jobs[id].last().pay, seq: seq, before: before, after: after,
				what: fmt.Sprintf("jobstream cancel at %s", m.since())})
			return
		}
		m.problem("jobstream cancel %s did not cancel it (feature missing?): err %v, row (%s, %s), output: %.300s", id, err, step, status, out)
		// Cancel by SQL, so that the model goes on.
	}
	var step string
	e, err := m.inTx(id, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `UPDATE jobs SET status = 'cancelled', updated_at = now() WHERE job_id = $1 RETURNING current_step`, id).Scan(&step)
	})
	if err != nil {
		m.problem("cancel %s: %v", id, err)
		return
	}
	e.kind, e.cancelStep, e.pay = "cancel", step, m.jobs[id].last().pay
	e.what = fmt.Sprintf("cancel (UPDATE status = 'cancelled') at %s", m.since())
	m.addEpoch(id, e)
}

// requeue moves job id to (to, done) by hand, with payload pay.
func (m *modelRun) requeue(id, to string, pay mpayload) {
	e, err := m.inTx(id, func(tx pgx.Tx) error {
		_, err := tx.Exec(context.Background(), `UPDATE jobs SET current_step = $2, status = 'done', error = NULL, payload = $3, updated_at = now() WHERE job_id = $1`, id, to, pay.json())
		return err
	})
	if err != nil {
		m.problem("requeue %s: %v", id, err)
		return
	}
	e.kind, e.from, e.pay = "requeue", to, pay
	e.what = fmt.Sprintf("requeue by hand to (%s, done) at %s", to, m.since())
	m.addEpoch(id, e)
}

// delete deletes job id.
func (m *modelRun) delete(id string) {
	e, err := m.inTx(id, func(tx pgx.Tx) error {
		_, err := tx.Exec(context.Background(), `DELETE FROM jobs WHERE job_id = $1`, id)
		return err
	})
	if err != nil {
		m.problem("delete %s: %v", id, err)
		return
	}
	e.kind, e.what = "delete", fmt.Sprintf("DELETE at %s", m.since())
	m.addEpoch(id, e)
	m.reusable = append(m.reusable, id)
}

// longJob inserts a job whose step sleeps ms and returns its id once that
// step runs ("" if the insert failed).
func (m *modelRun) longJob(step string, ms int) string {
	id := m.freshID("p")
	pay := mpayload{Sleep: map[string]int{step: ms}}
	e, err := m.inTx(id, func(tx pgx.Tx) error {
		_, err := tx.Exec(context.Background(), `INSERT INTO jobs (job_id, current_step, status, payload) VALUES ($1, $2, 'done', $3)`, id, m.steps[0], pay.json())
		return err
	})
	if err != nil {
		m.problem("insert %s: %v", id, err)
		return ""
	}
	e.kind, e.from, e.pay = "insert", m.steps[0], pay
	e.what = fmt.Sprintf("insert at %s", m.since())
	m.addEpoch(id, e)
	err = harness.Poll(10*time.Second, func() (bool, string) {
		var n int
		m.pool.QueryRow(context.Background(), `SELECT count(*) FROM jobstream_runs WHERE job_id = $1 AND step = $2 AND finished_at IS NULL`, id, step).Scan(&n)
		return n > 0, "not claimed"
	})
	if err != nil {
		m.t.Logf("%s %s was not claimed within 10s", m.since(), id)
		return id
	}
	time.Sleep(300 * time.Millisecond) // the step is running
	return id
}

func (m *modelRun) index(step string) int { return slices.Index(m.steps, step) }

// finished reports whether job id ever reached (step, done), so that the
// trigger topic of the step after it holds an event saying so: an action
// put it there (an insert, a requeue by hand, a replay), or a run of step
// completed.
func (m *modelRun) finished(id, step string) bool {
	if j := m.jobs[id]; j != nil {
		for _, e := range j.epochs {
			if e.from == step {
				return true
			}
		}
	}
	var done bool
	m.pool.QueryRow(context.Background(), `SELECT EXISTS (SELECT FROM jobstream_runs WHERE job_id = $1 AND step = $2 AND outcome = 'done')`, id, step).Scan(&done)
	return done
}

// replay runs `jobstream replay --step S` for jobs at rest (or a time
// range, when ids is nil), and records an epoch for each job it rewound.
// want lists the jobs the model expects it to rewind.
func (m *modelRun) replay(step string, ids, want []string, rangeArgs string) {
	ctx := context.Background()
	// Only jobs at rest can be told apart from jobs in flight: nothing but
	// the replay moves them.
	stamp := func() map[string]time.Time {
		rows, err := m.pool.Query(ctx, `SELECT job_id, updated_at FROM jobs j
			WHERE ((current_step = $1 AND status = 'done') OR status IN ('failed', 'cancelled'))
			AND NOT EXISTS (SELECT FROM jobstream_runs r WHERE r.job_id = j.job_id AND r.finished_at IS NULL)`, m.steps[len(m.steps)-1])
		if err != nil {
			return nil
		}
		out := map[string]time.Time{}
		for rows.Next() {
			var id string
			var at time.Time
			rows.Scan(&id, &at)
			out[id] = at
		}
		rows.Close()
		return out
	}
	was := stamp()
	seq, err := seqNow(ctx, m.pool)
	if err != nil || was == nil {
		return
	}
	args := []string{"replay", "--step", step}
	what := fmt.Sprintf("jobstream replay --step %s", step)
	if ids != nil {
		for _, id := range ids {
			args = append(args, "--job", id)
		}
		want = ids
	} else {
		args = append(args, strings.Fields(rangeArgs)...)
		what += " " + rangeArgs
	}
	before := time.Now()
	out, cerr := m.cli(args...)
	after := time.Now()
	var rewound []string
	for id, at := range was {
		var nat time.Time
		if err := m.pool.QueryRow(ctx, `SELECT updated_at FROM jobs WHERE job_id = $1`, id).Scan(&nat); err == nil && !nat.Equal(at) {
			rewound = append(rewound, id)
		}
	}
	sort.Strings(rewound)
	wantSet := map[string]bool{}
	for _, id := range want {
		wantSet[id] = true
	}
	for _, id := range rewound {
		if !wantSet[id] {
			m.problem("%s rewound %s, which the model did not expect it to (it is outside the range or has not passed %s's trigger)", what, id, step)
		}
		delete(wantSet, id)
	}
	for id := range wantSet {
		var st, status string
		m.pool.QueryRow(ctx, `SELECT current_step, status FROM jobs WHERE job_id = $1`, id).Scan(&st, &status)
		m.problem("%s did not rewind %s at (%s, %s), which has passed %s's trigger (err %v): %.400s", what, id, st, status, step, cerr, out)
		m.t.Logf("%s diagnostics for %s: %s", m.since(), id, m.topicEvents(prevStep(&history{steps: m.steps}, step), id))
	}
	trigger := prevStep(&history{steps: m.steps}, step)
	for _, id := range rewound {
		j := m.jobs[id]
		if j == nil || !j.live() {
			continue
		}
		m.addEpoch(id, &epoch{kind: "replay", from: trigger, pay: j.last().pay, seq: seq, before: before, after: after,
			what: fmt.Sprintf("%s at %.1fs", what, before.Sub(m.start).Seconds())})
	}
	m.t.Logf("%s %s: %d job(s) rewound", m.since(), what, len(rewound))
}

// quiet reports whether the system is at rest: every job done at the end,
// failed or cancelled, no run open, no dead letter owed.
func (m *modelRun) quiet() (bool, string) {
	var notTerminal, open, owed int
	err := m.pool.QueryRow(context.Background(), `SELECT
		(SELECT count(*) FROM jobs WHERE NOT ((current_step = $1 AND status = 'done') OR status IN ('failed', 'cancelled'))),
		(SELECT count(*) FROM jobstream_runs WHERE finished_at IS NULL),
		(SELECT count(*) FROM jobstream_runs WHERE dead_letter IS NOT NULL AND dead_lettered_at IS NULL)`, m.steps[len(m.steps)-1]).
		Scan(&notTerminal, &open, &owed)
	if err != nil {
		return false, err.Error()
	}
	return notTerminal == 0 && open == 0 && owed == 0, fmt.Sprintf("%d jobs not at rest, %d runs open, %d letters owed", notTerminal, open, owed)
}

// restless describes, for a report, the jobs not at rest (at most 10):
// their row and their last run.
func (m *modelRun) restless() string {
	rows, err := m.pool.Query(context.Background(), `SELECT j.job_id, j.current_step, j.status, to_char(j.updated_at, 'HH24:MI:SS.MS'),
			coalesce((SELECT r.step || ' chain ' || r.chain || ' attempt ' || r.attempt || ' ' || coalesce(r.outcome, 'open') || ' at ' ||
				to_char(coalesce(r.finished_at, r.started_at), 'HH24:MI:SS.MS')
				FROM jobstream_runs r WHERE r.job_id = j.job_id::text ORDER BY r.run_id DESC LIMIT 1), 'none')
		FROM jobs j WHERE NOT ((j.current_step = $1 AND j.status = 'done') OR j.status IN ('failed', 'cancelled'))
		ORDER BY j.job_id LIMIT 10`, m.steps[len(m.steps)-1])
	if err != nil {
		return "jobs not at rest unknown: " + err.Error()
	}
	var out []string
	for rows.Next() {
		var id, step, status, at, last string
		if rows.Scan(&id, &step, &status, &at, &last) == nil {
			out = append(out, fmt.Sprintf("%s at (%s, %s) since %s, last run %s", id, step, status, at, last))
		}
	}
	rows.Close()
	return "jobs not at rest: " + strings.Join(out, "; ")
}

// caughtUp waits until the reader has confirmed every change made so far:
// then every event of them is in the topics (the slot's flush position
// passes only acknowledged events).
func (m *modelRun) caughtUp(timeout time.Duration) error {
	ctx := context.Background()
	var lsn string
	if err := m.pool.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
		return err
	}
	return harness.Poll(timeout, func() (bool, string) {
		var ok bool
		m.pool.QueryRow(ctx, `SELECT coalesce(confirmed_flush_lsn >= $1::pg_lsn, false) FROM pg_replication_slots WHERE slot_name = 'jobstream'`, lsn).Scan(&ok)
		return ok, "the reader has not confirmed " + lsn
	})
}

func TestModel(t *testing.T) {
	steps := schema.DefaultSteps
	sc := modelScenario{duration: 30 * time.Second, actionEvery: 300 * time.Millisecond, workerKills: 2, readerKills: 1, brokerDowns: 1,
		pgDowns: 1, stops: 1, truncates: 1, rangeBatch: 6, settle: 40 * time.Second, maxLongSleep: 3500,
		workersPer: map[string]int{"vlm_analyze": 1, "yolo_detect": 2, "planner": 2, "overlay": 1}}
	if *full {
		sc = modelScenario{duration: 4 * time.Minute, actionEvery: 250 * time.Millisecond, workerKills: 14, readerKills: 4, brokerDowns: 3,
			pgDowns: 3, stops: 4, truncates: 2, rangeBatch: 20, settle: 4 * time.Minute, maxLongSleep: 5000,
			workersPer: map[string]int{"vlm_analyze": 2, "yolo_detect": 2, "planner": 2, "overlay": 2}}
	}
	s, rng := seeded(t, "model", 7, "%s of actions, %d worker kills, %d reader kills, %d broker outages, %d Postgres outages of %s, %d SIGSTOPs, %d truncates", sc.duration, sc.workerKills, sc.readerKills, sc.brokerDowns, sc.pgDowns, modelLease+2*time.Second, sc.stops, sc.truncates)
	events := sc.schedule(rng)
	began := time.Now()

	m := &modelRun{t: t, steps: steps, jobs: map[string]*mjob{}, counts: map[string]int{}}
	m.bin = harness.Binary(t)
	m.dir = harness.New(t).Dir
	ctx := context.Background()

	// The step program.
	stepBin := filepath.Join(m.dir, "modelstep")
	if out, err := exec.Command("go", "build", "-o", stepBin, "./testdata/modelstep").CombinedOutput(); err != nil {
		t.Fatalf("build modelstep: %v: %s", err, out)
	}
	stepLog := filepath.Join(m.dir, "steps.log")

	// Postgres of our own, to stop.
	m.pg, m.url, m.pool = migratedPostgres(t, ctx, m.dir)
	defer func() { m.pg.Stop() }()
	defer m.pool.Close()

	logf := logFiles(t, m.dir)
	port, _ := localpg.FreePort()
	m.brokers = fmt.Sprintf("127.0.0.1:%d", port)
	m.broker = &proc{name: "broker", args: []string{"broker", "--listen", m.brokers, "--data-dir", filepath.Join(m.dir, "broker")}, log: logf("broker")}
	m.broker.start(t, m.bin)
	defer m.broker.kill()
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		return (kafkaconn.Broker{Addrs: []string{m.brokers}}).Ping(ctx, time.Second) == nil, "broker not up"
	})
	env := []string{"DATABASE_URL=" + m.url, "KAFKA_BROKERS=" + m.brokers, "JOBSTREAM_LOG_LEVEL=info", "MODEL_STEP_LOG=" + stepLog}
	m.reader = &proc{name: "reader", args: []string{"reader"}, env: env, log: logf("reader")}
	m.reader.start(t, m.bin)
	defer m.reader.kill()
	for _, step := range steps[1:] {
		for i := range sc.workersPer[step] {
			name := fmt.Sprintf("worker-%s-%d", step, i)
			p := &proc{name: name, env: env, log: logf(name),
				args: []string{"worker", "--step", step, "--lease", modelLease.String(), "--retry-backoff", "200ms", "--stall-timeout", "10s", "--", stepBin}}
			p.start(t, m.bin)
			defer p.kill()
			m.workers = append(m.workers, p)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range append([]*proc{m.reader}, m.workers...) {
				t.Logf("--- %s log (tail) ---\n%s", p.name, tailOf(filepath.Join(m.dir, p.name+".log"), 2500))
			}
		}
	})
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		var n int
		m.pool.QueryRow(ctx, `SELECT count(*) FROM jobstream_slots WHERE slot_name = 'jobstream' AND completed_at IS NOT NULL`).Scan(&n)
		return n == 1, "the reader has not completed its initial snapshot"
	})
	wctx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() { defer close(watched); m.watch(wctx) }()

	// The schedule.
	m.start = time.Now()
	var stops sync.WaitGroup
	for _, ev := range events {
		time.Sleep(time.Until(m.start.Add(ev.at)))
		r := rand.New(rand.NewPCG(ev.r, 3))
		switch ev.kind {
		case "kill-worker", "kill-reader":
			p := m.reader
			if ev.kind == "kill-worker" {
				p = m.workers[r.IntN(len(m.workers))]
			}
			m.ctl.Lock()
			pid := pidOf(p)
			t.Logf("%s kill -9 %s (pid %d)", m.since(), p.name, pid)
			at := time.Now()
			p.kill()
			m.fault(mfault{kind: "kill", pid: pid, name: p.name, from: at, to: at})
			time.Sleep(time.Duration(r.IntN(1500)) * time.Millisecond)
			p.start(t, m.bin)
			m.ctl.Unlock()
		case "broker-down":
			m.ctl.Lock()
			d := time.Duration(1000+r.IntN(2000)) * time.Millisecond
			t.Logf("%s broker down for %s", m.since(), d)
			at := time.Now()
			m.outage.Store(true)
			m.broker.kill()
			time.Sleep(d)
			m.broker.start(t, m.bin)
			// The commands the schedule runs next need it.
			if err := harness.Poll(30*time.Second, func() (bool, string) {
				return (kafkaconn.Broker{Addrs: []string{m.brokers}}).Ping(ctx, time.Second) == nil, "broker not up"
			}); err != nil {
				m.problem("the broker did not come back: %v", err)
			}
			m.fault(mfault{kind: "broker", from: at, to: time.Now()})
			m.outage.Store(false)
			m.ctl.Unlock()
		case "postgres-down":
			// Longer than the lease: a live worker's step must survive it.
			d := modelLease + 2*time.Second
			// A step running across the outage, from before it to well
			// after: its worker is alive, so it must finish in this attempt.
			probe := m.longJob(m.steps[1], int((d+modelLease+time.Second)/time.Millisecond))
			t.Logf("%s Postgres down for %s (%s's step runs across it)", m.since(), d, probe)
			at := time.Now()
			m.outage.Store(true)
			if r.IntN(2) == 0 {
				m.pg.Stop()
			} else {
				m.pg.Crash()
			}
			time.Sleep(d)
			// A start can fail if the server's own shutdown is not over, or
			// something took the port meanwhile: try a few times.
			var npg *localpg.Postgres
			for try := 0; ; try++ {
				var err error
				if npg, err = localpg.Start(ctx, filepath.Join(m.dir, "pg"), localpg.Options{Port: m.pg.Port}); err == nil {
					break
				}
				if try == 20 {
					t.Fatalf("restart Postgres: %v; its log: %s", err, tailOf(filepath.Join(m.dir, "pg.log"), 1500))
				}
				t.Logf("%s restart Postgres: %v; trying again", m.since(), err)
				time.Sleep(time.Second)
			}
			m.pg = npg
			m.pool.Reset()
			m.fault(mfault{kind: "pgdown", from: at, to: time.Now()})
			m.outage.Store(false)
		case "stop-worker":
			p := m.workers[r.IntN(len(m.workers))]
			d := modelLease + 2*time.Second
			m.ctl.Lock() // not killed while stopped
			pid := pidOf(p)
			t.Logf("%s SIGSTOP %s (pid %d) for %s", m.since(), p.name, pid, d)
			at := time.Now()
			p.signal(syscall.SIGSTOP)
			stops.Add(1)
			go func() {
				defer stops.Done()
				defer m.ctl.Unlock()
				time.Sleep(d)
				p.signal(syscall.SIGCONT)
				m.fault(mfault{kind: "stop", pid: pid, name: p.name, from: at, to: time.Now()})
			}()
		default:
			m.act(ev, sc)
		}
	}
	stops.Wait()
	t.Logf("%s schedule over: %d jobs; actions %v", m.since(), len(m.jobs), m.counts)

	settle := func(what string) bool {
		if err := harness.Poll(sc.settle, m.quiet); err != nil {
			m.problem("the system did not come to rest %s: %v; %s", what, err, m.restless())
			return false
		}
		return true
	}
	// The range replay, in a window where only its own jobs move.
	if settle("after the schedule") && m.caughtUp(30*time.Second) == nil {
		from := time.Now()
		time.Sleep(50 * time.Millisecond)
		var batch []string
		for range sc.rangeBatch {
			id := m.freshID("w")
			m.insert(rng, id, 300)
			batch = append(batch, id)
		}
		if settle("after the range batch") && m.caughtUp(30*time.Second) == nil {
			time.Sleep(50 * time.Millisecond)
			to := time.Now()
			step := steps[1+rng.IntN(len(steps)-1)]
			var want []string
			for _, id := range batch {
				var at, status string
				m.pool.QueryRow(ctx, `SELECT current_step, status FROM jobs WHERE job_id = $1`, id).Scan(&at, &status)
				if m.index(at) >= m.index(step) && (status == "done" || status == "failed") {
					want = append(want, id)
				}
			}
			m.replay(step, nil, want, "--from "+from.UTC().Format(time.RFC3339Nano)+" --to "+to.UTC().Format(time.RFC3339Nano))
		}
	}
	settle("at the end")
	stopWatch()
	<-watched

	h := m.collect(stepLog)
	probs := append(slices.Clone(m.probs), h.judge()...)
	outcomes := map[string]int{}
	for _, r := range h.runs {
		outcomes[cmpOr(r.outcome, "open")]++
	}
	t.Logf("model report (seed %d): %d jobs, %d rows left, %d runs %v, %d executions, %d dead letters, %d faults, wall time %s",
		s, len(h.jobs), len(h.rows), len(h.runs), outcomes, len(h.execs), len(h.letters), len(h.faults), time.Since(began).Round(time.Second))
	if len(probs) > 0 {
		var sum []string
		for check, n := range summarize(probs) {
			sum = append(sum, fmt.Sprintf("%4d  %s", n, check))
		}
		sort.Strings(sum)
		t.Errorf("%d problems, by check (at most 8 of each shown):\n%s", len(probs), strings.Join(sum, "\n"))
	}
	shown := map[string]int{}
	for _, p := range probs {
		c := checkOf(p)
		if shown[c]++; shown[c] <= 8 {
			t.Error(p)
		}
	}
	dumped := map[string]bool{}
	for _, p := range probs {
		if id, _, ok := strings.Cut(p, ": "); ok && h.jobs[id] != nil && !dumped[id] && len(dumped) < 8 {
			dumped[id] = true
			t.Logf("what the model and the system say about %s (model t=0 at %s):%s", id, m.start.Format("15:04:05.000"), h.dump(id))
		}
	}
	if len(probs) > 0 {
		t.Logf("replay this schedule with: go test ./ops/chaos -run TestModel -count=1 -v -args -chaos.seed %d", s)
	}
}

// collect reads what the system did: jobs, runs, dead letters, executions.
func (m *modelRun) collect(stepLog string) *history {
	t := m.t
	ctx := context.Background()
	h := &history{steps: m.steps, maxAttempts: modelMaxAttempts, jobs: m.jobs, rows: map[string]mrow{}, faults: m.faults, hasChain: true}
	rows, err := m.pool.Query(ctx, `SELECT job_id, current_step, status, coalesce(payload::text, 'null') FROM jobs`)
	if err != nil {
		t.Fatalf("read jobs: %v", err)
	}
	for rows.Next() {
		var id string
		var r mrow
		if err := rows.Scan(&id, &r.step, &r.status, &r.payload); err != nil {
			t.Fatal(err)
		}
		h.rows[id] = r
	}
	rows.Close()
	q := `SELECT run_id, job_id, step, %s, attempt, worker, started_at, finished_at, coalesce(outcome, ''), coalesce(error, ''),
		dead_letter IS NOT NULL, dead_lettered_at IS NOT NULL FROM jobstream_runs ORDER BY run_id`
	rows, err = m.pool.Query(ctx, fmt.Sprintf(q, "chain"))
	if err != nil {
		h.hasChain = false
		rows, err = m.pool.Query(ctx, fmt.Sprintf(q, "1"))
	}
	if err != nil {
		t.Fatalf("read runs: %v", err)
	}
	for rows.Next() {
		var r mrun
		if err := rows.Scan(&r.id, &r.job, &r.step, &r.chain, &r.attempt, &r.worker, &r.started, &r.finished, &r.outcome, &r.err, &r.owes, &r.letterPaid); err != nil {
			t.Fatal(err)
		}
		h.runs = append(h.runs, r)
	}
	rows.Close()
	for _, msg := range readTopicIfAny(t, m.brokers, schema.Topics{Prefix: schema.DefaultTopicPrefix}.DLQ()) {
		var l struct {
			Reason   string `json:"reason"`
			Step     string `json:"step"`
			JobID    string `json:"job_id"`
			Attempts int    `json:"attempts"`
		}
		if err := json.Unmarshal(msg.Value, &l); err != nil {
			h.letters = append(h.letters, mletter{job: schema.JobIDFromKey(msg.Key), reason: "unreadable: " + err.Error()})
			continue
		}
		h.letters = append(h.letters, mletter{job: cmpOr(l.JobID, schema.JobIDFromKey(msg.Key)), step: l.Step, reason: l.Reason, attempts: l.Attempts})
	}
	h.execs = readStepLog(t, stepLog)
	return h
}

// readStepLog pairs modelstep's start and end lines into executions.
func readStepLog(t *testing.T, path string) []mexec {
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []mexec
	open := map[string]int{} // pid/job/step/attempt → index in out
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 8 {
			continue
		}
		ns, _ := strconv.ParseInt(f[1], 10, 64)
		attempt, _ := strconv.Atoi(f[4])
		chain, _ := strconv.Atoi(f[5])
		k := f[6] + "/" + f[2] + "/" + f[3] + "/" + f[4]
		switch f[0] {
		case "start":
			open[k] = len(out)
			out = append(out, mexec{job: f[2], step: f[3], attempt: attempt, chain: chain, start: time.Unix(0, ns)})
		case "end":
			if i, ok := open[k]; ok {
				out[i].end, out[i].how = time.Unix(0, ns), f[7]
				delete(open, k)
			}
		}
	}
	return out
}

// readTopicIfAny returns every message in topic, none if it does not exist.
func readTopicIfAny(t *testing.T, addr, topic string) []kafka.Message {
	t.Helper()
	out, err := harness.ReadTopicAt(addr, topic)
	if errors.Is(err, kafka.UnknownTopicOrPartition) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestModelJudge shows that each check of judge fails on the bug it is
// there for, on hand-made histories (no processes): a clean history passes,
// and each mutation, a bug of issue 11 or of the step protocol, is named.
func TestModelJudge(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	ptr := func(s float64) *time.Time { x := at(s); return &x }
	fail1 := mpayload{Fail: map[string]int{"yolo_detect": 1}}
	// base: job a inserted at 0s; yolo_detect fails its first attempt as
	// the payload says, then everything completes.
	base := func() *history {
		h := &history{steps: schema.DefaultSteps, maxAttempts: 3, hasChain: true, rows: map[string]mrow{},
			jobs: map[string]*mjob{"a": {id: "a", epochs: []*epoch{{kind: "insert", from: "img_gen", pay: fail1, seq: 0, before: at(0), after: at(0), what: "insert"}}}}}
		add := func(step string, chain, attempt int, from, to float64, outcome string) {
			id := int64(len(h.runs) + 1)
			h.runs = append(h.runs, mrun{id: id, job: "a", step: step, chain: chain, attempt: attempt, worker: "host:100/0", started: at(from), finished: ptr(to), outcome: outcome})
			how := map[string]string{"done": "done", "failed": "fail"}[outcome]
			h.execs = append(h.execs, mexec{job: "a", step: step, attempt: attempt, start: at(from), end: at(to), how: how})
		}
		add("vlm_analyze", 1, 1, 1, 2, "done")
		add("yolo_detect", 1, 1, 2, 3, "failed")
		add("yolo_detect", 1, 2, 3, 4, "done")
		add("planner", 1, 1, 4, 5, "done")
		add("overlay", 1, 1, 5, 6, "done")
		h.rows["a"] = mrow{step: "overlay", status: "done", payload: fail1.json()}
		return h
	}
	if probs := base().judge(); len(probs) != 0 {
		t.Fatalf("a clean history has problems: %q", probs)
	}
	run := func(h *history, step string, attempt int) *mrun {
		for i := range h.runs {
			if h.runs[i].step == step && h.runs[i].attempt == attempt {
				return &h.runs[i]
			}
		}
		t.Fatalf("no run %s/%d", step, attempt)
		return nil
	}
	// cancelledByCLI: `jobstream cancel` of step ran from 1.5s to 3.5s and
	// stopped yolo_detect's attempt 1 at 3.2s; nothing ran after it, and the
	// job is left cancelled at step.
	cancelledByCLI := func(h *history, step string) {
		h.jobs["a"].epochs = append(h.jobs["a"].epochs, &epoch{kind: "cancel", cancelStep: step, pay: fail1, seq: 2, before: at(1.5), after: at(3.5), what: "jobstream cancel"})
		r := run(h, "yolo_detect", 1)
		r.outcome, r.finished = "cancelled", ptr(3.2)
		h.execs[1].end, h.execs[1].how = time.Time{}, ""
		h.runs, h.execs = h.runs[:2], h.execs[:2]
		h.rows["a"] = mrow{step: step, status: "cancelled", payload: fail1.json()}
	}
	cases := []struct {
		name string
		bug  func(h *history)
		want string
	}{
		{"a fault explains an expired run (no problem)", func(h *history) {
			r := run(h, "yolo_detect", 1)
			r.outcome = "expired"
			h.execs[1].end, h.execs[1].how = time.Time{}, ""
			h.faults = append(h.faults, mfault{kind: "kill", pid: 100, from: at(2.5), to: at(2.5)})
		}, ""},
		{"issue 11 #2: a Postgres outage expires a live worker's run", func(h *history) {
			run(h, "yolo_detect", 1).outcome = "expired"
			h.execs[1].end, h.execs[1].how = time.Time{}, ""
			h.faults = append(h.faults, mfault{kind: "pgdown", from: at(2.2), to: at(2.8)})
		}, "worker was alive and never stopped"},
		{"a step completes twice in one chain", func(h *history) {
			h.runs = append(h.runs, mrun{id: 9, job: "a", step: "planner", chain: 1, attempt: 2, worker: "host:100/0", started: at(5), finished: ptr(5.5), outcome: "done"})
			h.execs = append(h.execs, mexec{job: "a", step: "planner", attempt: 2, start: at(5), end: at(5.5), how: "done"})
		}, "completed 2 times"},
		{"a step runs twice for one run (an event acted on twice)", func(h *history) {
			h.execs = append(h.execs, mexec{job: "a", step: "planner", attempt: 1, start: at(4), end: at(5), how: "done"})
		}, "executed 2 times"},
		{"a retry lost: the chain stops after a failure", func(h *history) {
			h.runs = slices.Delete(h.runs, 2, 5)
			h.execs = slices.Delete(h.execs, 2, 5)
			h.rows["a"] = mrow{step: "yolo_detect", status: "running", payload: fail1.json()}
		}, "a lost retry"},
		{"a lost transition: no claim after (yolo_detect, done)", func(h *history) {
			h.runs, h.execs = h.runs[:3], h.execs[:3]
			h.rows["a"] = mrow{step: "yolo_detect", status: "done", payload: fail1.json()}
		}, "never claimed by planner"},
		{"the final row differs from the model", func(h *history) {
			h.rows["a"] = mrow{step: "overlay", status: "failed", payload: fail1.json()}
		}, "the model expects (overlay, done)"},
		{"a failed job without its dead letter", func(h *history) {
			h.jobs["a"].epochs[0].pay = mpayload{Fail: map[string]int{"yolo_detect": 1}, Perm: map[string]bool{"overlay": true}}
			run(h, "overlay", 1).outcome = "failed"
			h.execs[4].how = "perm"
			h.rows["a"] = mrow{step: "overlay", status: "failed", payload: h.jobs["a"].epochs[0].pay.json()}
		}, "0 dead letter(s) for overlay, the model expects 1"},
		{"issue 11 #1: a rerun continues the old chain's attempt count", func(h *history) {
			// Requeued to (planner, done) at 10s; the rerun of overlay is numbered attempt 2 of chain 1.
			h.jobs["a"].epochs = append(h.jobs["a"].epochs, &epoch{kind: "requeue", from: "planner", pay: fail1, seq: 5, before: at(10), after: at(10), what: "requeue", openKnown: true})
			h.runs = append(h.runs, mrun{id: 6, job: "a", step: "overlay", chain: 1, attempt: 2, worker: "host:100/0", started: at(11), finished: ptr(12), outcome: "done"})
			h.execs = append(h.execs, mexec{job: "a", step: "overlay", attempt: 2, start: at(11), end: at(12), how: "done"})
		}, "never claimed by overlay after requeue"},
		{"issue 11 #1: a rerun's chain starts at attempt 3 and fails the job", func(h *history) {
			h.jobs["a"].epochs = append(h.jobs["a"].epochs, &epoch{kind: "replay", from: "vlm_analyze", pay: fail1, seq: 5, before: at(10), after: at(10), what: "replay", openKnown: true})
			h.runs = append(h.runs, mrun{id: 6, job: "a", step: "yolo_detect", chain: 2, attempt: 3, worker: "host:100/0", started: at(11), finished: ptr(12), outcome: "failed"})
			h.execs = append(h.execs, mexec{job: "a", step: "yolo_detect", attempt: 3, start: at(11), end: at(12), how: "fail"})
			h.rows["a"] = mrow{step: "yolo_detect", status: "failed", payload: fail1.json()}
		}, "numbers its attempts 1, 2"},
		{"issue 11 #4: a cancelled job's step fails, is retried and dead-lettered", func(h *history) {
			// Cancelled at 2.5s while yolo_detect attempt 1 ran.
			h.jobs["a"].epochs = append(h.jobs["a"].epochs, &epoch{kind: "cancel", cancelStep: "yolo_detect", pay: fail1, seq: 2, before: at(2.5), after: at(2.5), what: "cancel",
				openKnown: true, open: map[int64]bool{2: true}})
			h.runs, h.execs = h.runs[:3], h.execs[:3]
			h.rows["a"] = mrow{step: "yolo_detect", status: "cancelled", payload: fail1.json()}
			h.letters = append(h.letters, mletter{job: "a", step: "yolo_detect", reason: "step failed", attempts: 3})
		}, "must end \"cancelled\""},
		{"issue 11 #4: a retry after the cancel", func(h *history) {
			h.jobs["a"].epochs = append(h.jobs["a"].epochs, &epoch{kind: "cancel", cancelStep: "yolo_detect", pay: fail1, seq: 2, before: at(2.5), after: at(2.5), what: "cancel",
				openKnown: true, open: map[int64]bool{2: true}})
			run(h, "yolo_detect", 1).outcome = "cancelled"
			h.execs[1].how = ""
			h.runs, h.execs = h.runs[:3], h.execs[:3]
			h.rows["a"] = mrow{step: "yolo_detect", status: "cancelled", payload: fail1.json()}
		}, "gets no further attempt"},
		{"a dead letter for a cancelled job", func(h *history) {
			h.jobs["a"].epochs = append(h.jobs["a"].epochs, &epoch{kind: "cancel", cancelStep: "overlay", pay: fail1, seq: 5, before: at(7), after: at(7), what: "cancel", openKnown: true})
			h.rows["a"] = mrow{step: "overlay", status: "cancelled", payload: fail1.json()}
			h.letters = append(h.letters, mletter{job: "a", step: "overlay", reason: "step failed", attempts: 1})
		}, "1 dead letter(s) for overlay, the model expects 0"},
		{"a cancelled step goes on running past 2 s", func(h *history) {
			h.jobs["a"].epochs = append(h.jobs["a"].epochs, &epoch{kind: "cancel", cancelStep: "planner", pay: fail1, seq: 4, before: at(4.2), after: at(4.2), what: "cancel",
				openKnown: true, open: map[int64]bool{4: true}})
			r := run(h, "planner", 1)
			r.outcome, r.finished = "cancelled", ptr(8)
			h.execs[3].end = at(8)
			h.runs, h.execs = h.runs[:4], h.execs[:4]
			h.rows["a"] = mrow{step: "planner", status: "cancelled", payload: fail1.json()}
		}, "a running step stops within 2 s"},
		{"a requeued job's old attempt completes (no fencing)", func(h *history) {
			h.jobs["a"].epochs = append(h.jobs["a"].epochs, &epoch{kind: "requeue", from: "yolo_detect", pay: fail1, seq: 4, before: at(4.5), after: at(4.5), what: "requeue",
				openKnown: true, open: map[int64]bool{4: true}})
			h.runs = append(h.runs, mrun{id: 6, job: "a", step: "planner", chain: 2, attempt: 1, worker: "host:100/0", started: at(5.5), finished: ptr(6.5), outcome: "done"},
				mrun{id: 7, job: "a", step: "overlay", chain: 2, attempt: 1, worker: "host:100/0", started: at(6.5), finished: ptr(7), outcome: "done"})
			h.execs = append(h.execs, mexec{job: "a", step: "planner", attempt: 1, start: at(5.5), end: at(6.5), how: "done"},
				mexec{job: "a", step: "overlay", attempt: 1, start: at(6.5), end: at(7), how: "done"})
		}, "must end \"cancelled\" or \"discarded\", not \"done\""},
		{"a step runs again after a delete", func(h *history) {
			h.jobs["a"].epochs = append(h.jobs["a"].epochs, &epoch{kind: "delete", seq: 5, before: at(7), after: at(7), what: "DELETE", openKnown: true})
			h.runs = append(h.runs, mrun{id: 6, job: "a", step: "overlay", chain: 2, attempt: 1, worker: "host:100/0", started: at(8), finished: ptr(9), outcome: "done"})
			h.execs = append(h.execs, mexec{job: "a", step: "overlay", attempt: 1, start: at(8), end: at(9), how: "done"})
			delete(h.rows, "a")
		}, "ran a new attempt chain"},
		{"a step completes while `jobstream cancel` runs, and the next step claims the job before it commits (no problem)", func(h *history) {
			// The CLI's cancel ran from 1.5s to 3.5s: vlm_analyze completed at
			// 2s, before its commit (else it would have ended cancelled), and
			// yolo_detect's attempt 1, claimed at 2s, was stopped by it.
			cancelledByCLI(h, "yolo_detect")
		}, ""},
		{"a step runs though the step before it was stopped by `jobstream cancel`", func(h *history) {
			cancelledByCLI(h, "vlm_analyze")
			run(h, "vlm_analyze", 1).outcome = "cancelled"
			h.execs[0].end, h.execs[0].how = time.Time{}, ""
		}, "though the job never reached it"},
		{"an unexpected dead letter", func(h *history) {
			h.letters = append(h.letters, mletter{job: "a", step: "planner", reason: "claim refused by Postgres"})
		}, "only a failed job owes a letter"},
		{"a run left open", func(h *history) { run(h, "overlay", 1).finished = nil }, "still open"},
		{"the payload the user wrote is lost", func(h *history) { h.rows["a"] = mrow{step: "overlay", status: "done", payload: `{}`} }, "the user last wrote"},
	}
	for _, c := range cases {
		h := base()
		c.bug(h)
		probs := h.judge()
		all := strings.Join(probs, "\n")
		switch {
		case c.want == "" && len(probs) > 0:
			t.Errorf("%s: want no problem, got:\n%s", c.name, all)
		case c.want != "" && !strings.Contains(all, c.want):
			t.Errorf("%s: want a problem containing %q, got:\n%s", c.name, c.want, all)
		}
	}
}

// checks names each check of judge by a phrase of its messages, and the
// bug of issue 11 it is there to catch.
var checks = []struct{ phrase, check string }{
	{"feature missing", "a contract feature is missing"},
	{"jobstream replay", "replay rewinds exactly the jobs that passed the step's trigger (issue 11 #3)"},
	{"exited by itself", "no process exits by itself"},
	{"did not come to rest", "the system comes to rest (no endless retry, no stuck job)"},
	{"worker was alive and never stopped", "no attempt spent by a live worker, e.g. across a Postgres outage (#2)"},
	{"numbers its attempts", "attempts count per chain: a rerun gets its full --max-attempts (#1)"},
	{"over --max-attempts", "attempts count per chain: a rerun gets its full --max-attempts (#1)"},
	{"gets no further attempt", "a job the user changed or removed gets no further attempt (#4)"},
	{"keeps no result, gets no retry", "a job the user changed or removed gets no further attempt (#4)"},
	{"stops within 2 s", "a cancelled or deleted job's step stops within 2 s"},
	{"dead letter", "dead letters: one per failed chain, none for a changed job (#4)"},
	{"completed, then the chain went on", "a step completes at most once per chain"},
	{"completed 2 times", "a step completes at most once per chain"},
	{"failed the job, then", "nothing runs after a job failed"},
	{"attempt chains after", "no event acted on twice (one chain per step and epoch)"},
	{"executed", "no event acted on twice (one execution per run)"},
	{"with no run recorded", "no event acted on twice (one execution per run)"},
	{"ended by the step's exit", "every run's outcome comes from its execution"},
	{"the payload says", "each attempt ends as the payload says"},
	{"lost transition", "no transition lost"},
	{"a lost retry", "no retry lost"},
	{"ran a new attempt chain", "nothing runs after a cancel or delete"},
	{"though the job never reached it", "no step runs out of order"},
	{"still open", "no run left open"},
	{"row is", "final row as the model predicts"},
	{"user last wrote", "the user's payload is kept"},
	{"never inserted", "no row or run the test did not make"},
	{"before the job was inserted", "no row or run the test did not make"},
}

func checkOf(problem string) string {
	for _, c := range checks {
		if strings.Contains(problem, c.phrase) {
			return c.check
		}
	}
	return "other"
}

func summarize(probs []string) map[string]int {
	out := map[string]int{}
	for _, p := range probs {
		out[checkOf(p)]++
	}
	return out
}
