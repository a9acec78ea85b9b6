package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/schema"
)

// ErrNoJobID is returned by Audit when AuditOptions.JobID is empty.
var ErrNoJobID = errors.New("AuditOptions.JobID is empty: name the job whose history to read")

// AuditOptions says whose history Audit reads, and where.
type AuditOptions struct {
	// JobID is the job (required).
	JobID string
	Deployment
}

// AuditEntry is one line of a job's history.
type AuditEntry struct {
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
	// its rewind, "dead-letter" for a dead letter, "unreadable" for a value
	// that is not an envelope (Detail holds why).
	Kind   string          `json:"kind"`
	Detail json.RawMessage `json:"detail,omitempty"`
}

// Audit returns a job's whole history: its key in every step topic (only
// the partition it hashes to), the dead-letter topic and the replay topic,
// in LSN order (marks by time among them), deliveries made twice shown
// once, each replay shown as the rewind it made. With a pool (nil: none),
// each run's chain, attempt, worker, duration and outcome are added from
// jobstream_runs. It only reads.
func Audit(ctx context.Context, k *Kafka, pool *pgxpool.Pool, o AuditOptions) ([]AuditEntry, error) {
	if o.JobID == "" {
		return nil, invalid{ErrNoJobID, ErrNoJobID.Error()}
	}
	p, topics := o.resolve()
	nsp := jobsSchema(ctx, pool)
	var entries []AuditEntry
	for _, s := range p.Steps {
		e, err := readHistory(ctx, k, topics.Step(s), nsp, o.JobID, changeEntry)
		if err != nil {
			return nil, err
		}
		entries = append(entries, e...)
	}
	for _, t := range []struct {
		topic string
		kind  func(*AuditEntry, kafka.Message)
	}{{topics.DLQ(), letterEntry}, {topics.Replays(), markEntry}} {
		e, err := readHistory(ctx, k, t.topic, nsp, o.JobID, t.kind)
		if err != nil {
			return nil, err
		}
		entries = append(entries, e...)
	}
	// Change events in commit (LSN) order; marks by time among them.
	sort.SliceStable(entries, func(i, j int) bool {
		a, b := entries[i], entries[j]
		if a.LSN != 0 && b.LSN != 0 {
			return a.LSN < b.LSN
		}
		return a.Time.Before(b.Time)
	})
	entries = markRewinds(dedupe(entries))
	if pool != nil {
		if err := addRuns(ctx, pool, o.JobID, entries); err != nil {
			return nil, err
		}
	}
	return entries, nil
}

