package consumers

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"golang.org/x/sync/errgroup"

	"github.com/jobstream/jobstream/schema"
)

// Config configures a Worker. Zero fields take the defaults documented on them.
type Config struct {
	// DatabaseURL is the Postgres connection URL. Required.
	DatabaseURL string
	// Brokers are the Kafka bootstrap brokers (host:port). Required.
	Brokers []string
	// SASL authenticates to the brokers (default: none).
	SASL sasl.Mechanism
	// TLS encrypts the connections to the brokers (default: plaintext).
	TLS *tls.Config
	// Step is the step this worker runs. Required; not the pipeline's first.
	Step string
	// Pipeline gives the step order (default schema.DefaultPipeline()).
	Pipeline schema.Pipeline
	// TopicPrefix prefixes every topic name (default "jobs").
	TopicPrefix string
	// Partitions is the partition count if the trigger topic must be created (default 12).
	Partitions int
	// Concurrency is how many group members this process runs (default 1).
	// Ignored when GPUs is set.
	Concurrency int
	// GPUs, when set, runs one member per GPU, each handler seeing its GPU.
	GPUs []string
	// Lease is how long a run is held without a heartbeat (default 30s); it
	// is renewed every Lease/3 while the step runs.
	Lease time.Duration
	// MaxAttempts is how many attempts a job gets before it fails (default 3).
	MaxAttempts int
	// Timeout bounds one attempt (default 0: no bound).
	Timeout time.Duration
	// Grace is how long running steps may finish after a stop (default 30s).
	Grace time.Duration
	// WorkerID names this process in jobstream_runs (default host:pid).
	WorkerID string
	// Handler runs the step. Required.
	Handler Handler
	// Logger receives the worker's logs (default slog.Default()).
	Logger *slog.Logger
	// Observer receives measurements, for metrics (default: none).
	Observer Observer
	// StallTimeout is how long a partition of the trigger topic may hold an
	// unclaimed job at its head without moving before the worker's members
	// rejoin the group to recover it (default 30s; negative: never).
	StallTimeout time.Duration
}

// Observer receives a worker's measurements; ops turns them into metrics.
// Its methods are called from the members' goroutines and must be safe for
// concurrent use.
type Observer interface {
	// Claimed is called when a run is claimed, with the time from the
	// trigger's commit in Postgres to the claim.
	Claimed(step string, commitToClaim time.Duration)
	// Attempted is called when an attempt ends, with its outcome (done,
	// retried, failed, fenced, released) and how long the handler ran.
	Attempted(step, outcome string, d time.Duration)
}

type nopObserver struct{}

func (nopObserver) Claimed(string, time.Duration)           {}
func (nopObserver) Attempted(string, string, time.Duration) {}

// WithDefaults returns a copy of c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if len(c.Pipeline.Steps) == 0 {
		c.Pipeline = schema.DefaultPipeline()
	}
	c.TopicPrefix = cmp.Or(c.TopicPrefix, schema.DefaultTopicPrefix)
	c.Partitions = cmp.Or(c.Partitions, schema.DefaultPartitions)
	c.Concurrency = cmp.Or(c.Concurrency, 1)
	c.Lease = cmp.Or(c.Lease, 30*time.Second)
	c.MaxAttempts = cmp.Or(c.MaxAttempts, 3)
	c.Grace = cmp.Or(c.Grace, 30*time.Second)
	c.StallTimeout = cmp.Or(c.StallTimeout, 30*time.Second)
	if c.WorkerID == "" {
		host, _ := os.Hostname()
		c.WorkerID = host + ":" + strconv.Itoa(os.Getpid())
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.DatabaseURL == "":
		return errors.New("no database given: set DATABASE_URL or --database-url (postgres://user:pass@host:port/db)")
	case len(c.Brokers) == 0:
		return errors.New("no Kafka broker given: set KAFKA_BROKERS or --brokers (host:port, comma-separated)")
	case c.Step == "":
		return errors.New("no step given: pass --step S")
	case c.Handler == nil:
		return errors.New("no handler given: pass the step's command after --, or --http URL")
	case c.Concurrency < 1 || c.Concurrency > 1024:
		return fmt.Errorf("--concurrency %d is out of range 1..1024", c.Concurrency)
	case c.MaxAttempts < 1 || c.MaxAttempts > 1000:
		return fmt.Errorf("--max-attempts %d is out of range 1..1000", c.MaxAttempts)
	case c.Lease < time.Second:
		return fmt.Errorf("--lease %s is too short; use 1s or more", c.Lease)
	case c.Timeout < 0:
		return fmt.Errorf("--timeout %s is negative", c.Timeout)
	}
	if err := c.Pipeline.Validate(); err != nil {
		return err
	}
	_, err := c.Pipeline.Trigger(c.Step)
	return err
}

