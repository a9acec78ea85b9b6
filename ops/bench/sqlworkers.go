package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/schema"
)

// sqlSys is the workers a team writes on the database alone, in this
// process: per step a LISTEN/NOTIFY listener (the seed design: the trigger
// of scenario 2, the listener of scenario 2) or a polling loop (every
// cfg.PollInterval), handing each job to one of members goroutines that
// claim and complete it with the workers' own statements
// (consumers.ClaimAndComplete). Its outage stops the first step's listener
// (closing its connection) or poller.
type sqlSys struct {
	e       *env
	kind    string // peerListen or peerPoll
	url     string
	pool    *pgxpool.Pool
	drop    func()
	members int
	stops   []func() error // per step, nil when it is away
	noJob   int            // claims that found the job gone (another took it)
	mu      sync.Mutex
}

func newSQLSys(ctx context.Context, e *env, kind, tag string, members int) (_ *sqlSys, err error) {
	steps := len(schema.DefaultSteps) - 1
	s := &sqlSys{e: e, kind: kind, members: members, stops: make([]func() error, steps)}
	var db *database
	if db, s.pool, s.drop, err = e.openDB(ctx, "bench_"+tag, steps*(members+1)); err != nil {
		return nil, err
	}
	s.url = db.url
	if kind == peerListen {
		if _, err := s.pool.Exec(ctx, notifyTriggerSQL); err != nil {
			s.close()
			return nil, err
		}
	}
	for i := range steps {
		if err := s.startStep(ctx, i); err != nil {
			s.close()
			return nil, err
		}
	}
	return s, nil
}

// startStep starts the listener or poller of step i (0 is vlm_analyze).
func (s *sqlSys) startStep(ctx context.Context, i int) (err error) {
	step, trigger := schema.DefaultSteps[i+1], schema.DefaultSteps[i]
	worker := fmt.Sprintf("bench-%s-%s", s.kind, step)
	// run claims and completes one job. A stop lets the job it holds
	// finish (as a worker's graceful stop does): these workers have no
	// lease sweeper to take back a job left claimed.
	run := func(ctx context.Context, id string) error {
		err := consumers.ClaimAndComplete(context.WithoutCancel(ctx), s.pool, id, step, trigger, worker, json.RawMessage(`{"ok":true}`))
		if err != nil && strings.Contains(err.Error(), "is not at (") {
			s.mu.Lock()
			s.noJob++
			s.mu.Unlock()
			return nil
		}
		return err
	}
	if s.kind == peerPoll {
		l := poll(ctx, s.e.cfg.PollInterval, func(ctx context.Context) (int, error) {
			rows, _ := s.pool.Query(ctx, `SELECT job_id FROM jobs WHERE current_step = $1 AND status = 'done' ORDER BY updated_at LIMIT $2`, trigger, pollBatch)
			ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return 0, err
			}
			g, gctx := errgroup.WithContext(ctx)
			g.SetLimit(s.members)
			for _, id := range ids {
				if gctx.Err() != nil {
					break
				}
				g.Go(func() error { return run(gctx, id) })
			}
			return len(ids), g.Wait()
		})
		s.stops[i] = l.stop
		return nil
	}
	// The listener hands each job to the members; a stop loses the ids
	// queued (not the jobs in hand), as a listener process that stops does.
	jobs := make(chan string, 1<<16)
	mctx, cancel := context.WithCancel(ctx)
	g, gctx := errgroup.WithContext(mctx)
	for range s.members {
		g.Go(func() error {
			for {
				select {
				case <-gctx.Done():
					return nil
				case id := <-jobs:
					if err := run(gctx, id); err != nil && gctx.Err() == nil {
						return err
					}
				}
			}
		})
	}
	l, err := listen(ctx, s.url, trigger, func(_ context.Context, id string) error {
		select {
		case jobs <- id:
			return nil
		case <-gctx.Done():
			return errors.New("the members stopped")
		}
	})
	if err != nil {
		cancel()
		return err
	}
	s.stops[i] = func() error {
		err := l.stop()
		cancel()
		return errors.Join(err, g.Wait())
	}
	return nil
}

func (s *sqlSys) stopStep(i int) {
	if s.stops[i] == nil {
		return
	}
	if err := s.stops[i](); err != nil {
		s.e.log.Warn(s.kind+" worker", "step", schema.DefaultSteps[i+1], "err", err)
	}
	s.stops[i] = nil
}

func (s *sqlSys) insert(ctx context.Context, ids []string) error {
	return copyJobs(ctx, s.pool, ids, schema.DefaultSteps[0], "done")
}
func (s *sqlSys) stopFirst()                           { s.stopStep(0) }
func (s *sqlSys) startFirst(ctx context.Context) error { return s.startStep(ctx, 0) }
func (s *sqlSys) procs() []*proc                       { return nil }
func (s *sqlSys) groups() map[string][]*proc           { return nil }
func (s *sqlSys) db() *pgxpool.Pool                    { return s.pool }
func (s *sqlSys) marksOf(ctx context.Context, like string) (map[jobStep]mark, error) {
	return runMarks(ctx, s.pool, like)
}

func (s *sqlSys) close() {
	for i := range s.stops {
		s.stopStep(i)
	}
	if s.noJob > 0 {
		s.e.log.Info(s.kind+" workers found jobs already gone", "claims", s.noJob)
	}
	if s.drop != nil {
		s.drop()
	}
}
