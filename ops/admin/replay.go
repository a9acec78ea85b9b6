package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"slices"
	"sort"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/schema"
)

// The errors of ReplayOptions that a caller may want to say in its own
// terms (errors.Is matches them); each message names the options' fields.
var (
	ErrNoStep       = errors.New("Step is empty: name the step to run again")
	ErrUnknownStep  = errors.New("Step is not a step with a trigger in Pipeline")
	ErrNoScope      = errors.New("no scope given: set From and/or To, Jobs, or All to replay every job in the trigger topic")
	ErrAllWithRange = errors.New("All replays the whole topic: set it without From, To and Jobs")
	ErrMixedBounds  = errors.New("From and To must both be times or both be partition offsets")
	ErrSplitRange   = errors.New("a partition-offset range stays in one partition")
	ErrNoPartition  = errors.New("the trigger topic has no such partition")
)

// ReplayOptions says which jobs Replay rewinds. The scope is never implied:
// one of From/To, Jobs or All must be set.
type ReplayOptions struct {
	// Step is the step to run again (required). Jobs are found in the topic
	// of its trigger, the step before it.
	Step string
	Deployment
	// From and To bound the range [From, To) read in the trigger topic
	// (zero: its beginning, its end). Both are times or both are offsets of
	// one partition.
	From, To Bound
	// Jobs limits the replay to these jobs (none: every job in the range).
	Jobs []string
	// All replays every job in the whole topic; it excludes From, To and Jobs.
	All bool
	// DryRun returns the plan and changes nothing.
	DryRun bool
	// Force replays jobs that are running too: their attempt is fenced.
	Force bool
	// By is who replays, recorded in the replay marks (default user@host).
	By string
}

// Validate reports the first thing wrong with o that no lookup is needed
// to see, or nil.
func (o ReplayOptions) Validate() error {
	ranged := !o.From.IsZero() || !o.To.IsZero() || len(o.Jobs) > 0
	switch {
	case o.Step == "":
		return invalid{ErrNoStep, ErrNoStep.Error()}
	case o.All && ranged:
		return invalid{ErrAllWithRange, ErrAllWithRange.Error()}
	case !o.All && !ranged:
		return invalid{ErrNoScope, ErrNoScope.Error()}
	}
	for _, b := range []Bound{o.From, o.To} {
		if !b.IsZero() && b.partition >= 0 && b.offset < 0 {
			return invalid{ErrBadBound, fmt.Sprintf("bound %s has a negative offset", b)}
		}
	}
	from, to := o.From.Partition(), o.To.Partition()
	switch {
	case o.From.IsZero() || o.To.IsZero():
	case (from >= 0) != (to >= 0):
		return invalid{ErrMixedBounds, ErrMixedBounds.Error()}
	case from != to:
		return invalid{ErrSplitRange, fmt.Sprintf("From and To name partitions %d and %d; %v", from, to, ErrSplitRange)}
	}
	return nil
}

// SkipReason says why Replay left a job found in the range as it was.
type SkipReason string

// The reasons a job is skipped.
const (
	// SkipGone: the job is not in the jobs table any more.
	SkipGone SkipReason = "gone"
	// SkipNotReached: the job is back before the trigger step, or at it
	// and not done (in that step's own run: replay that step instead).
	SkipNotReached SkipReason = "not-reached"
	// SkipRunning: a step is running on the job and Force is not set.
	SkipRunning SkipReason = "running"
	// SkipMoved: the job changed state while Replay looked; replay again.
	SkipMoved SkipReason = "moved"
)

// ReplayJob is one job found in the range, at (Step, Status) when looked at.
type ReplayJob struct {
	JobID  string     `json:"job_id"`
	Step   string     `json:"step"`
	Status string     `json:"status"`
	Reason SkipReason `json:"reason,omitempty"`
}

