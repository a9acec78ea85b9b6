package consumers

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"

	"github.com/jobstream/jobstream/schema"
)

// Defaults of the Config fields a zero value leaves to the worker (the
// topic prefix and partitions are schema's DefaultTopicPrefix and
// DefaultPartitions).
const (
	// ConcurrencyDefault is how many steps a process runs at once by default.
	ConcurrencyDefault = 1
	// LeaseDefault is how long a run is held without a heartbeat by default.
	LeaseDefault = 30 * time.Second
	// MaxAttemptsDefault is how many attempts a job gets by default.
	MaxAttemptsDefault = 3
	// RetryBackoffDefault is the default delay before the first retry.
	RetryBackoffDefault = 500 * time.Millisecond
	// MaxRetryBackoffDefault is the default longest delay before a retry.
	MaxRetryBackoffDefault = 30 * time.Second
	// GraceDefault is how long running steps may finish after a stop by default.
	GraceDefault = 30 * time.Second
	// StallTimeoutDefault is how long a partition no member owns may hold
	// an unclaimed job by default before the members rejoin.
	StallTimeoutDefault = 30 * time.Second
	// RunsRetentionDefault is how long finished runs are kept by default: a week.
	RunsRetentionDefault = 7 * 24 * time.Hour
	// BatchDefault is how many jobs a lane hands its step at once by default.
	BatchDefault = 1
	// BatchWaitDefault is how long a lane gathers a batch by default.
	BatchWaitDefault = 5 * time.Millisecond
)

// Bounds Validate checks.
const (
	maxConcurrency = 1024
	maxGPUs        = 1024
	maxAttempts    = 1000
	maxBatch       = 1024
	minLease       = time.Second
	minStall       = time.Second
)