// Stats are a worker's counters, safe to read while it runs.
type Stats struct {
	Claims      atomic.Int64 // runs claimed
	Completions atomic.Int64 // runs completed (job moved to done)
	Failures    atomic.Int64 // jobs moved to failed
	Retries     atomic.Int64 // attempts retried
	Fenced      atomic.Int64 // results discarded because the attempt lost its run
	Skipped     atomic.Int64 // events that were not a trigger or whose claim found nothing
	InFlight    atomic.Int64 // runs executing now
	Rejoins     atomic.Int64 // times the stall watchdog made the members rejoin
}

// Worker is one process's share of a step's consumer group.
type Worker struct {
	cfg     Config
	log     *slog.Logger
	trigger string
	store   *store
	dlq     *kafka.Writer
	stats   Stats
	ready   chan struct{}

	rejoinMu sync.Mutex
	rejoinCh chan struct{} // closed to make every member rejoin
}

// New checks cfg and returns a Worker; it connects nothing.
func New(cfg Config) (*Worker, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	trigger, _ := cfg.Pipeline.Trigger(cfg.Step)
	return &Worker{cfg: cfg, log: cfg.Logger.With("step", cfg.Step), trigger: trigger, ready: make(chan struct{})}, nil
}

// Ready is closed once the worker has reached Postgres and the broker and
// its members are joining the group.
func (w *Worker) Ready() <-chan struct{} { return w.ready }

// broker says how to reach the brokers, SASL and TLS included.
func (w *Worker) broker() schema.Broker {
	return schema.Broker{Addrs: w.cfg.Brokers, SASL: w.cfg.SASL, TLS: w.cfg.TLS}
}

// Stats returns the worker's live counters.
func (w *Worker) Stats() *Stats { return &w.stats }

// Run joins the step's consumer group with one member per GPU or per unit of
// concurrency and handles events until ctx is done; then running steps get
// Config.Grace to finish before their runs are released. A deliberate stop
// returns nil.
func (w *Worker) Run(ctx context.Context) error {
	broker := w.broker()
	if err := broker.Ping(ctx, 10*time.Second); err != nil {
		return err
	}
	topic := schema.Topic(w.cfg.TopicPrefix, w.trigger)
	if err := broker.EnsureTopics(ctx, w.cfg.Partitions, topic, schema.DLQTopic(w.cfg.TopicPrefix)); err != nil {
		return err
	}
	members := w.cfg.Concurrency
	if len(w.cfg.GPUs) > 0 {
		members = len(w.cfg.GPUs)
	}
	pcfg, err := pgxpool.ParseConfig(w.cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("parse DATABASE_URL: %w", err)
	}
	pcfg.MaxConns = int32(2*members + 2)
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return fmt.Errorf("connect to Postgres: %w", err)
	}
	defer pool.Close()
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = pool.Ping(pctx)
	cancel()
	if err != nil {
		return schema.PostgresUnreachable(err)
	}
	w.store = &store{pool: pool, step: w.cfg.Step, trigger: w.trigger, lease: w.cfg.Lease}
	w.dlq = &kafka.Writer{
		Transport:    broker.Transport(),
		Addr:         kafka.TCP(w.cfg.Brokers...),
		Topic:        schema.DLQTopic(w.cfg.TopicPrefix),
		Balancer:     &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll,
		BatchTimeout: time.Millisecond,
	}
	defer w.dlq.Close()

	close(w.ready)
	w.log.Info("worker started", "topic", topic, "group", schema.GroupID(w.cfg.TopicPrefix, w.cfg.Step), "members", members)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return w.sweepLoop(gctx) })
	g.Go(func() error { return w.watchStalls(gctx, topic) })
	for i := range members {
		gpu := ""
		if len(w.cfg.GPUs) > 0 {
			gpu = w.cfg.GPUs[i]
		}
		g.Go(func() error { return w.member(gctx, topic, i, gpu) })
	}
	err = g.Wait()
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil
	}
	return err
}

