package ops

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/schema"
)

// auditEntry is one line of a job's history.
type auditEntry struct {
	Time      time.Time `json:"time"`
	Topic     string    `json:"topic"`
	Partition int       `json:"partition"`
	Offset    int64     `json:"offset"`
	LSN       int64     `json:"lsn,omitempty"`
	Op        string    `json:"op,omitempty"`
	Step      string    `json:"step,omitempty"`
	Status    string    `json:"status,omitempty"`
	Chain     int       `json:"chain,omitempty"`
	Attempt   int       `json:"attempt,omitempty"`
	Worker    string    `json:"worker,omitempty"`
	Duration  string    `json:"duration,omitempty"`
	Outcome   string    `json:"outcome,omitempty"`
	Error     string    `json:"error,omitempty"`
	// Kind is "change" for a change event, "rewind" for the change event of
	// a replay's rewind (Detail holds the replay's mark), "tombstone" for the
	// null value after a delete, "replay" for a replay mark not matched to
	// its rewind, "dead-letter" for a dead letter.
	Kind   string          `json:"kind"`
	Detail json.RawMessage `json:"detail,omitempty"`
}

type auditRun struct {
	step, worker, outcome, err string
	chain, attempt             int
	started                    time.Time
	finished                   *time.Time
}

func runAudit(ctx context.Context, args []string, out io.Writer) error {
	var c common
	var asJSON bool
	f := newFlags("audit", "audit JOB_ID [flags]\n\nPrints a job's whole history from the topics (only the partition its key hashes to), in LSN order:\n"+
		"time, step, status, op, attempt, worker, duration, replay marks and dead letters.")
	c.register(f, true, true)
	f.BoolVar(&asJSON, "json", false, "print JSON")
	// Accept the job id before or after the flags.
	var jobID string
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		jobID, args = args[0], args[1:]
	}
	if err := f.parse(args); err != nil {
		return err
	}
	if jobID == "" && f.NArg() == 1 {
		jobID = f.Arg(0)
	}
	if jobID == "" || f.NArg() > 1 {
		return usagef("give exactly one JOB_ID: jobstream audit j42")
	}
	if err := c.needBrokers(); err != nil {
		return err
	}
	p, err := c.loadPipeline()
	if err != nil {
		return err
	}
	broker, err := c.reachBroker(ctx)
	if err != nil {
		return err
	}
	entries, err := auditTopics(ctx, newAdmin(broker), p, c.prefix, jobID)
	if err != nil {
		return err
	}
	if c.databaseURL != "" {
		if err := addRuns(ctx, c.databaseURL, jobID, entries); err != nil {
			return redactErr(err)
		}
	}
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"job_id": jobID, "history": entries})
	}
	if len(entries) == 0 {
		fmt.Fprintf(out, "no events for job %s in the %s.* topics\n", jobID, c.prefix)
		return nil
	}
	fmt.Fprintf(out, "history of job %s (%d entries)\n\n", jobID, len(entries))
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tSTEP\tSTATUS\tOP\tCHAIN.ATTEMPT\tWORKER\tDURATION\tWHERE\tNOTE")
	for _, e := range entries {
		attempt := ""
		if e.Attempt > 0 {
			attempt = fmt.Sprintf("%d.%d", e.Chain, e.Attempt)
		}
		note := e.Error
		switch e.Kind {
		case "rewind":
			note = rewindNote(e.Detail)
		case "replay", "dead-letter":
			note = e.Kind + ": " + string(e.Detail)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s/%d@%d\t%s\n", e.Time.Format("2006-01-02 15:04:05.000"), e.Step, e.Status, e.Op,
			attempt, e.Worker, e.Duration, e.Topic, e.Partition, e.Offset, note)
	}
	return tw.Flush()
}

