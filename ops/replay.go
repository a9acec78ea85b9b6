package ops

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/user"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/schema"
)

// ReplayTopic returns the topic where replays are recorded, keyed by job_id.
func ReplayTopic(prefix string) string { return prefix + ".replays" }

type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, ",") }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

// bound is one end of a replay range: a time, or a partition and offset.
type bound struct {
	at        time.Time
	partition int
	offset    int64
	set       bool
}

func parseBound(s, flagName string) (bound, error) {
	if s == "" {
		return bound{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return bound{at: t, partition: -1, set: true}, nil
	}
	p, o, ok := strings.Cut(s, ":")
	pi, err1 := strconv.Atoi(p)
	oi, err2 := strconv.ParseInt(o, 10, 64)
	if !ok || err1 != nil || err2 != nil || pi < 0 || oi < 0 {
		return bound{}, usagef("--%s %q is neither an RFC 3339 time (2026-11-26T10:00:00Z) nor PARTITION:OFFSET (3:1200)", flagName, s)
	}
	return bound{partition: pi, offset: oi, set: true}, nil
}

type replayConfig struct {
	common
	step     string
	from, to string
	jobs     repeated
	all      bool
	dryRun   bool
	force    bool
	reset    bool
	resetTo  string
}

func runReplay(ctx context.Context, args []string, out io.Writer) error {
	var c replayConfig
	f := newFlags("replay", "replay --step S {--from X [--to Y] | --to Y | --job ID... | --all} [--dry-run] [--force]\n"+
		"       replay --step S --reset-offsets --to TIME|earliest|latest\n\n"+
		"Reads the trigger topic of step S over a range and rewinds each job found to (T, done) through Postgres,\n"+
		"so S and every later step run again through the normal path. The scope is always on the command line:\n"+
		"a range, one or more jobs, or --all for every job in the topic (no environment variable sets it).\n"+
		"The replay is recorded in <prefix>.replays, where 'jobstream audit' shows it.\n"+
		"--from/--to take RFC 3339 times or PARTITION:OFFSET (inclusive, exclusive).\n"+
		"--reset-offsets instead moves the group of S to a time, earliest or latest (only while the group has no members).")
	c.register(f, true, true)
	// No environment twin: a JOBSTREAM_STEP left set for a worker must not
	// choose what a bulk rewind touches.
	f.StringVar(&c.step, "step", "", "the step to run again (required)")
	f.StringVar(&c.from, "from", "", "start of the range: RFC 3339 time or PARTITION:OFFSET (default: the beginning)")
	f.StringVar(&c.to, "to", "", "end of the range: RFC 3339 time or PARTITION:OFFSET; with --reset-offsets: TIME, earliest or latest")
	f.Var(&c.jobs, "job", "replay only this job (repeatable)")
	f.BoolVar(&c.all, "all", false, "replay every job found in the whole topic (instead of --from/--to or --job)")
	f.BoolVar(&c.dryRun, "dry-run", false, "list what would be replayed, change nothing")
	f.BoolVar(&c.force, "force", false, "replay jobs that are running too (their attempt is fenced)")
	f.BoolVar(&c.reset, "reset-offsets", false, "reset the consumer group of --step instead of replaying jobs")
	if err := f.parse(args); err != nil {
		return err
	}
	if c.step == "" {
		return usagef("no step given: pass --step S on the command line")
	}
	ranged := c.from != "" || c.to != "" || len(c.jobs) > 0
	switch {
	case c.reset && c.all:
		return usagef("--reset-offsets takes only --to TIME|earliest|latest, not --all")
	case c.reset:
	case c.all && ranged:
		return usagef("--all replays the whole topic; drop it, or drop --from, --to and --job")
	case !c.all && !ranged:
		return usagef("no range given: pass --from/--to (times or PARTITION:OFFSET), --job ID, or --all to replay every job in the topic of the step before %s", c.step)
	}
	if err := c.needBrokers(); err != nil {
		return err
	}
	p, err := c.loadPipeline()
	if err != nil {
		return err
	}
	trigger, err := p.Trigger(c.step)
	if err != nil {
		return usageError{err.Error()}
	}
	broker, err := c.reachBroker(ctx)
	if err != nil {
		return err
	}
	a := newAdmin(broker)
	topic := schema.Topic(c.prefix, trigger)
	if c.reset {
		if c.from != "" || len(c.jobs) > 0 {
			return usagef("--reset-offsets takes only --to TIME|earliest|latest")
		}
		return resetOffsets(ctx, a, schema.GroupID(c.prefix, c.step), topic, c.to, c.dryRun, out)
	}
	if err := c.needDB(); err != nil {
		return err
	}
	from, err := parseBound(c.from, "from")
	if err != nil {
		return err
	}
	to, err := parseBound(c.to, "to")
	if err != nil {
		return err
	}
	if from.set && to.set && (from.partition >= 0) != (to.partition >= 0) {
		return usagef("--from and --to must both be times or both be PARTITION:OFFSET")
	}
	if from.set && to.set && from.partition >= 0 && from.partition != to.partition {
		return usagef("--from and --to name partitions %d and %d; a PARTITION:OFFSET range stays in one partition", from.partition, to.partition)
	}

	// The range, per partition.
	offs, err := a.offsets(ctx, topic)
	if err != nil {
		return err
	}
	if len(offs) == 0 {
		return fmt.Errorf("topic %s does not exist; nothing to replay", topic)
	}
	starts, ends := map[int]int64{}, map[int]int64{}
	for _, o := range offs {
		starts[o.Partition], ends[o.Partition] = o.First, o.End
	}
	for _, b := range []struct {
		b     bound
		into  map[int]int64
		isEnd bool
	}{{from, starts, false}, {to, ends, true}} {
		switch {
		case !b.b.set:
		case b.b.partition >= 0:
			if _, ok := starts[b.b.partition]; !ok {
				return usagef("topic %s has no partition %d", topic, b.b.partition)
			}
			for p := range b.into {
				if p != b.b.partition {
					delete(starts, p)
				}
			}
			b.into[b.b.partition] = b.b.offset
		default:
			at, err := a.offsetsAt(ctx, topic, b.b.at)
			if err != nil {
				return err
			}
			for p, o := range at {
				b.into[p] = o
			}
		}
	}
	only := map[string]bool{}
	for _, j := range c.jobs {
		only[j] = true
	}
	found := map[string]bool{}
	var order []string
	var parts []int
	for p := range starts {
		parts = append(parts, p)
	}
	sort.Ints(parts)
	rng := rangeString(c.from, c.to)
	for _, p := range parts {
		from, to := starts[p], ends[p]
		if len(only) > 0 {
			// A job's events live in the partition its key hashes to.
			keep := false
			for j := range only {
				keep = keep || partitionOf([]byte(j), len(offs)) == p
			}
			if !keep {
				continue
			}
		}
		err := a.read(ctx, topic, p, from, to, func(m kafka.Message) error {
			id := string(m.Key)
			if found[id] || (len(only) > 0 && !only[id]) {
				return nil
			}
			env, err := schema.DecodeEnvelope(m.Value)
			if err != nil {
				return nil
			}
			if row, ok := schema.Row(env.After); ok && row.CurrentStep == trigger && row.Status == "done" {
				found[id] = true
				order = append(order, id)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if len(order) == 0 {
		fmt.Fprintf(out, "no job finished %s in %s over %s; nothing to replay\n", trigger, topic, rng)
		return nil
	}

	pool, err := pgxpool.New(ctx, c.databaseURL)
	if err != nil {
		return redactErr(schema.PostgresUnreachable(err))
	}
	defer pool.Close()
	idx := map[string]int{}
	for i, s := range p.Steps {
		idx[s] = i
	}
	who := replayer()
	var replayed, skipped []string
	var marks []kafka.Message
	for _, id := range order {
		step, status, found, err := consumers.JobState(ctx, pool, id)
		if err != nil {
			return err
		}
		if !found {
			skipped = append(skipped, fmt.Sprintf("%s: not in jobs any more", id))
			continue
		}
		// The event shows the job finished the trigger step once; it is
		// replayable while it is at the trigger step done or past it.
		// (A job back at the trigger step and not done is in that step's
		// own run: replay that step instead.)
		if i, ok := idx[step]; !ok || i < idx[trigger] || (i == idx[trigger] && status != "done") {
			skipped = append(skipped, fmt.Sprintf("%s: at (%s, %s), which has not reached %s", id, step, status, c.step))
			continue
		}
		if status == "running" && !c.force {
			skipped = append(skipped, fmt.Sprintf("%s: running %s (pass --force to fence that attempt and replay)", id, step))
			continue
		}
		if c.dryRun {
			replayed = append(replayed, fmt.Sprintf("%s: (%s, %s) → (%s, done)", id, step, status, trigger))
			continue
		}
		// Fences any attempt still open on the job and rewinds it, in one
		// statement; the job starts a new attempt chain of the step.
		ok, err := consumers.Rewind(ctx, pool, id, trigger, step, status)
		if err != nil {
			return err
		}
		if !ok {
			skipped = append(skipped, fmt.Sprintf("%s: moved while we looked; run the replay again", id))
			continue
		}
		mark, _ := json.Marshal(map[string]any{"job_id": id, "step": c.step, "rewound_to": []string{trigger, "done"},
			"from_state": []string{step, status}, "by": who, "at": time.Now().UTC().Format(time.RFC3339Nano),
			"topic": topic, "range": rng, "forced": status == "running"})
		marks = append(marks, kafka.Message{Key: []byte(id), Value: mark})
		replayed = append(replayed, fmt.Sprintf("%s: (%s, %s) → (%s, done)", id, step, status, trigger))
	}
	if len(marks) > 0 {
		if err := broker.EnsureTopics(ctx, schema.DefaultPartitions, ReplayTopic(c.prefix)); err != nil {
			return err
		}
		w := &kafka.Writer{Addr: kafka.TCP(broker.Addrs...), Topic: ReplayTopic(c.prefix), Balancer: &kafka.Murmur2Balancer{},
			RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond, Transport: broker.Transport()}
		err := w.WriteMessages(ctx, marks...)
		w.Close()
		if err != nil {
			return fmt.Errorf("jobs were rewound, but recording the replay in %s failed: %w", ReplayTopic(c.prefix), err)
		}
	}
	verb := "replayed"
	if c.dryRun {
		verb = "would replay"
	}
	fmt.Fprintf(out, "%s %d job(s) from %s over %s: %s runs again\n", verb, len(replayed), topic, rng, c.step)
	for _, r := range replayed {
		fmt.Fprintln(out, "  "+r)
	}
	if len(skipped) > 0 {
		fmt.Fprintf(out, "skipped %d job(s):\n", len(skipped))
		for _, s := range skipped {
			fmt.Fprintln(out, "  "+s)
		}
	}
	return nil
}

func rangeString(from, to string) string {
	return "[" + cmpOr(from, "beginning") + ", " + cmpOr(to, "end") + ")"
}

func replayer() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

// resetOffsets moves the group to a time, earliest or latest: the classic
// consumer-group reset, refused while the group has live members.
func resetOffsets(ctx context.Context, a *admin, group, topic, to string, dryRun bool, out io.Writer) error {
	if to == "" {
		return usagef("--reset-offsets needs --to TIME|earliest|latest")
	}
	_, members, err := a.members(ctx, group)
	if err != nil {
		return err
	}
	if len(members) > 0 {
		return fmt.Errorf("group %s has %d live member(s); stop its workers first: offsets can only be reset while the group is empty", group, len(members))
	}
	offs, err := a.offsets(ctx, topic)
	if err != nil {
		return err
	}
	if len(offs) == 0 {
		return fmt.Errorf("topic %s does not exist", topic)
	}
	target := map[int]int64{}
	switch to {
	case "earliest":
		for _, o := range offs {
			target[o.Partition] = o.First
		}
	case "latest":
		for _, o := range offs {
			target[o.Partition] = o.End
		}
	default:
		t, err := time.Parse(time.RFC3339, to)
		if err != nil {
			return usagef("--to %q is not earliest, latest or an RFC 3339 time", to)
		}
		if target, err = a.offsetsAt(ctx, topic, t); err != nil {
			return err
		}
	}
	var commits []kafka.OffsetCommit
	for p, o := range target {
		commits = append(commits, kafka.OffsetCommit{Partition: p, Offset: o})
	}
	sort.Slice(commits, func(i, j int) bool { return commits[i].Partition < commits[j].Partition })
	if !dryRun {
		resp, err := a.c.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: group, GenerationID: -1, Topics: map[string][]kafka.OffsetCommit{topic: commits}})
		if err != nil {
			return fmt.Errorf("commit offsets of %s: %w", group, err)
		}
		for _, pr := range resp.Topics[topic] {
			if pr.Error != nil {
				return fmt.Errorf("commit offset of %s/%d: %w", topic, pr.Partition, pr.Error)
			}
		}
	}
	verb := "reset"
	if dryRun {
		verb = "would reset"
	}
	fmt.Fprintf(out, "%s group %s on %s to %s:\n", verb, group, topic, to)
	for _, c := range commits {
		fmt.Fprintf(out, "  partition %d → offset %d\n", c.Partition, c.Offset)
	}
	return nil
}
