package ops

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jobstream/jobstream/consumers"
	adm "github.com/jobstream/jobstream/ops/admin"
	"github.com/jobstream/jobstream/schema"
)

func runCancel(ctx context.Context, args []string, out io.Writer) error {
	var c common
	f := newFlags("cancel", "cancel [flags] JOB_ID...\n\n"+
		"Sets each job's status to cancelled, as UPDATE jobs SET status = 'cancelled' would: a step running on it\n"+
		"is stopped within about a second (its process group killed), its run is closed as cancelled, it is not\n"+
		"retried and gets no dead letter, and no later step takes it. 'jobstream replay' brings it back.")
	c.register(f, true, false)
	if err := f.parse(args); err != nil {
		return err
	}
	ids := f.Args()
	if len(ids) == 0 {
		return usagef("no job given: pass one or more job ids, e.g. jobstream cancel job-42")
	}
	pool, err := c.openPool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	results, err := adm.Cancel(ctx, pool, ids)
	missing := 0
	for _, res := range results {
		switch {
		case !res.Found:
			missing++
			fmt.Fprintf(out, "%s: no such job\n", res.JobID)
		case !res.Cancelled:
			fmt.Fprintf(out, "%s: already cancelled at %s\n", res.JobID, res.Step)
		default:
			fmt.Fprintf(out, "%s: cancelled at (%s, %s)\n", res.JobID, res.Step, res.Status)
		}
	}
	if err != nil {
		return err
	}
	if missing > 0 {
		return fmt.Errorf("%d of %d job(s) not found", missing, len(ids))
	}
	return nil
}

func runPrune(ctx context.Context, args []string, out io.Writer) error {
	var c common
	var o adm.PruneOptions
	f := newFlags("prune", "prune [flags]\n\n"+
		"Deletes the runs in jobstream_runs that finished more than --older-than ago, "+fmt.Sprint(consumers.PruneBatch)+" at a time,\n"+
		"keeping the runs that still owe a dead letter. Workers do the same every minute with --runs-retention.")
	c.register(f, true, false)
	f.dur(&o.OlderThan, "older-than", "JOBSTREAM_RUNS_RETENTION", consumers.RunsRetentionDefault, "prune runs that finished more than this long ago")
	f.BoolVar(&o.DryRun, "dry-run", false, "count what would be pruned, delete nothing")
	if err := f.parse(args); err != nil {
		return err
	}
	if len(f.Args()) > 0 {
		return usagef("prune takes no arguments, got %q; use --older-than AGE", f.Args()[0])
	}
	if o.OlderThan <= 0 {
		return usagef("--older-than %s must be a positive age such as 168h", o.OlderThan)
	}
	pool, err := c.openPool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	last := time.Now()
	o.Progress = func(total int64) {
		if time.Since(last) > time.Second {
			last = time.Now()
			fmt.Fprintf(out, "pruned %d run(s) so far...\n", total)
		}
	}
	res, err := adm.Prune(ctx, pool, o)
	if err != nil {
		return err
	}
	verb := "pruned"
	if res.DryRun {
		verb = "would prune"
	}
	fmt.Fprintf(out, "%s %d run(s) that finished more than %s ago\n", verb, res.Runs, o.OlderThan)
	return nil
}

// connectPool opens a pool on url and checks that Postgres answers.
func connectPool(ctx context.Context, url string) (*pgxpool.Pool, error) {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, redactErr(schema.PostgresUnreachable(err))
	}
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, redactErr(schema.PostgresUnreachable(err))
	}
	return pool, nil
}
