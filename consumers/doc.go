// Package consumers runs jobstream's step workers. The worker of step S is
// a member (or, with GPUs, one member per GPU) of S's consumer group; it
// reads the topic of the step T before S and walks every job it is given
// through claim → run → complete → commit:
//
//  1. An event whose after is not (T, done) is skipped; an event that is not
//     a change-event envelope is dead-lettered and skipped. Both are
//     committed like any other: a bad message never blocks its partition.
//  2. Claim, in one statement: the job moves (T, done) → (S, running) by a
//     compare-and-set on both columns, and the attempt is recorded in
//     jobstream_runs with a lease. Zero rows means a stale or duplicate
//     event: it is committed and skipped. (Zero rows is believed only once
//     the event's transaction is visible to new snapshots, since decoding
//     can deliver a commit a moment before Postgres makes it visible.)
//  3. Run the Handler (in-process Go, Exec, or HTTP) while the lease is
//     renewed every Lease/3. A BatchHandler (Serve, HTTPBatch, BatchFunc)
//     instead runs in lanes, one per GPU or Concurrency of them: a lane
//     gathers up to Batch claimed jobs within BatchWait and hands them over
//     at once; each job keeps its own claim, lease, retries and fencing.
//     Serve keeps one long-lived process per lane (a model loaded once); a
//     member none of whose processes is ready is not in its group.
//  4. Complete, in one statement, only while this attempt still holds its
//     run (fencing): the run is closed and the job moves (S, running) →
//     (S, done) with the result merged into results under S.
//  5. Commit the offset, never before 4.
//
// # Guarantees
//
// At-least-once delivery: an event may be delivered more than once (after
// a crash, a rebalance, a replay); it is never lost. Offsets are committed
// only after the step's outcome is committed in Postgres, so a crash at any
// point re-delivers the event, and the claim decides whether it runs again.
//
// Exactly one completion per attempt chain: only one claim of a (T, done)
// state succeeds, and a result is written only by the attempt that holds
// the job's open run. An attempt that lost its run (its lease expired, it
// was released) is fenced: its handler is cancelled and its late result
// discarded, never a second done. Besides retries, a step runs again only
// when an attempt lost its run: its worker stopped renewing the lease (it
// died or froze for a lease) or was stopped past its grace period.
// Handlers with side effects outside Postgres should therefore be
// idempotent per (job_id, step).
//
// Attempt chains: a chain starts each time the job reaches (T, done) by a
// step's success, a replay, a requeue by hand or a new row; its attempts
// are numbered 1..MaxAttempts (Job.Attempt) and recorded with the chain in
// jobstream_runs. Only a rewind by the sweeper or a release continues a
// chain, so a rerun always gets its full retries while a step that kills
// its worker every time still runs out of them.
//
// Postgres outages: a worker never expires a run it holds, and after an
// outage or a Postgres restart no sweeper expires any run for one lease, so
// every live worker renews first: an outage of any length stops no step and
// spends no attempt. A worker that really died loses its runs one lease
// after Postgres is back.
//
// Cancellation: every 500ms the worker checks with one query that the jobs
// of the runs it holds are still at (S, running). A job the user cancelled
// (status 'cancelled', or Cancel), deleted or moved has its step stopped
// (the handler's context cancelled, an exec step's process group killed)
// and its run closed as cancelled or discarded, with no retry and no dead
// letter; the same holds for a step that fails just as its job is changed.
//
// A missing table or column (someone dropped jobs.error) stops the worker
// with one sentence naming jobstream migrate (ErrSchema) instead of a retry
// loop; Run checks the schema at start too.
//
// Retention: the sweeper prunes finished runs older than RunsRetention,
// 1,000 at a time; PruneRuns does it on demand.
//
// Ordering: within a partition (hence per job, as events are keyed by
// job_id) events are handled one at a time in offset order, so a job's
// transitions are seen in commit order. A member works on several of its
// partitions at once, up to Config.Concurrency steps (one per GPU member).
// A step running when a rebalance moves its partition keeps its run and
// finishes; the partition's next owner reads its event again and skips it.
//
// Leases and heartbeats live in jobstream_runs, never on jobs, so a
// heartbeat makes no change event and a step may run for hours. The lease
// is held from the claim until the job leaves the worker, through retries
// and the backoff between them.
//
// Failures: a retriable error is retried with exponential backoff and
// jitter up to MaxAttempts, each attempt a row in jobstream_runs; then, or
// at once for an error marked Permanent (exit code 65, an HTTP 4xx) or data
// Postgres refuses (SQLSTATE classes 22, 23, 54), the job becomes
// (S, failed) with the error, and a dead letter with the triggering event,
// the attempts and the error goes to <prefix>.dlq, keyed by job_id.
//
// What a crash costs: a worker killed mid-step loses that attempt. Its
// exec step processes die with it (SIGKILL on parent death). Every live
// worker's sweeper closes runs whose lease expired and rewinds their jobs
// to (T, done), which re-delivers them through the normal path, so another
// member takes the job about Lease (default 30s) after the last renewal;
// past MaxAttempts the sweeper fails the job and dead-letters it. Events the
// dead worker had finished but not yet committed are delivered again and
// skipped.
//
// Shutdown: when Run's context ends the worker takes no new event, lets
// running steps finish within Grace, completes them and commits their
// offsets, and leaves the group at once (no session timeout). A step still
// running past Grace is cancelled and its run released: the job is rewound
// to (T, done) and another member takes it at once, without waiting for the
// lease. A job waiting in retry backoff is released at once.
//
// Membership: members use kafka-go's ConsumerGroup, one generation at a
// time; each generation reads its partitions afresh from the committed
// offsets, so no message of an earlier generation is ever delivered (the
// "stale messages after a rebalance" of kafka-go's group Reader cannot
// happen), and a generation's finished offsets are committed before the
// member joins the next one. A stall watchdog makes the members rejoin
// when a partition nobody here holds stops moving while its next job waits
// unclaimed (see Config.StallTimeout).
//
// Embedding: the caller owns the resources. consumers.New(consumers.Config{
// Pool: pool, Brokers: ..., Steps: map[string]Handler{...}}) runs every
// query on the caller's *pgxpool.Pool and never closes it (without Pool,
// the worker opens one from DatabaseURL and closes it when Run returns),
// and speaks Kafka through the caller's Dialer and Transport when given
// (their SASL, TLS and DialFunc). One Worker serves every step of Steps
// (Step and Handler are the one-step form): each step is a member of its
// own consumer group (one per GPU with GPUs), with its own sweeper,
// watcher and stall watchdog; the steps share the pool, one dialer and
// transport, one dead-letter writer and the slots, so Concurrency (or one
// step per GPU) bounds the whole worker. Stats count all the steps
// together; the hooks name the step. The jobstream worker command runs
// one step; ops' Example_embed runs a reader and a two-step worker on one
// pool.
//
// Metrics are not this package's business: Stats are counters to read, and
// hooks (Config.Hooks) receive timings; ops turns both into Prometheus
// metrics.
package consumers
