package consumers

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go/sasl"

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
	// Concurrency is how many steps this process runs at once (default 1):
	// its one group member works on up to Concurrency of its partitions
	// at a time, one event at a time per partition. Ignored when GPUs is set.
	Concurrency int
	// GPUs, when set, runs one group member per GPU, each running one step
	// at a time with its GPU in Job.GPU (CUDA_VISIBLE_DEVICES for Exec).
	GPUs []string
	// Lease is how long a run is held without a heartbeat (default 30s); it
	// is renewed every Lease/3 from the claim until the job leaves this
	// worker, through retries and their backoff. A dead worker's run is
	// taken over within about Lease plus a few seconds.
	Lease time.Duration
	// MaxAttempts is how many attempts a job gets before it fails (default 3).
	MaxAttempts int
	// RetryBackoff is the delay before the first retry (default 500ms); each
	// further retry waits about 1.5 times longer, with ±50% jitter, up to
	// MaxRetryBackoff (default 30s).
	RetryBackoff    time.Duration
	MaxRetryBackoff time.Duration
	// Timeout bounds one attempt (default 0: no bound); an attempt that runs
	// over is stopped (an exec step's process group killed) and retried.
	Timeout time.Duration
	// Grace is how long running steps may finish after a stop (default 30s);
	// past it their runs are released so that another member takes them
	// at once.
	Grace time.Duration
	// WorkerID names this process in jobstream_runs (default host:pid).
	WorkerID string
	// Handler runs the step. Required.
	Handler Handler
	// Logger receives the worker's logs (default slog.Default()).
	Logger *slog.Logger
	// Observer receives measurements, for metrics (default: none).
	Observer Observer
	// RunsRetention is how long finished runs stay in jobstream_runs before
	// the sweeper prunes them, in small batches (default RunsRetentionDefault;
	// negative: never). Runs that still owe a dead letter are kept.
	RunsRetention time.Duration
	// StallTimeout is how long a partition of the trigger topic that no
	// member of this worker owns may hold an unclaimed job at its head
	// without moving before this worker's members rejoin the group to
	// recover it (default 30s; negative: never).
	StallTimeout time.Duration
}

// RunsRetentionDefault is how long finished runs are kept by default: a week.
const RunsRetentionDefault = 7 * 24 * time.Hour

// Observer receives a worker's measurements; ops turns them into metrics.
// Its methods are called from the members' goroutines and must be safe for
// concurrent use.
type Observer interface {
	// Claimed is called when a run is claimed, with the time from the
	// trigger's commit in Postgres to the claim.
	Claimed(step string, commitToClaim time.Duration)
	// Attempted is called when an attempt ends, with its outcome (done,
	// retried, failed, fenced, released, cancelled, discarded) and how long the handler ran.
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
	c.RetryBackoff = cmp.Or(c.RetryBackoff, 500*time.Millisecond)
	c.MaxRetryBackoff = cmp.Or(c.MaxRetryBackoff, 30*time.Second)
	c.Grace = cmp.Or(c.Grace, 30*time.Second)
	c.StallTimeout = cmp.Or(c.StallTimeout, 30*time.Second)
	c.RunsRetention = cmp.Or(c.RunsRetention, RunsRetentionDefault)
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
		return schema.ErrNoDatabase
	case len(c.Brokers) == 0:
		return schema.ErrNoBrokers
	case c.Step == "":
		return errors.New("no step given: pass --step S")
	case c.Handler == nil:
		return errors.New("no handler given: pass the step's command after --, or --http URL")
	case isInvalid(c.Handler):
		_, err := c.Handler(context.Background(), Job{})
		return errors.Unwrap(err)
	case c.Concurrency < 1 || c.Concurrency > 1024:
		return fmt.Errorf("--concurrency %d is out of range 1..1024", c.Concurrency)
	case len(c.GPUs) > 1024:
		return fmt.Errorf("--gpus lists %d GPUs; at most 1024 fit", len(c.GPUs))
	case c.MaxAttempts < 1 || c.MaxAttempts > 1000:
		return fmt.Errorf("--max-attempts %d is out of range 1..1000", c.MaxAttempts)
	case c.Lease < time.Second:
		return fmt.Errorf("--lease %s is too short; use 1s or more", c.Lease)
	case c.Timeout < 0:
		return fmt.Errorf("--timeout %s is negative", c.Timeout)
	case c.Grace < 0:
		return fmt.Errorf("--grace %s is negative", c.Grace)
	case c.RetryBackoff < 0 || c.MaxRetryBackoff < c.RetryBackoff:
		return fmt.Errorf("retry backoff %s..%s is not a range of positive durations", c.RetryBackoff, c.MaxRetryBackoff)
	}
	seen := map[string]bool{}
	for _, g := range c.GPUs {
		if g == "" || seen[g] {
			return fmt.Errorf("--gpus %q lists an empty or repeated GPU; give each GPU once, e.g. 0,1", g)
		}
		seen[g] = true
	}
	if err := c.Pipeline.Validate(); err != nil {
		return err
	}
	if _, err := c.Pipeline.Trigger(c.Step); err != nil {
		return err
	}
	return schema.ValidTopic(schema.DLQTopic(c.TopicPrefix))
}

// Stats are a worker's counters, safe to read while it runs.
type Stats struct {
	Claims      atomic.Int64 // runs claimed
	Completions atomic.Int64 // runs completed (job moved to done)
	Failures    atomic.Int64 // jobs moved to failed, by this worker's steps or its sweeper
	Retries     atomic.Int64 // attempts retried
	Fenced      atomic.Int64 // results discarded because the attempt lost its run
	Skipped     atomic.Int64 // events that were not a trigger or whose claim found nothing
	InFlight    atomic.Int64 // runs executing now
	Expired     atomic.Int64 // runs whose lease expired, closed by this worker's sweeper
	Released    atomic.Int64 // runs given back at a stop past the grace period
	DeadLetters atomic.Int64 // messages written to the dead-letter topic
	Rejoins     atomic.Int64 // times the stall watchdog made the members rejoin
	Cancelled   atomic.Int64 // runs stopped or closed because the user cancelled the job
	Discarded   atomic.Int64 // runs stopped or closed because the job moved or was deleted under them
	Pruned      atomic.Int64 // finished runs deleted by this worker's sweeper (RunsRetention)
}
