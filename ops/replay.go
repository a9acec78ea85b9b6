package ops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	adm "github.com/jobstream/jobstream/ops/admin"
	"github.com/jobstream/jobstream/schema"
)

type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, ",") }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

type replayConfig struct {
	common
	step     string
	from, to string
	jobs     repeated
	all      bool
	dryRun   bool
	force    bool
	reset    bool
	opts     adm.ReplayOptions // from the flags above, once checked
}

func runReplay(ctx context.Context, args []string, out io.Writer) error {
	c, err := parseReplay(args)
	if err != nil {
		return err
	}
	p, err := c.needs(false, true)
	if err != nil {
		return err
	}
	if _, err := p.Trigger(c.step); err != nil {
		return usageError{err.Error()}
	}
	broker, err := c.reachBroker(ctx)
	if err != nil {
		return err
	}
	k, d := adm.NewKafka(broker), adm.Deployment{Pipeline: p, TopicPrefix: c.prefix}
	if c.reset {
		res, err := adm.ResetOffsets(ctx, k, adm.ResetOptions{Step: c.step, Deployment: d, To: c.to, DryRun: c.dryRun})
		if err != nil {
			return c.flagError(err)
		}
		printReset(out, res)
		return nil
	}
	if err := c.needDB(); err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, c.databaseURL)
	if err != nil {
		return redactErr(schema.PostgresUnreachable(err))
	}
	defer pool.Close()
	c.opts.Deployment = d
	res, err := adm.Replay(ctx, pool, k, c.opts)
	if err != nil {
		return c.flagError(err)
	}
	printReplay(out, res)
	return nil
}

// parseReplay reads replay's flags and checks them, all before anything is
// reached over the network.
func parseReplay(args []string) (*replayConfig, error) {
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
		return nil, err
	}
	switch {
	case c.step == "":
		return nil, c.flagError(adm.ErrNoStep)
	case c.reset && c.all:
		return nil, usagef("--reset-offsets takes only --to TIME|earliest|latest, not --all")
	case c.reset && (c.from != "" || len(c.jobs) > 0):
		return nil, usagef("--reset-offsets takes only --to TIME|earliest|latest")
	case c.reset && c.to == "":
		return nil, usagef("--reset-offsets needs --to TIME|earliest|latest")
	case c.reset:
		return &c, nil
	}
	c.opts = adm.ReplayOptions{Step: c.step, Jobs: c.jobs, All: c.all, DryRun: c.dryRun, Force: c.force}
	for _, b := range []struct {
		name, text string
		into       *adm.Bound
	}{{"from", c.from, &c.opts.From}, {"to", c.to, &c.opts.To}} {
		var err error
		if *b.into, err = adm.ParseBound(b.text); err != nil {
			return nil, usagef("--%s %v", b.name, err)
		}
	}
	if err := c.opts.Validate(); err != nil {
		return nil, c.flagError(err)
	}
	return &c, nil
}

// flagError says an error in the options given to the admin package in
// terms of replay's flags; other errors pass through.
func (c *replayConfig) flagError(err error) error {
	switch {
	case errors.Is(err, adm.ErrNoStep):
		return usagef("no step given: pass --step S on the command line")
	case errors.Is(err, adm.ErrAllWithRange):
		return usagef("--all replays the whole topic; drop it, or drop --from, --to and --job")
	case errors.Is(err, adm.ErrNoScope):
		return usagef("no range given: pass --from/--to (times or PARTITION:OFFSET), --job ID, or --all to replay every job in the topic of the step before %s", c.step)
	case errors.Is(err, adm.ErrMixedBounds):
		return usagef("--from and --to must both be times or both be PARTITION:OFFSET")
	case errors.Is(err, adm.ErrSplitRange):
		return usagef("--from and --to name partitions %d and %d; a PARTITION:OFFSET range stays in one partition", c.opts.From.Partition(), c.opts.To.Partition())
	case errors.Is(err, adm.ErrNoResetTarget):
		return usagef("--reset-offsets needs --to TIME|earliest|latest")
	case errors.Is(err, adm.ErrBadResetTarget):
		return usagef("--to %q is not earliest, latest or an RFC 3339 time", c.to)
	case adm.IsInvalid(err): // names no option: an unknown step, a missing partition
		return usageError{err.Error()}
	}
	return err
}

// printReplay writes what a replay did (or would do), then what it skipped.
func printReplay(out io.Writer, res *adm.ReplayResult) {
	if len(res.Replayed) == 0 && len(res.Skipped) == 0 {
		fmt.Fprintf(out, "no job finished %s in %s over %s; nothing to replay\n", res.Trigger, res.Topic, res.Range)
		return
	}
	verb := "replayed"
	if res.DryRun {
		verb = "would replay"
	}
	fmt.Fprintf(out, "%s %d job(s) from %s over %s: %s runs again\n", verb, len(res.Replayed), res.Topic, res.Range, res.Step)
	for _, j := range res.Replayed {
		fmt.Fprintf(out, "  %s: (%s, %s) → (%s, done)\n", j.JobID, j.Step, j.Status, res.Trigger)
	}
	if len(res.Skipped) > 0 {
		fmt.Fprintf(out, "skipped %d job(s):\n", len(res.Skipped))
	}
	for _, j := range res.Skipped {
		switch j.Reason {
		case adm.SkipGone:
			fmt.Fprintf(out, "  %s: not in jobs any more\n", j.JobID)
		case adm.SkipNotReached:
			fmt.Fprintf(out, "  %s: at (%s, %s), which has not reached %s\n", j.JobID, j.Step, j.Status, res.Step)
		case adm.SkipRunning:
			fmt.Fprintf(out, "  %s: running %s (pass --force to fence that attempt and replay)\n", j.JobID, j.Step)
		default:
			fmt.Fprintf(out, "  %s: moved while we looked; run the replay again\n", j.JobID)
		}
	}
}

// printReset writes the offsets a group was (or would be) reset to.
func printReset(out io.Writer, res *adm.ResetResult) {
	verb := "reset"
	if res.DryRun {
		verb = "would reset"
	}
	fmt.Fprintf(out, "%s group %s on %s to %s:\n", verb, res.Group, res.Topic, res.To)
	for _, o := range res.Offsets {
		fmt.Fprintf(out, "  partition %d → offset %d\n", o.Partition, o.Offset)
	}
}
