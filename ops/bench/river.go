package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/jobstream/jobstream/schema"
)

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
	pool  *pgxpool.Pool
	p     schema.Pipeline
	marks *markBook // when each step started and committed
}

func (w *riverStep) Work(ctx context.Context, job *river.Job[stepArgs]) error {
	started := time.Now()
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
	w.marks.note(job.Args.JobID, job.Args.Step, started, time.Now())
	return tx.Commit(ctx)
}

// riverSys is River (github.com/riverqueue/river, the Go Postgres job
// queue) on a fresh database with its migrations: one client in this
// process with as many workers as jobstream's members of all steps
// together, fetching at most every 5ms (its default is 100ms). Its outage
// stops the client: River's unit of deployment serves every step.
type riverSys struct {
	e        *env
	pool     *pgxpool.Pool
	drop     func()
	workers  int
	ws       *river.Workers
	marks    *markBook
	client   *river.Client[pgx.Tx]
	inserter *river.Client[pgx.Tx] // inserts only (works while client is stopped)
}

func newRiverSys(ctx context.Context, e *env, tag string, workers int) (_ *riverSys, err error) {
	s := &riverSys{e: e, workers: workers, marks: newMarkBook()}
	if _, s.pool, s.drop, err = e.openDB(ctx, "bench_"+tag, 0); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	migrator, err := rivermigrate.New(riverpgxv5.New(s.pool), nil)
	if err != nil {
		return nil, err
	}
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return nil, fmt.Errorf("river migrations: %w", err)
	}
	s.ws = river.NewWorkers()
	river.AddWorker(s.ws, &riverStep{pool: s.pool, p: schema.DefaultPipeline(), marks: s.marks})
	if s.inserter, err = river.NewClient(riverpgxv5.New(s.pool), &river.Config{Logger: slog.New(slog.DiscardHandler)}); err != nil {
		return nil, err
	}
	return s, s.startFirst(ctx)
}

func (s *riverSys) startFirst(ctx context.Context) error {
	client, err := river.NewClient(riverpgxv5.New(s.pool), &river.Config{
		Queues:  map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: s.workers}},
		Workers: s.ws,
		Logger:  slog.New(slog.DiscardHandler),
		// Tuned for throughput, not River's defaults (100ms, 1s): a fetch
		// as soon as a job is inserted, at most every 5ms.
		FetchCooldown:     5 * time.Millisecond,
		FetchPollInterval: 50 * time.Millisecond,
	})
	if err != nil {
		return err
	}
	if err := client.Start(ctx); err != nil {
		return err
	}
	s.client = client
	return nil
}

func (s *riverSys) stopFirst() {
	if s.client == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.client.Stop(ctx); err != nil {
		s.e.log.Warn("river stop", "err", err)
	}
	s.client = nil
}

// insert adds the jobs and their first River jobs in one transaction.
func (s *riverSys) insert(ctx context.Context, ids []string) error {
	steps := schema.DefaultSteps
	params := make([]river.InsertManyParams, len(ids))
	for i, id := range ids {
		params[i] = river.InsertManyParams{Args: stepArgs{JobID: id, Step: steps[1]}}
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if err := copyJobs(ctx, tx, ids, steps[0], "done"); err != nil {
		return err
	}
	if _, err := s.inserter.InsertManyFastTx(ctx, tx, params); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

func (s *riverSys) procs() []*proc             { return nil }
func (s *riverSys) groups() map[string][]*proc { return nil }
func (s *riverSys) db() *pgxpool.Pool          { return s.pool }
func (s *riverSys) marksOf(context.Context, string) (map[jobStep]mark, error) {
	return s.marks.all(), nil
}

func (s *riverSys) close() {
	s.stopFirst()
	if s.drop != nil {
		s.drop()
	}
}

// riverVersion is the River release measured (go.mod).
const riverVersion = "v0.51.2"
