package admin

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jobstream/jobstream/consumers"
)

// CancelResult is what Cancel did to one job.
type CancelResult struct {
	// JobID is the job.
	JobID string `json:"job_id"`
	consumers.CancelResult
}

// Cancel sets each job's status to cancelled, one by one, as
// consumers.Cancel does: a step running on it is stopped within about a
// second, it is not retried, owes no dead letter, and no later step takes
// it; Replay brings it back. A job that does not exist is reported (Found
// false), not an error. On an error it returns the results so far.
func Cancel(ctx context.Context, pool *pgxpool.Pool, jobIDs []string) ([]CancelResult, error) {
	var out []CancelResult
	for _, id := range jobIDs {
		res, err := consumers.Cancel(ctx, pool, id)
		if err != nil {
			return out, err
		}
		out = append(out, CancelResult{JobID: id, CancelResult: res})
	}
	return out, nil
}

// ErrBadAge is returned by Prune when PruneOptions.OlderThan is not positive.
var ErrBadAge = errors.New("OlderThan must be a positive age, such as 168h")

// PruneOptions says which finished runs Prune deletes.
type PruneOptions struct {
	// OlderThan is how long ago a run must have finished (required,
	// positive; workers use consumers.RunsRetentionDefault).
	OlderThan time.Duration
	// DryRun counts what would be deleted and deletes nothing.
	DryRun bool
	// Progress, if not nil, is called after each batch of
	// consumers.PruneBatch runs with the total deleted so far.
	Progress func(deleted int64)
}

// PruneResult is how many runs were (or, DryRun, would be) deleted.
type PruneResult struct {
	Runs   int64 `json:"runs"`
	DryRun bool  `json:"dry_run"`
}

// Prune deletes the runs in jobstream_runs that finished more than
// o.OlderThan ago, in batches of consumers.PruneBatch, keeping the runs
// that still owe a dead letter: what workers do every minute with their
// RunsRetention. On an error, Runs counts what was deleted before it.
func Prune(ctx context.Context, pool *pgxpool.Pool, o PruneOptions) (PruneResult, error) {
	res := PruneResult{DryRun: o.DryRun}
	if o.OlderThan <= 0 {
		return res, invalid{ErrBadAge, ErrBadAge.Error()}
	}
	var err error
	if o.DryRun {
		res.Runs, err = consumers.CountPrunable(ctx, pool, o.OlderThan)
	} else {
		res.Runs, err = consumers.PruneRuns(ctx, pool, o.OlderThan, o.Progress)
	}
	return res, err
}