// auditTopics reads the job's key from every step topic, the dead-letter
// topic and the replay topic, and orders it by LSN (time for marks).
func auditTopics(ctx context.Context, a *admin, p schema.Pipeline, prefix, jobID string) ([]auditEntry, error) {
	var entries []auditEntry
	topics := []string{}
	for _, s := range p.Steps {
		topics = append(topics, schema.Topic(prefix, s))
	}
	topics = append(topics, schema.DLQTopic(prefix), ReplayTopic(prefix))
	key := []byte(jobID)
	for _, topic := range topics {
		offs, err := a.offsets(ctx, topic)
		if err != nil {
			return nil, err
		}
		if len(offs) == 0 {
			continue
		}
		part := partitionOf(key, len(offs))
		o := offs[part]
		var lastLSN int64 // of the last change event read here
		var lastTime time.Time
		err = a.read(ctx, topic, part, o.First, o.End, func(m kafka.Message) error {
			if string(m.Key) != jobID {
				return nil
			}
			e := auditEntry{Time: m.Time, Topic: topic, Partition: m.Partition, Offset: m.Offset}
			switch topic {
			case schema.DLQTopic(prefix):
				e.Kind, e.Detail = "dead-letter", compactReason(m.Value)
			case ReplayTopic(prefix):
				e.Kind, e.Detail = "replay", m.Value
			default:
				if len(m.Value) == 0 {
					// After a delete, the job is gone: ordered with it.
					e.Kind, e.LSN, e.Time = "tombstone", lastLSN, lastTime
					break
				}
				env, err := schema.DecodeEnvelope(m.Value)
				if err != nil {
					e.Kind, e.Detail = "unreadable", json.RawMessage(fmt.Sprintf("%q", err.Error()))
					break
				}
				e.Kind, e.Op, e.LSN = "change", env.Op, env.Source.LSN
				e.Time = time.UnixMilli(env.Source.TsMs)
				lastLSN, lastTime = e.LSN, e.Time
				row, ok := schema.Row(env.After)
				if !ok {
					row, _ = schema.Row(env.Before)
				}
				e.Step, e.Status = row.CurrentStep, row.Status
			}
			entries = append(entries, e)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	// Change events in commit (LSN) order; marks by time among them.
	sort.SliceStable(entries, func(i, j int) bool {
		a, b := entries[i], entries[j]
		if a.LSN != 0 && b.LSN != 0 {
			return a.LSN < b.LSN
		}
		return a.Time.Before(b.Time)
	})
	return markRewinds(dedupe(entries)), nil
}

// replayMark is the part of a replay mark that finds its rewind.
type replayMark struct {
	Step      string    `json:"step"`
	RewoundTo []string  `json:"rewound_to"`
	FromState []string  `json:"from_state"`
	By        string    `json:"by"`
	At        time.Time `json:"at"`
	Forced    bool      `json:"forced"`
}

// markRewinds shows each replay as the rewind it made: the change event that
// moved the job from the mark's from_state to its rewound_to becomes a
// "rewind" entry carrying the mark, in LSN order, instead of looking like a
// run of the trigger step followed (later, by broker time) by the mark. A
// mark whose rewind is not in the topics stays a "replay" entry.
func markRewinds(entries []auditEntry) []auditEntry {
	var marks []int
	for i, e := range entries {
		if e.Kind == "replay" {
			marks = append(marks, i)
		}
	}
	sort.SliceStable(marks, func(a, b int) bool { return markTime(entries[marks[a]]).Before(markTime(entries[marks[b]])) })
	drop := map[int]bool{}
	for _, mi := range marks {
		var m replayMark
		if json.Unmarshal(entries[mi].Detail, &m) != nil || len(m.RewoundTo) != 2 || len(m.FromState) != 2 {
			continue
		}
		at := markTime(entries[mi])
		best, after := -1, -1
		prev := -1 // the change before entries[i], in LSN order
		for i, e := range entries {
			if e.Kind != "change" && e.Kind != "rewind" {
				continue
			}
			if e.Kind == "change" && prev >= 0 && e.Step == m.RewoundTo[0] && e.Status == m.RewoundTo[1] &&
				entries[prev].Step == m.FromState[0] && entries[prev].Status == m.FromState[1] {
				// The latest such change committed before the mark was
				// made; failing that (clocks apart), the first one after.
				if !e.Time.After(at) {
					best = i
				} else if after < 0 {
					after = i
				}
			}
			prev = i
		}
		if best < 0 {
			best = after
		}
		if best < 0 {
			continue
		}
		entries[best].Kind, entries[best].Detail = "rewind", entries[mi].Detail
		drop[mi] = true
	}
	out := entries[:0]
	for i, e := range entries {
		if !drop[i] {
			out = append(out, e)
		}
	}
	return out
}

// markTime is when a replay mark was made: its "at", else its broker time.
func markTime(e auditEntry) time.Time {
	var m replayMark
	if json.Unmarshal(e.Detail, &m) == nil && !m.At.IsZero() {
		return m.At
	}
	return e.Time
}

// rewindNote is the audit table's note for a rewind.
func rewindNote(detail json.RawMessage) string {
	var m replayMark
	if json.Unmarshal(detail, &m) != nil || len(m.FromState) != 2 {
		return "rewound by replay: " + string(detail)
	}
	note := fmt.Sprintf("rewound by replay of %s from (%s, %s)", m.Step, m.FromState[0], m.FromState[1])
	if m.By != "" {
		note += " by " + m.By
	}
	if m.Forced {
		note += ", forced"
	}
	return note
}

// dedupe drops events delivered twice (same LSN and op), keeping the first.
func dedupe(entries []auditEntry) []auditEntry {
	seen := map[[2]any]bool{}
	out := entries[:0]
	for _, e := range entries {
		if e.LSN != 0 {
			k := [2]any{e.LSN, e.Op}
			if seen[k] {
				continue
			}
			seen[k] = true
		}
		out = append(out, e)
	}
	return out
}

func compactReason(v []byte) json.RawMessage {
	var m map[string]any
	if json.Unmarshal(v, &m) != nil {
		return json.RawMessage(fmt.Sprintf("%q", string(v)))
	}
	delete(m, "event")
	b, _ := json.Marshal(m)
	return b
}

// addRuns fills attempt, worker, duration and outcome of each change event
// from jobstream_runs: the run of the event's step that started last before it.
func addRuns(ctx context.Context, url, jobID string, entries []auditEntry) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return schema.PostgresUnreachable(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, `SELECT step, chain, attempt, worker, coalesce(outcome, ''), coalesce(error, ''), started_at, finished_at
		FROM jobstream_runs WHERE job_id = $1 ORDER BY run_id`, jobID)
	if err != nil {
		return fmt.Errorf("read runs: %w", err)
	}
	var runs []auditRun
	var r auditRun
	if _, err := pgx.ForEachRow(rows, []any{&r.step, &r.chain, &r.attempt, &r.worker, &r.outcome, &r.err, &r.started, &r.finished}, func() error {
		runs = append(runs, r)
		return nil
	}); err != nil {
		return fmt.Errorf("read runs: %w", err)
	}
	for i := range entries {
		e := &entries[i]
		if e.Kind != "change" || (e.Status != "running" && e.Status != "done" && e.Status != "failed") {
			continue
		}
		var best *auditRun
		for j := range runs {
			// Commit times are in ms; allow for it.
			if runs[j].step == e.Step && !runs[j].started.After(e.Time.Add(time.Millisecond)) {
				best = &runs[j]
			}
		}
		if best == nil {
			continue
		}
		e.Chain, e.Attempt, e.Worker = best.chain, best.attempt, best.worker
		if e.Status != "running" {
			e.Outcome, e.Error = best.outcome, best.err
			if best.finished != nil {
				e.Duration = best.finished.Sub(best.started).Round(time.Millisecond).String()
			}
		}
	}
	return nil
}