// Config configures a Worker. Zero fields take the defaults documented on them.
type Config struct {
	// Pool is the caller's Postgres pool, on which the worker runs every
	// query; the worker never closes it. Give it about two connections per
	// slot (Concurrency, or one per GPU) and three per step. Default: a
	// pool of the worker's own, opened from DatabaseURL when Run starts and
	// closed when it returns.
	Pool *pgxpool.Pool
	// DatabaseURL is the Postgres connection URL. Required unless Pool is set.
	DatabaseURL string
	// Brokers are the Kafka bootstrap brokers (host:port). Required.
	Brokers []string
	// SASL authenticates to the brokers (default: none).
	SASL sasl.Mechanism
	// TLS encrypts the connections to the brokers (default: plaintext).
	TLS *tls.Config
	// Dialer is the caller's Kafka dialer, used by every step's group
	// members and partition readers: its SASL, TLS and DialFunc (for
	// tracing) are the caller's. Default: one built from SASL and TLS.
	Dialer *kafka.Dialer
	// Transport is the caller's Kafka transport, used for dead letters and
	// admin requests (default: one built from SASL and TLS). Every step of
	// the worker shares the Dialer and the Transport.
	Transport *kafka.Transport
	// Step is the step this worker runs, with Handler: the one-step form of
	// Steps. Not the pipeline's first.
	Step string
	// Steps maps each step this worker runs to its handler (set Steps, or
	// Step and Handler). Each step is a member of its own consumer group
	// (one per GPU with GPUs); the steps share Pool, the Kafka connection
	// and the slots: Concurrency and GPUs bound the whole worker.
	Steps map[string]Handler
	// Pipeline gives the step order (default schema.DefaultPipeline()).
	Pipeline schema.Pipeline
	// TopicPrefix prefixes every topic name (default schema.DefaultTopicPrefix).
	TopicPrefix string
	// Partitions is the partition count if the trigger topic must be created
	// (default schema.DefaultPartitions).
	Partitions int
	// Concurrency is how many steps this process runs at once (default
	// ConcurrencyDefault, at most 1024):
	// its one group member per step works on up to Concurrency of its
	// partitions at a time, one event at a time per partition, all steps
	// together running at most Concurrency. Ignored when GPUs is set.
	Concurrency int
	// GPUs, when set, runs one group member per GPU, each running one step
	// at a time with its GPU in Job.GPU (CUDA_VISIBLE_DEVICES for Exec);
	// at most 1024, each once.
	GPUs []string
	// Lease is how long a run is held without a heartbeat (default
	// LeaseDefault, at least 1s); it
	// is renewed every Lease/3 from the claim until the job leaves this
	// worker, through retries and their backoff. A dead worker's run is
	// taken over within about Lease plus a few seconds.
	Lease time.Duration
	// MaxAttempts is how many attempts a job gets before it fails (default
	// MaxAttemptsDefault, at most 1000).
	MaxAttempts int
	// RetryBackoff is the delay before the first retry (default
	// RetryBackoffDefault); each further retry waits about 1.5 times longer,
	// with ±50% jitter, up to MaxRetryBackoff (default MaxRetryBackoffDefault).
	RetryBackoff    time.Duration
	MaxRetryBackoff time.Duration
	// Timeout bounds one attempt (default 0: no bound); an attempt that runs
	// over is stopped (an exec step's process group killed) and retried.
	Timeout time.Duration
	// Grace is how long running steps may finish after a stop (default
	// GraceDefault);
	// past it their runs are released so that another member takes them
	// at once.
	Grace time.Duration
	// WorkerID names this process in jobstream_runs (default host:pid).
	WorkerID string
	// Handler runs Step. Required with Step, unless BatchHandler is set.
	Handler Handler
	// BatchHandler runs Step several jobs at a time (Serve, HTTPBatch, or
	// a BatchFunc of your own): the one-step form of BatchSteps.
	BatchHandler BatchHandler
	// BatchSteps maps steps to batch handlers, beside Steps (each step in
	// one of the two).
	BatchSteps map[string]BatchHandler
	// Batch is how many jobs a lane (a GPU, or one of Concurrency) hands a
	// BatchHandler at once (default BatchDefault, at most 1024); each is
	// claimed, leased, retried and dead-lettered on its own. A member
	// holds up to Batch jobs per lane.
	Batch int
	// BatchWait is how long a lane waits for more jobs once it has one,
	// before it hands over a batch that is not full (default
	// BatchWaitDefault; 0 takes only the jobs already waiting).
	BatchWait time.Duration
	// StartTimeout bounds how long a Serve process may take to say it is
	// ready (default StartTimeoutDefault); it is not counted in Timeout.
	StartTimeout time.Duration
	// Logger receives the worker's logs (default slog.Default()).
	Logger *slog.Logger
	// Hooks observe the worker, for metrics: each implements any of the
	// Hook interfaces (HookClaimed, HookAttempted). Default: none.
	Hooks []Hook
	// RunsRetention is how long finished runs stay in jobstream_runs before
	// the sweeper prunes them, in small batches (default RunsRetentionDefault;
	// negative: never). Runs that still owe a dead letter are kept.
	RunsRetention time.Duration
	// StallTimeout is how long a partition of the trigger topic that no
	// member of this worker owns may hold an unclaimed job at its head
	// without moving before this worker's members rejoin the group to
	// recover it (default StallTimeoutDefault, at least 1s; negative: never).
	// The watchdog runs only against jobstream's embedded broker (cluster id
	// kafkaconn.EmbeddedClusterID), whose group coordinator can leave a
	// partition unassigned; against Kafka it stays off.
	StallTimeout time.Duration
}

