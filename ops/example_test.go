package ops_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
)

// Embedding: a program of your own runs the reader and one worker serving
// two steps with Go handlers, all on your pool, which neither closes.
func Example_embed() {
	env, end := harness.ForExample("Example_embed") // a fresh, migrated database and a broker
	defer end()
	ctx, stop := context.WithCancel(context.Background())
	pool, _ := pgxpool.New(ctx, env.DatabaseURL)
	defer pool.Close()
	quiet, p := slog.New(slog.DiscardHandler), schema.Pipeline{Steps: []string{"upload", "resize", "publish"}}
	reader, _ := cdc.New(cdc.Config{Pool: pool, Brokers: env.Brokers, Slot: env.Slot, TopicPrefix: env.Prefix, Pipeline: p, Logger: quiet})
	worker, _ := consumers.New(consumers.Config{Pool: pool, Brokers: env.Brokers, TopicPrefix: env.Prefix, Pipeline: p, Logger: quiet,
		Steps: map[string]consumers.Handler{
			"resize": func(_ context.Context, job consumers.Job) (json.RawMessage, error) {
				return json.RawMessage(`{"width": 64}`), nil
			},
			"publish": func(_ context.Context, job consumers.Job) (json.RawMessage, error) {
				return json.Marshal("published " + job.JobID)
			},
		}})
	var g errgroup.Group
	g.Go(func() error { return reader.Run(ctx) })
	g.Go(func() error { return worker.Run(ctx) })
	<-reader.Ready()
	<-worker.Ready()
	pool.Exec(ctx, `INSERT INTO jobs (job_id, current_step, status) VALUES ('cat-1', 'upload', 'done')`)
	var step, status, results string
	for deadline := time.Now().Add(time.Minute); step != "publish" && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		pool.QueryRow(ctx, `SELECT current_step, status, results::text FROM jobs WHERE status = 'done'`).Scan(&step, &status, &results)
	}
	fmt.Println(step, status, results)
	stop()
	fmt.Println("stopped:", g.Wait(), pool.Ping(context.Background()))
	// Output:
	// publish done {"resize": {"width": 64}, "publish": "published cat-1"}
	// stopped: <nil> <nil>
}