// member is one consumer-group member: fetch, handle, commit, in order. When
// the stall watchdog asks, it leaves the group and joins again.
func (w *Worker) member(ctx context.Context, topic string, n int, gpu string) error {
	workerID := w.cfg.WorkerID + "/" + strconv.Itoa(n)
	if gpu != "" {
		workerID += "/gpu" + gpu
	}
	for {
		err := w.consume(ctx, topic, workerID, gpu)
		if !errors.Is(err, errRejoin) {
			return err
		}
		w.log.Info("rejoining the consumer group", "member", workerID)
	}
}

var errRejoin = errors.New("rejoin the consumer group")

// consume runs one membership of the group until ctx ends (nil), a rejoin
// is requested (errRejoin) or the database stays unreachable (the error).
func (w *Worker) consume(ctx context.Context, topic, workerID, gpu string) error {
	rd := kafka.NewReader(kafka.ReaderConfig{
		Brokers:           w.cfg.Brokers,
		Dialer:            w.broker().Dialer(),
		GroupID:           schema.GroupID(w.cfg.TopicPrefix, w.cfg.Step),
		Topic:             topic,
		StartOffset:       kafka.FirstOffset,
		MinBytes:          1,
		MaxBytes:          10 << 20,
		MaxWait:           500 * time.Millisecond,
		ReadBackoffMin:    10 * time.Millisecond,
		ReadBackoffMax:    200 * time.Millisecond,
		HeartbeatInterval: time.Second,
		SessionTimeout:    10 * time.Second,
		RebalanceTimeout:  10 * time.Second,
		JoinGroupBackoff:  500 * time.Millisecond,
		CommitInterval:    0, // synchronous: a commit returns once the broker has it
	})
	defer rd.Close()
	// A rejoin ends the fetch, never a running step.
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rejoin := w.rejoinSignal()
	go func() {
		select {
		case <-rejoin:
			cancel()
		case <-rctx.Done():
		}
	}()
	for {
		m, err := rd.FetchMessage(rctx)
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return nil
			case rctx.Err() != nil:
				return errRejoin
			}
			w.log.Warn("fetch failed; retrying", "err", err)
			select {
			case <-rctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		// A stop lets the step in hand finish within the grace period.
		hctx, cancelStep := graceContext(ctx, w.cfg.Grace)
		err = w.handle(hctx, m, workerID, gpu)
		cancelStep()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		cctx, cancelCommit := graceContext(ctx, 5*time.Second)
		if err := rd.CommitMessages(cctx, m); err != nil {
			// The partition moved to another member (rebalance): it will see
			// the event again, and the claim decides.
			w.log.Warn("commit offset failed; the event will be delivered again", "partition", m.Partition, "offset", m.Offset, "err", err)
		}
		cancelCommit()
	}
}

// graceContext returns a context that ends grace after parent ends.
func graceContext(parent context.Context, grace time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(parent))
	stop := context.AfterFunc(parent, func() {
		t := time.AfterFunc(grace, cancel)
		context.AfterFunc(ctx, func() { t.Stop() })
	})
	return ctx, func() { stop(); cancel() }
}

