package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/jobstream/jobstream/schema"
)

// riverResult is one run of River through the pipeline of scenario 4.
type riverResult struct {
	jobs, done int
	secs       float64
	cpu        float64 // CPU seconds of this process (River runs in it) over the batch
}

func (r riverResult) rate() float64 { return float64(r.done) / r.secs }

// stepArgs is a River job: run step Step of job JobID.
type stepArgs struct {
	JobID string `json:"job_id"`
	Step  string `json:"step"`
}

func (stepArgs) Kind() string { return "jobstream_step" }

// riverStep is the River worker of every step: in one transaction it moves
// the job (trigger, done) → (step, done) with the step's result merged, as
// jobstream's claim and complete do together, inserts the next step's River
// job and completes its own.
type riverStep struct {
	river.WorkerDefaults[stepArgs]
	pool *pgxpool.Pool
	p    schema.Pipeline
}

func (w *riverStep) Work(ctx context.Context, job *river.Job[stepArgs]) error {
	trigger, err := w.p.Trigger(job.Args.Step)
	if err != nil {
		return river.JobCancel(err)
	}
	tx, err := w.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	tag, err := tx.Exec(ctx, `UPDATE jobs SET current_step = $2, status = 'done', updated_at = now(),
		results = coalesce(results, '{}'::jsonb) || jsonb_build_object($2::text, jsonb_build_object('ok', true))
		WHERE job_id = $1 AND current_step = $3 AND status = 'done'`, job.Args.JobID, job.Args.Step, trigger)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 1 && job.Args.Step != w.p.Last() {
		i := 0
		for i < len(w.p.Steps) && w.p.Steps[i] != job.Args.Step {
			i++
		}
		client := river.ClientFromContext[pgx.Tx](ctx)
		if _, err := client.InsertTx(ctx, tx, stepArgs{JobID: job.Args.JobID, Step: w.p.Steps[i+1]}, nil); err != nil {
			return err
		}
	}
	if _, err := river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, job); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// benchRiver runs River (github.com/riverqueue/river, the Go Postgres job
// queue) through the same four steps on a fresh database of the same
// Postgres: one River client with as many workers as jobstream's members
// of all steps together, fetching at most every 5ms (its default is 100ms); the batch's jobs are
// inserted at (img_gen, done) with their first River job, in one
// transaction, and timed until all are at (overlay, done).
func benchRiver(ctx context.Context, e *env, run, jobs, workers int) (res riverResult, err error) {
	res.jobs = jobs
	db, err := e.newDB(ctx, fmt.Sprintf("bench_river_%d", run))
	if err != nil {
		return res, err
	}
	defer db.drop()
	pool, err := pgxpool.New(ctx, db.url)
	if err != nil {
		return res, err
	}
	defer pool.Close()
	driver := riverpgxv5.New(pool)
	migrator, err := rivermigrate.New(driver, nil)
	if err != nil {
		return res, err
	}
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return res, fmt.Errorf("river migrations: %w", err)
	}
	p := schema.DefaultPipeline()
	ws := river.NewWorkers()
	river.AddWorker(ws, &riverStep{pool: pool, p: p})
	client, err := river.NewClient(driver, &river.Config{
		Queues:  map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: workers}},
		Workers: ws,
		Logger:  slog.New(slog.DiscardHandler),
		// Tuned for throughput, not River's defaults (100ms, 1s): a fetch
		// as soon as a job is inserted, at most every 5ms.
		FetchCooldown:     5 * time.Millisecond,
		FetchPollInterval: 50 * time.Millisecond,
	})
	if err != nil {
		return res, err
	}
	if err := client.Start(ctx); err != nil {
		return res, err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		client.Stop(sctx)
	}()
	ids := jobIDs("job", jobs)
	params := make([]river.InsertManyParams, len(ids))
	for i, id := range ids {
		params[i] = river.InsertManyParams{Args: stepArgs{JobID: id, Step: p.Steps[1]}}
	}
	cpu0 := procCPU(os.Getpid())
	t0 := time.Now()
	tx, err := pool.Begin(ctx)
	if err != nil {
		return res, err
	}
	if err := copyJobs(ctx, tx, ids, p.Steps[0], "done"); err != nil {
		tx.Rollback(ctx)
		return res, err
	}
	if _, err := client.InsertManyFastTx(ctx, tx, params); err != nil {
		tx.Rollback(ctx)
		return res, err
	}
	if err := tx.Commit(ctx); err != nil {
		return res, err
	}
	deadline := time.Now().Add(10 * time.Minute)
	for {
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM jobs WHERE current_step = $1 AND status = 'done'`, p.Last()).Scan(&res.done); err != nil {
			return res, err
		}
		if res.done >= jobs {
			break
		}
		if time.Now().After(deadline) {
			return res, fmt.Errorf("river: %d of %d jobs through within 10 minutes", res.done, jobs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	res.secs = time.Since(t0).Seconds()
	res.cpu = procCPU(os.Getpid()) - cpu0
	return res, nil
}

// peersResult is one run of scenario 9: jobstream and River through the
// same pipeline with the same jobs, on the same Postgres.
type peersResult struct {
	jobstream pipelineResult
	river     riverResult
}

// benchPeers runs jobstream (as in scenario 4) and River, in alternating order.
func benchPeers(ctx context.Context, e *env, run int) (res peersResult, err error) {
	res.jobstream.jobs, res.jobstream.members = e.cfg.PipelineJobs, e.cfg.PipelineMembers
	steps := len(schema.DefaultSteps) - 1
	for i := range 2 {
		if (i+run)%2 == 0 {
			if err := pipelineJobstream(ctx, e, 200+run, &res.jobstream, nil); err != nil {
				return res, err
			}
			continue
		}
		if res.river, err = benchRiver(ctx, e, run, e.cfg.PipelineJobs, steps*e.cfg.PipelineMembers); err != nil {
			return res, err
		}
	}
	return res, nil
}

// peersRows renders scenario 9.
func (r *results) peersRows() []row {
	if len(r.peers) == 0 {
		return nil
	}
	c := r.cfg
	js := each(r.peers, func(x peersResult) float64 { return x.jobstream.pipeRate() })
	rv := each(r.peers, func(x peersResult) float64 { return x.river.rate() })
	ratios := each(r.peers, func(x peersResult) float64 { return x.jobstream.pipeRate() / x.river.rate() })
	cpu := each(r.peers, func(x peersResult) float64 { return 1000 * x.river.cpu / float64(x.river.done) })
	members := r.peers[0].jobstream.members
	return []row{
		{fmt.Sprintf("9. Pipeline peers, %s jobs through 4 steps", thousands(float64(r.peers[0].river.jobs))),
			fmt.Sprintf("jobstream (as in 4, %d members/step)", members), thousands(median(js)) + " jobs/s",
			"jobstream/River " + f2(median(ratios)), "≥ River", passMiss(median(ratios) >= 1), joinRuns(ratios, f2), c.command("peers")},
		{"", fmt.Sprintf("River %s (one client, %d workers, fetch cooldown 5ms, poll 50ms; CPU %s ms/job in its process)", riverVersion,
			(len(schema.DefaultSteps)-1)*members, f2(median(cpu))), thousands(median(rv)) + " jobs/s", "", "", "", joinRuns(rv, thousands), c.command("peers")},
	}
}

// riverVersion is the River release measured (go.mod).
const riverVersion = "v0.51.2"