// ReplayResult is what a replay did, or (DryRun) would do.
type ReplayResult struct {
	// Step is the step that runs again.
	Step string `json:"step"`
	// Trigger is the step before it, where the jobs are rewound to (done).
	Trigger string `json:"trigger"`
	// Topic is the trigger's topic, where the jobs were found.
	Topic string `json:"topic"`
	// Range is the range read, "[from, to)" as recorded in the marks.
	Range string `json:"range"`
	// DryRun is true when nothing was changed: Replayed is the plan.
	DryRun bool `json:"dry_run"`
	// Replayed are the jobs rewound to (Trigger, done), from their state.
	Replayed []ReplayJob `json:"replayed"`
	// Skipped are the jobs found but left as they were, with the reason.
	Skipped []ReplayJob `json:"skipped"`
}

// ReplayMark is the record of one job's replay in the replay topic
// (schema.Topics.Replays), keyed by job_id; Audit shows it as the rewind it
// made. Its fields are in the order of their JSON names.
type ReplayMark struct {
	At        time.Time `json:"at"`
	By        string    `json:"by"`
	Forced    bool      `json:"forced"`
	FromState []string  `json:"from_state"`
	JobID     string    `json:"job_id"`
	Range     string    `json:"range"`
	RewoundTo []string  `json:"rewound_to"`
	Step      string    `json:"step"`
	Topic     string    `json:"topic"`
}

// Replay finds the jobs that finished the trigger step of o.Step in its
// topic over the range, and rewinds each to (trigger, done) through
// consumers.Rewind, so o.Step and every later step run again through the
// normal path; each rewind is recorded in the replay topic. A job is
// rewound only if it has reached the trigger step done or passed it, and
// not while running unless o.Force; the rewind fences any open attempt and
// starts a new attempt chain. The jobs are rewound one by one: an error
// stops the replay with those before it rewound (and their marks not
// written). pool is used only when jobs are found.
func Replay(ctx context.Context, pool *pgxpool.Pool, k *Kafka, o ReplayOptions) (*ReplayResult, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	p, topics := o.resolve()
	trigger, err := p.Trigger(o.Step)
	if err != nil {
		return nil, invalid{ErrUnknownStep, err.Error()}
	}
	res := &ReplayResult{Step: o.Step, Trigger: trigger, Topic: topics.Step(trigger), Range: rangeString(o.From, o.To), DryRun: o.DryRun}
	found, err := findJobs(ctx, k, res.Topic, jobsSchema(ctx, pool), trigger, o)
	if err != nil || len(found) == 0 {
		return res, err
	}
	marks, err := rewind(ctx, pool, p, res, found, o)
	if err != nil || len(marks) == 0 {
		return res, err
	}
	replays := topics.Replays()
	b := k.Broker()
	if err := b.EnsureTopics(ctx, schema.DefaultPartitions, replays); err != nil {
		return res, err
	}
	w := &kafka.Writer{Addr: kafka.TCP(b.Addrs...), Topic: replays, Balancer: &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond, Transport: b.Transport()}
	err = w.WriteMessages(ctx, marks...)
	w.Close()
	if err != nil {
		return res, fmt.Errorf("jobs were rewound, but recording the replay in %s failed: %w", replays, err)
	}
	return res, nil
}

// rewind rewinds (or, dry, plans) each found job, filling res, and returns
// the marks to record.
func rewind(ctx context.Context, pool *pgxpool.Pool, p schema.Pipeline, res *ReplayResult, found []string, o ReplayOptions) ([]kafka.Message, error) {
	idx := map[string]int{}
	for i, s := range p.Steps {
		idx[s] = i
	}
	by := o.By
	if by == "" {
		by = replayer()
	}
	idType, err := consumers.JobIDType(ctx, pool)
	if err != nil {
		return nil, err
	}
	numericID := schema.IntegerType(idType)
	var marks []kafka.Message
	for _, id := range found {
		j := ReplayJob{JobID: id}
		step, status, ok, err := consumers.JobState(ctx, pool, id)
		if err != nil {
			return nil, err
		}
		j.Step, j.Status = step, status
		// The event shows the job finished the trigger step once; it is
		// replayable while it is at the trigger step done or past it.
		i, known := idx[step]
		switch {
		case !ok:
			j.Reason = SkipGone
		case !known || i < idx[res.Trigger] || (i == idx[res.Trigger] && status != "done"):
			j.Reason = SkipNotReached
		case status == "running" && !o.Force:
			j.Reason = SkipRunning
		case !o.DryRun:
			// Fences any attempt still open on the job and rewinds it, in
			// one statement; the job starts a new attempt chain of the step.
			if ok, err = consumers.Rewind(ctx, pool, id, res.Trigger, step, status); err != nil {
				return nil, err
			}
			if !ok {
				j.Reason = SkipMoved
				break
			}
			mark, _ := json.Marshal(ReplayMark{JobID: id, Step: o.Step, RewoundTo: []string{res.Trigger, "done"},
				FromState: []string{step, status}, By: by, At: time.Now().UTC(), Topic: res.Topic, Range: res.Range, Forced: status == "running"})
			marks = append(marks, kafka.Message{Key: schema.Key(id, numericID), Value: mark})
		}
		if j.Reason != "" {
			res.Skipped = append(res.Skipped, j)
		} else {
			res.Replayed = append(res.Replayed, j)
		}
	}
	return marks, nil
}