// handle applies the step protocol to one event. It returns an error only
// when the database stays unreachable until ctx ends.
func (w *Worker) handle(ctx context.Context, m kafka.Message, workerID, gpu string) error {
	env, err := schema.DecodeEnvelope(m.Value)
	if err != nil {
		w.deadLetter(ctx, m.Key, m.Value, "event is not a change-event envelope: "+err.Error(), 0, "")
		w.stats.Skipped.Add(1)
		return nil
	}
	row, ok := schema.Row(env.After)
	if !ok || env.Op == schema.OpDelete || row.CurrentStep != w.trigger || row.Status != "done" {
		w.stats.Skipped.Add(1)
		return nil
	}
	var r run
	err = retryDB(ctx, w.log, func() error {
		var err error
		r, ok, err = w.store.claim(ctx, row.JobID, workerID, env.Source.LSN, env.Source.TsMs)
		return err
	})
	if err != nil {
		return err
	}
	if !ok {
		w.stats.Skipped.Add(1)
		return nil
	}
	w.stats.Claims.Add(1)
	w.cfg.Observer.Claimed(w.cfg.Step, time.Since(time.UnixMilli(env.Source.TsMs)))
	r.job.GPU = gpu
	return w.execute(ctx, r, m, workerID)
}

// execute runs attempts of the claimed job until one succeeds, the job
// fails, or the attempt is fenced.
func (w *Worker) execute(ctx context.Context, r run, m kafka.Message, workerID string) error {
	w.stats.InFlight.Add(1)
	defer w.stats.InFlight.Add(-1)
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 500 * time.Millisecond
	bo.MaxInterval = 30 * time.Second
	bo.MaxElapsedTime = 0
	for {
		began := time.Now()
		result, runErr, fenced := w.attempt(ctx, r)
		ran := time.Since(began)
		if fenced {
			w.cfg.Observer.Attempted(w.cfg.Step, "fenced", ran)
			w.stats.Fenced.Add(1)
			w.log.Warn("attempt lost its run; result discarded", "job_id", r.job.JobID, "attempt", r.attempt)
			return nil
		}
		if runErr == nil {
			var held bool
			err := retryDB(ctx, w.log, func() (err error) { held, err = w.store.complete(ctx, r, result); return err })
			if err != nil {
				return err
			}
			if held {
				w.stats.Completions.Add(1)
				w.cfg.Observer.Attempted(w.cfg.Step, "done", ran)
			} else {
				w.cfg.Observer.Attempted(w.cfg.Step, "fenced", ran)
				w.stats.Fenced.Add(1)
				w.log.Warn("attempt was fenced before completing; result discarded", "job_id", r.job.JobID, "attempt", r.attempt)
			}
			return nil
		}
		if ctx.Err() != nil {
			// Stopped past the grace period: give the run back at once.
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			w.cfg.Observer.Attempted(w.cfg.Step, "released", ran)
			if err := w.store.release(rctx, r); err != nil {
				w.log.Warn("release run", "job_id", r.job.JobID, "err", err)
			}
			return ctx.Err()
		}
		if IsPermanent(runErr) || r.attempt >= w.cfg.MaxAttempts {
			w.log.Warn("step failed", "job_id", r.job.JobID, "attempt", r.attempt, "err", runErr)
			var held bool
			err := retryDB(ctx, w.log, func() (err error) { held, err = w.store.fail(ctx, r, runErr); return err })
			if err != nil {
				return err
			}
			if held {
				w.stats.Failures.Add(1)
				w.cfg.Observer.Attempted(w.cfg.Step, "failed", ran)
				w.deadLetter(ctx, m.Key, m.Value, "step failed", r.attempt, runErr.Error())
			}
			return nil
		}
		w.log.Info("step failed; retrying", "job_id", r.job.JobID, "attempt", r.attempt, "err", runErr)
		var held bool
		err := retryDB(ctx, w.log, func() (err error) { r, held, err = w.store.retry(ctx, r, workerID, runErr); return err })
		if err != nil {
			return err
		}
		if !held {
			w.stats.Fenced.Add(1)
			return nil
		}
		w.stats.Retries.Add(1)
		w.cfg.Observer.Attempted(w.cfg.Step, "retried", ran)
		select {
		case <-ctx.Done():
		case <-time.After(bo.NextBackOff()):
		}
	}
}