// WithDefaults returns a copy of c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if len(c.Pipeline.Steps) == 0 {
		c.Pipeline = schema.DefaultPipeline()
	}
	c.TopicPrefix = cmp.Or(c.TopicPrefix, schema.DefaultTopicPrefix)
	c.Partitions = cmp.Or(c.Partitions, schema.DefaultPartitions)
	c.Concurrency = cmp.Or(c.Concurrency, ConcurrencyDefault)
	c.Lease = cmp.Or(c.Lease, LeaseDefault)
	c.MaxAttempts = cmp.Or(c.MaxAttempts, MaxAttemptsDefault)
	c.RetryBackoff = cmp.Or(c.RetryBackoff, RetryBackoffDefault)
	c.MaxRetryBackoff = cmp.Or(c.MaxRetryBackoff, MaxRetryBackoffDefault)
	c.Grace = cmp.Or(c.Grace, GraceDefault)
	c.StallTimeout = cmp.Or(c.StallTimeout, StallTimeoutDefault)
	c.RunsRetention = cmp.Or(c.RunsRetention, RunsRetentionDefault)
	c.Batch = cmp.Or(c.Batch, BatchDefault)
	if c.Batch > 1 && c.BatchWait == 0 {
		c.BatchWait = BatchWaitDefault
	}
	c.StartTimeout = cmp.Or(c.StartTimeout, StartTimeoutDefault)
	if c.WorkerID == "" {
		host, _ := os.Hostname()
		c.WorkerID = host + ":" + strconv.Itoa(os.Getpid())
	}
	c.Logger = cmp.Or(c.Logger, slog.Default())
	return c
}

// Validate returns the first setting of c that New refuses, as one sentence
// naming the Config field (a *schema.ConfigError when a field is at fault). It
// checks c as it is, zero fields included: New checks c.WithDefaults(). A
// command line whose flags carry the defaults checks what it parsed, so
// that an explicit 0 is refused rather than read as the default.
func (c Config) Validate() error {
	if err := schema.CheckConnection(c.DatabaseURL, c.Pool != nil, c.Brokers); err != nil {
		return err
	}
	many := len(c.Steps) > 0 || len(c.BatchSteps) > 0
	switch {
	case many && (c.Step != "" || c.Handler != nil || c.BatchHandler != nil):
		return &schema.ConfigError{Fields: []string{"Steps", "Step", "Handler"},
			Msg: "Steps and Step (or Handler) are both set; give Steps (and BatchSteps), or Step and Handler (or BatchHandler)"}
	case !many && c.Step == "":
		return schema.FieldError("Step", "is empty; name the step this worker runs")
	case c.Handler != nil && c.BatchHandler != nil:
		return &schema.ConfigError{Fields: []string{"Handler", "BatchHandler"},
			Msg: "Handler and BatchHandler are both set; give one of them"}
	}
	for step := range c.BatchSteps {
		if _, dup := c.Steps[step]; dup {
			return schema.FieldError(fmt.Sprintf("BatchSteps[%q]", step), "is also in Steps; give each step one handler")
		}
	}
	if err := c.validateHandlers(); err != nil {
		return err
	}
	switch {
	case c.Concurrency < 1 || c.Concurrency > maxConcurrency:
		return schema.FieldError("Concurrency", "%d is out of range 1..%d", c.Concurrency, maxConcurrency)
	case len(c.GPUs) > maxGPUs:
		return schema.FieldError("GPUs", "lists %d GPUs; at most %d fit", len(c.GPUs), maxGPUs)
	case c.MaxAttempts < 1 || c.MaxAttempts > maxAttempts:
		return schema.FieldError("MaxAttempts", "%d is out of range 1..%d", c.MaxAttempts, maxAttempts)
	case c.Lease < minLease:
		return schema.FieldError("Lease", "%s is too short; use %s or more", c.Lease, minLease)
	case c.Timeout < 0:
		return schema.FieldError("Timeout", "%s is negative", c.Timeout)
	case c.Grace < 0:
		return schema.FieldError("Grace", "%s is negative", c.Grace)
	case c.RetryBackoff < 0:
		return schema.FieldError("RetryBackoff", "%s is negative", c.RetryBackoff)
	case c.MaxRetryBackoff < c.RetryBackoff:
		return &schema.ConfigError{Fields: []string{"RetryBackoff", "MaxRetryBackoff"},
			Msg: fmt.Sprintf("RetryBackoff %s is longer than MaxRetryBackoff (%s); use %[2]s or less", c.RetryBackoff, c.MaxRetryBackoff)}
	case c.StallTimeout >= 0 && c.StallTimeout < minStall:
		return schema.FieldError("StallTimeout", "%s is too short; use %s or more, or a negative value to turn the watchdog off", c.StallTimeout, minStall)
	case c.Batch < 1 || c.Batch > maxBatch:
		return schema.FieldError("Batch", "%d is out of range 1..%d", c.Batch, maxBatch)
	case c.Batch > 1 && len(c.steps()) > 0:
		return schema.FieldError("Batch", "is %d, but a Handler runs one job at a time; give a BatchHandler (Serve, HTTPBatch or a BatchFunc)", c.Batch)
	case c.BatchWait < 0:
		return schema.FieldError("BatchWait", "%s is negative", c.BatchWait)
	case c.StartTimeout < 0:
		return schema.FieldError("StartTimeout", "%s is negative", c.StartTimeout)
	case c.RunsRetention == 0:
		return schema.FieldError("RunsRetention", "0 would prune runs as they finish; give an age such as 168h, or a negative value to keep them forever")
	}
	seen := map[string]bool{}
	for _, g := range c.GPUs {
		if g == "" || seen[g] {
			return schema.FieldError("GPUs", "%q is an empty or repeated GPU; give each GPU once, e.g. 0,1", g)
		}
		seen[g] = true
	}
	if err := c.Pipeline.Validate(); err != nil {
		return err
	}
	for _, step := range c.allSteps() {
		if _, err := c.Pipeline.Trigger(step); err != nil {
			return err
		}
	}
	return schema.CheckTopicPrefix(c.TopicPrefix)
}