// findJobs returns, in the order first met, the jobs of o's scope whose
// change event in topic shows them done at trigger (nsp: the jobs table's
// schema).
func findJobs(ctx context.Context, k *Kafka, topic, nsp, trigger string, o ReplayOptions) ([]string, error) {
	starts, ends, n, err := offsetRange(ctx, k, topic, o.From, o.To)
	if err != nil {
		return nil, err
	}
	only := map[string]bool{}
	for _, j := range o.Jobs {
		only[j] = true
	}
	found := map[string]bool{}
	var parts []int
	for p := range starts {
		parts = append(parts, p)
	}
	sort.Ints(parts)
	var ids []string
	for _, p := range parts {
		if len(only) > 0 && !anyIn(only, p, n, connectKey(topic, nsp)) {
			continue
		}
		err := k.Read(ctx, topic, p, starts[p], ends[p], func(m kafka.Message) error {
			id := schema.JobIDFromKey(m.Key)
			if found[id] || (len(only) > 0 && !only[id]) {
				return nil
			}
			env, err := schema.DecodeEnvelope(m.Value)
			if err != nil {
				return nil
			}
			if row, ok := schema.Row(env.After); ok && row.CurrentStep == trigger && row.Status == "done" {
				found[id] = true
				ids = append(ids, id)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return ids, nil
}

// anyIn reports whether a job of only lives in partition p of n: a job's
// events live in the partition its key hashes to (with connectKey, the
// name of the topic's Connect key struct).
func anyIn(only map[string]bool, p, n int, connectKey string) bool {
	for j := range only {
		if slices.Contains(JobPartitions(j, n, connectKey), p) {
			return true
		}
	}
	return false
}

// offsetRange returns the range [from, to) of topic per partition to read,
// and the topic's partition count.
func offsetRange(ctx context.Context, k *Kafka, topic string, from, to Bound) (starts, ends map[int]int64, n int, err error) {
	offs, err := k.Offsets(ctx, topic)
	if err != nil {
		return nil, nil, 0, err
	}
	if len(offs) == 0 {
		return nil, nil, 0, fmt.Errorf("topic %s does not exist; nothing to replay", topic)
	}
	starts, ends = map[int]int64{}, map[int]int64{}
	for _, o := range offs {
		starts[o.Partition], ends[o.Partition] = o.First, o.End
	}
	for _, b := range []struct {
		b    Bound
		into map[int]int64
	}{{from, starts}, {to, ends}} {
		switch p := b.b.Partition(); {
		case b.b.IsZero():
		case p >= 0:
			if _, ok := starts[p]; !ok {
				return nil, nil, 0, invalid{ErrNoPartition, fmt.Sprintf("topic %s has no partition %d", topic, p)}
			}
			for q := range starts {
				if q != p {
					delete(starts, q)
				}
			}
			b.into[p] = b.b.offset
		default:
			at, err := k.OffsetsAt(ctx, topic, b.b.at)
			if err != nil {
				return nil, nil, 0, err
			}
			for p, o := range at {
				b.into[p] = o
			}
		}
	}
	return starts, ends, len(offs), nil
}

// replayer is who replays by default: user@host.
func replayer() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

// The errors of ResetOptions.To (errors.Is matches them).
var (
	ErrNoResetTarget  = errors.New("To is empty: give earliest, latest or an RFC 3339 time")
	ErrBadResetTarget = errors.New("To is not earliest, latest or an RFC 3339 time")
)

// ResetOptions says which group ResetOffsets moves, and where to.
type ResetOptions struct {
	// Step is the step whose consumer group moves (required).
	Step string
	Deployment
	// To is "earliest", "latest" or an RFC 3339 time (required).
	To string
	// DryRun returns the offsets and commits nothing.
	DryRun bool
}

// PartitionOffset is an offset of one partition.
type PartitionOffset struct {
	Partition int   `json:"partition"`
	Offset    int64 `json:"offset"`
}

// ResetResult is the offsets a group was (or, DryRun, would be) moved to.
type ResetResult struct {
	Group   string            `json:"group"`
	Topic   string            `json:"topic"`
	To      string            `json:"to"`
	DryRun  bool              `json:"dry_run"`
	Offsets []PartitionOffset `json:"offsets"`
}

// ResetOffsets moves the consumer group of o.Step on its trigger topic to
// o.To: the classic consumer-group reset, refused while the group has live
// members (its workers must be stopped first). The group then reads again
// from there; claims in Postgres keep finished jobs from running twice.
func ResetOffsets(ctx context.Context, k *Kafka, o ResetOptions) (*ResetResult, error) {
	var at time.Time
	switch {
	case o.Step == "":
		return nil, invalid{ErrNoStep, ErrNoStep.Error()}
	case o.To == "":
		return nil, invalid{ErrNoResetTarget, ErrNoResetTarget.Error()}
	case o.To != "earliest" && o.To != "latest":
		t, err := time.Parse(time.RFC3339, o.To)
		if err != nil {
			return nil, invalid{ErrBadResetTarget, fmt.Sprintf("To %q is not earliest, latest or an RFC 3339 time", o.To)}
		}
		at = t
	}
	p, topics := o.resolve()
	trigger, err := p.Trigger(o.Step)
	if err != nil {
		return nil, invalid{ErrUnknownStep, err.Error()}
	}
	res := &ResetResult{Group: topics.Group(o.Step), Topic: topics.Step(trigger), To: o.To, DryRun: o.DryRun}
	_, members, err := k.Members(ctx, res.Group)
	if err != nil {
		return nil, err
	}
	if len(members) > 0 {
		return nil, fmt.Errorf("group %s has %d live member(s); stop its workers first: offsets can only be reset while the group is empty", res.Group, len(members))
	}
	target, err := resetTarget(ctx, k, res.Topic, o.To, at)
	if err != nil {
		return nil, err
	}
	var commits []kafka.OffsetCommit
	for p, o := range target {
		commits = append(commits, kafka.OffsetCommit{Partition: p, Offset: o})
		res.Offsets = append(res.Offsets, PartitionOffset{Partition: p, Offset: o})
	}
	sort.Slice(res.Offsets, func(i, j int) bool { return res.Offsets[i].Partition < res.Offsets[j].Partition })
	if o.DryRun {
		return res, nil
	}
	resp, err := k.c.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: res.Group, GenerationID: -1, Topics: map[string][]kafka.OffsetCommit{res.Topic: commits}})
	if err != nil {
		return nil, fmt.Errorf("commit offsets of %s: %w", res.Group, err)
	}
	for _, pr := range resp.Topics[res.Topic] {
		if pr.Error != nil {
			return nil, fmt.Errorf("commit offset of %s/%d: %w", res.Topic, pr.Partition, pr.Error)
		}
	}
	return res, nil
}

// resetTarget returns the offset per partition of topic that to (earliest,
// latest, or the time at) names.
func resetTarget(ctx context.Context, k *Kafka, topic, to string, at time.Time) (map[int]int64, error) {
	offs, err := k.Offsets(ctx, topic)
	if err != nil {
		return nil, err
	}
	if len(offs) == 0 {
		return nil, fmt.Errorf("topic %s does not exist", topic)
	}
	if to != "earliest" && to != "latest" {
		return k.OffsetsAt(ctx, topic, at)
	}
	target := map[int]int64{}
	for _, o := range offs {
		target[o.Partition] = o.First
		if to == "latest" {
			target[o.Partition] = o.End
		}
	}
	return target, nil
}