// readHistory reads the messages of jobID in topic (in the partition its
// key hashes to, the jobs table in schema nsp), each made an entry by fill. A tombstone takes the LSN and
// time of the change event before it, so that it sorts right after it.
func readHistory(ctx context.Context, k *Kafka, topic, nsp, jobID string, fill func(*AuditEntry, kafka.Message)) ([]AuditEntry, error) {
	offs, err := k.Offsets(ctx, topic)
	if err != nil || len(offs) == 0 {
		return nil, err
	}
	var entries []AuditEntry
	for _, part := range JobPartitions(jobID, len(offs), connectKey(topic, nsp)) {
		var last AuditEntry // the last change event read here
		err = k.Read(ctx, topic, part, offs[part].First, offs[part].End, func(m kafka.Message) error {
			if schema.JobIDFromKey(m.Key) != jobID {
				return nil
			}
			e := AuditEntry{Time: m.Time, Topic: topic, Partition: m.Partition, Offset: m.Offset}
			fill(&e, m)
			switch e.Kind {
			case "tombstone":
				// After a delete, the job is gone: ordered with it.
				e.LSN, e.Time = last.LSN, last.Time
			case "change":
				last = e
			}
			entries = append(entries, e)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return entries, nil
}

// changeEntry fills e from a step topic's message: a change event, or the
// tombstone after a delete.
func changeEntry(e *AuditEntry, m kafka.Message) {
	if len(m.Value) == 0 {
		e.Kind = "tombstone"
		return
	}
	env, err := schema.DecodeEnvelope(m.Value)
	if err != nil {
		e.Kind, e.Detail = "unreadable", json.RawMessage(fmt.Sprintf("%q", err.Error()))
		return
	}
	e.Kind, e.Op, e.LSN = "change", env.Op, env.Source.LSN
	e.Time = time.UnixMilli(env.Source.TsMs)
	row, ok := schema.Row(env.After)
	if !ok {
		row, _ = schema.Row(env.Before)
		if env.Op == schema.OpDelete && row.CurrentStep == "" {
			// Without REPLICA IDENTITY FULL a delete's before is the key
			// alone: its NOT NULL columns hold what Debezium writes for a
			// missing value (status its DEFAULT, 'pending'), not the row's.
			row.Status = ""
		}
	}
	e.Step, e.Status = row.CurrentStep, row.Status
}

// letterEntry fills e from a dead letter, without the event it carries.
func letterEntry(e *AuditEntry, m kafka.Message) {
	e.Kind, e.Detail = "dead-letter", compactReason(m.Value)
}

// markEntry fills e from a replay mark.
func markEntry(e *AuditEntry, m kafka.Message) {
	e.Kind, e.Detail = "replay", m.Value
}

// markRewinds shows each replay as the rewind it made: the change event that
// moved the job from the mark's from_state to its rewound_to becomes a
// "rewind" entry carrying the mark, in LSN order, instead of looking like a
// run of the trigger step followed (later, by broker time) by the mark. A
// mark whose rewind is not in the topics stays a "replay" entry.
func markRewinds(entries []AuditEntry) []AuditEntry {
	var marks []int
	for i, e := range entries {
		if e.Kind == "replay" {
			marks = append(marks, i)
		}
	}
	sort.SliceStable(marks, func(a, b int) bool { return markTime(entries[marks[a]]).Before(markTime(entries[marks[b]])) })
	drop := map[int]bool{}
	for _, mi := range marks {
		var m ReplayMark
		if json.Unmarshal(entries[mi].Detail, &m) != nil || len(m.RewoundTo) != 2 || len(m.FromState) != 2 {
			continue
		}
		if best := rewindOf(entries, m, markTime(entries[mi])); best >= 0 {
			entries[best].Kind, entries[best].Detail = "rewind", entries[mi].Detail
			drop[mi] = true
		}
	}
	out := entries[:0]
	for i, e := range entries {
		if !drop[i] {
			out = append(out, e)
		}
	}
	return out
}

// rewindOf returns the index of the change event that made m's rewind: the
// latest change from m's from_state to its rewound_to committed before the
// mark was made at; failing that (clocks apart), the first one after; -1
// when there is none.
func rewindOf(entries []AuditEntry, m ReplayMark, at time.Time) int {
	best, after := -1, -1
	prev := -1 // the change before entries[i], in LSN order
	for i, e := range entries {
		if e.Kind != "change" && e.Kind != "rewind" {
			continue
		}
		if e.Kind == "change" && prev >= 0 && e.Step == m.RewoundTo[0] && e.Status == m.RewoundTo[1] &&
			entries[prev].Step == m.FromState[0] && entries[prev].Status == m.FromState[1] {
			if !e.Time.After(at) {
				best = i
			} else if after < 0 {
				after = i
			}
		}
		prev = i
	}
	if best < 0 {
		return after
	}
	return best
}

// markTime is when a replay mark was made: its "at", else its broker time.
func markTime(e AuditEntry) time.Time {
	var m ReplayMark
	if json.Unmarshal(e.Detail, &m) == nil && !m.At.IsZero() {
		return m.At
	}
	return e.Time
}

// dedupe drops events delivered twice (same LSN and op), keeping the first.
func dedupe(entries []AuditEntry) []AuditEntry {
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

// compactReason is a dead letter without the event it carries, or the
// value quoted when it is no dead letter.
func compactReason(v []byte) json.RawMessage {
	l, err := schema.DecodeDeadLetter(v)
	if err != nil {
		return json.RawMessage(fmt.Sprintf("%q", string(v)))
	}
	b, _ := json.Marshal(struct {
		*schema.DeadLetter
		Event json.RawMessage `json:"event,omitempty"`
	}{DeadLetter: l})
	return b
}

// auditRun is one row of jobstream_runs.
type auditRun struct {
	step, worker, outcome, err string
	chain, attempt             int
	started                    time.Time
	finished                   *time.Time
}

// addRuns fills attempt, worker, duration and outcome of each change event
// from jobstream_runs: the run of the event's step that started last before it.
func addRuns(ctx context.Context, pool *pgxpool.Pool, jobID string, entries []AuditEntry) error {
	rows, err := pool.Query(ctx, `SELECT step, chain, attempt, worker, coalesce(outcome, ''), coalesce(error, ''), started_at, finished_at
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