var errFenced = errors.New("lease lost: the run was closed by another worker or the sweeper")

// attempt runs the handler once while renewing the run's lease.
func (w *Worker) attempt(ctx context.Context, r run) (result json.RawMessage, err error, fenced bool) {
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if w.cfg.Timeout > 0 {
		var c context.CancelFunc
		actx, c = context.WithTimeoutCause(actx, w.cfg.Timeout, fmt.Errorf("step timed out after %s", w.cfg.Timeout))
		defer c()
	}
	var lost atomic.Bool
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(w.cfg.Lease / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				held, err := w.store.renew(ctx, r.id)
				if err != nil {
					w.log.Warn("renew lease", "job_id", r.job.JobID, "err", err)
					continue
				}
				if !held {
					lost.Store(true)
					cancel(errFenced)
					return
				}
			}
		}
	}()
	result, err = w.cfg.Handler(actx, r.job)
	close(done)
	if lost.Load() {
		return nil, errFenced, true
	}
	if err == nil && !json.Valid(result) {
		err = fmt.Errorf("handler returned invalid JSON (%.80q)", result)
	}
	if err == nil && len(result) == 0 {
		result = json.RawMessage("null")
	}
	return result, err, false
}

// deadLetter sends a message that could not be processed to the dead-letter
// topic, keyed by job_id, with the reason.
func (w *Worker) deadLetter(ctx context.Context, key, event []byte, reason string, attempts int, errText string) {
	v, _ := json.Marshal(map[string]any{
		"reason":   reason,
		"step":     w.cfg.Step,
		"job_id":   string(key),
		"attempts": attempts,
		"error":    errText,
		"event":    json.RawMessage(orNull(event)),
	})
	msg := kafka.Message{Key: key, Value: v, Headers: []kafka.Header{{Key: "jobstream.reason", Value: []byte(reason)}}}
	err := retryDB(ctx, w.log, func() error { return w.dlq.WriteMessages(ctx, msg) })
	if err != nil {
		w.log.Error("dead letter not written", "job_id", string(key), "err", err)
	}
}

func orNull(b []byte) []byte {
	if json.Valid(b) {
		return b
	}
	q, _ := json.Marshal(string(b))
	return q
}

// retryDB retries op with capped exponential backoff until it succeeds or ctx ends.
func retryDB(ctx context.Context, log *slog.Logger, op func() error) error {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 100 * time.Millisecond
	bo.MaxInterval = 5 * time.Second
	bo.MaxElapsedTime = 0
	return backoff.RetryNotify(func() error {
		err := op()
		if err != nil && ctx.Err() != nil {
			return backoff.Permanent(ctx.Err())
		}
		return err
	}, backoff.WithContext(bo, ctx), func(err error, d time.Duration) {
		log.Warn("retrying", "err", err, "retry_in", d)
	})
}

// sweepLoop rewinds runs whose lease expired, every Lease/3.
func (w *Worker) sweepLoop(ctx context.Context) error {
	t := time.NewTicker(max(w.cfg.Lease/3, 500*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			n, err := w.store.sweep(ctx, w.cfg.MaxAttempts)
			if err != nil {
				if ctx.Err() == nil {
					w.log.Warn("sweep expired leases", "err", err)
				}
				continue
			}
			if n > 0 {
				w.log.Info("rewound jobs whose worker stopped renewing its lease", "jobs", n)
			}
		}
	}
}