// steps returns the one-job-at-a-time steps of c, from Steps or from
// Step and Handler.
func (c Config) steps() map[string]Handler {
	switch {
	case len(c.Steps) > 0:
		return c.Steps
	case c.Handler != nil || (c.BatchHandler == nil && len(c.BatchSteps) == 0):
		return map[string]Handler{c.Step: c.Handler}
	}
	return nil
}

// batchSteps returns the batched steps of c, from BatchSteps or from Step
// and BatchHandler.
func (c Config) batchSteps() map[string]BatchHandler {
	if c.BatchHandler != nil {
		return map[string]BatchHandler{c.Step: c.BatchHandler}
	}
	return c.BatchSteps
}

// allSteps returns every step of c, sorted.
func (c Config) allSteps() []string {
	return slices.Sorted(func(yield func(string) bool) {
		for s := range c.steps() {
			if !yield(s) {
				return
			}
		}
		for s := range c.batchSteps() {
			if !yield(s) {
				return
			}
		}
	})
}

// validateHandlers checks that every step has a handler that can run.
func (c Config) validateHandlers() error {
	steps := c.steps()
	for _, step := range slices.Sorted(maps.Keys(steps)) {
		h, field := steps[step], "Handler"
		if len(c.Steps) > 0 {
			field = fmt.Sprintf("Steps[%q]", step)
		}
		switch {
		case h == nil:
			return schema.FieldError(field, "is nil: no handler given; use Exec, HTTP or a func of your own")
		case isInvalid(h):
			_, err := h(context.Background(), Job{})
			return errors.Unwrap(err)
		}
	}
	batch := c.batchSteps()
	for _, step := range slices.Sorted(maps.Keys(batch)) {
		field := "BatchHandler"
		if c.BatchHandler == nil {
			field = fmt.Sprintf("BatchSteps[%q]", step)
		}
		switch h := batch[step].(type) {
		case nil:
			return schema.FieldError(field, "is nil: no handler given; use Serve, HTTPBatch or a BatchFunc")
		case invalidBatch:
			return h.err
		}
	}
	return nil
}

// Stats are a worker's counters, safe to read while it runs. A worker of
// several steps counts them all together; the hooks name the step.
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

	ServeRestarts     atomic.Int64 // times a Serve process was started again after it exited or was stopped
	ServeCrashLooping atomic.Int64 // lanes whose Serve process failed 3 or more times in a row, now
}
