package consumers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/errgroup"

	"github.com/jobstream/jobstream/schema"
	"github.com/jobstream/jobstream/schema/kafkaconn"
)

// Worker is one process's share of a step's consumer group.
type Worker struct {
	cfg      Config
	log      *slog.Logger
	trigger  string
	topic    string
	group    string
	broker   kafkaconn.Broker
	store    *store
	dlq      *kafka.Writer
	stats    Stats
	ready    chan struct{}
	steps    sync.WaitGroup  // every step this worker has in hand
	stopping <-chan struct{} // closed when Run's ctx ends
	joining  sync.WaitGroup  // members that have not had a generation yet

	rejoinMu sync.Mutex
	rejoinCh chan struct{} // closed to make every member rejoin

	ownedMu sync.Mutex
	owned   map[int]int // partitions of the trigger topic this worker's members hold, with how many hold each

	leasesMu sync.Mutex
	leases   map[*lease]struct{} // the runs in hand

	stop context.CancelCauseFunc // stops Run with a cause it returns (a schema error)
}

// New checks cfg and returns a Worker; it connects nothing.
func New(cfg Config) (*Worker, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	trigger, _ := cfg.Pipeline.Trigger(cfg.Step)
	return &Worker{
		cfg:     cfg,
		log:     cfg.Logger.With("step", cfg.Step),
		trigger: trigger,
		topic:   schema.Topics{Prefix: cfg.TopicPrefix}.Step(trigger),
		group:   schema.Topics{Prefix: cfg.TopicPrefix}.Group(cfg.Step),
		broker:  kafkaconn.Broker{Addrs: cfg.Brokers, SASL: cfg.SASL, TLS: cfg.TLS},
		ready:   make(chan struct{}),
	}, nil
}

// Ready is closed once the worker has reached Postgres and the broker and
// every one of its members has joined the group and been given its
// partitions: from then on, a new trigger event is acted on at once.
func (w *Worker) Ready() <-chan struct{} { return w.ready }

// Stats returns the worker's live counters.
func (w *Worker) Stats() *Stats { return &w.stats }

// Run joins the step's consumer group with one member per GPU, or one
// member running Config.Concurrency steps at once, and handles events until
// ctx is done. Then it takes no new event, gives running steps Config.Grace
// to finish (past it their runs are released), commits the offsets of what
// finished, and leaves the group. A deliberate stop returns nil.
func (w *Worker) Run(ctx context.Context) (err error) {
	// A stop while starting is a stop, not a failure to start.
	starting := func(err error) error {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	parent := ctx
	ctx, w.stop = context.WithCancelCause(ctx)
	defer w.stop(nil)
	// A schema error found while running stops the worker like a stop
	// does, and is what Run returns.
	defer func() {
		if cause := context.Cause(ctx); parent.Err() == nil && errors.Is(cause, ErrSchema) {
			err = cause
		}
	}()
	if err := w.broker.Ping(ctx, 10*time.Second); err != nil {
		return starting(err)
	}
	// The trigger topic, the dead-letter topic, and the topic this step's
	// own transitions land on (the next step's trigger).
	topics := []string{w.topic, schema.Topics{Prefix: w.cfg.TopicPrefix}.DLQ(), schema.Topics{Prefix: w.cfg.TopicPrefix}.Step(w.cfg.Step)}
	if err := w.broker.EnsureTopics(ctx, w.cfg.Partitions, topics...); err != nil {
		return starting(err)
	}
	members := w.members()
	slots := 0
	for _, m := range members {
		slots += cap(m.slots)
	}
	pcfg, err := pgxpool.ParseConfig(w.cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("parse DATABASE_URL: %w", err)
	}
	// A claim or completion per slot, a renewal per run in hand, the sweeper.
	pcfg.MaxConns = int32(min(2*slots+4, 64))
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return starting(fmt.Errorf("connect to Postgres: %w", err))
	}
	defer pool.Close()
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = pool.Ping(pctx)
	cancel()
	if err != nil {
		return starting(schema.PostgresUnreachable(err))
	}
	if err := checkSchema(ctx, pool); err != nil {
		return starting(err)
	}
	if w.store, err = newStore(ctx, pool, w.cfg.Step, w.trigger, w.cfg.Lease); err != nil {
		return starting(err)
	}
	w.dlq = &kafka.Writer{
		Addr:         kafka.TCP(w.cfg.Brokers...),
		Topic:        schema.Topics{Prefix: w.cfg.TopicPrefix}.DLQ(),
		Balancer:     &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll,
		BatchTimeout: time.Millisecond,
		Transport:    w.broker.Transport(),
	}
	defer w.dlq.Close()

	w.stopping = ctx.Done()
	w.joining.Add(len(members))
	go func() {
		w.joining.Wait()
		close(w.ready)
	}()
	w.log.Info("worker started", "topic", w.topic, "group", w.group, "members", len(members), "slots", slots)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return w.sweepLoop(gctx) })
	g.Go(func() error { return w.watchStalls(gctx) })
	g.Go(func() error { return w.watchLoop(gctx) })
	for _, m := range members {
		g.Go(func() error { return m.run(gctx) })
	}
	err = g.Wait()
	// Steps a rebalance detached from their partition finish (or are
	// released) within the grace period too.
	w.steps.Wait()
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		err = nil
	}
	if err == nil {
		w.log.Info("worker stopped", "claims", w.stats.Claims.Load(), "completions", w.stats.Completions.Load(),
			"released", w.stats.Released.Load())
	}
	return err
}

// members returns one member per GPU, or one member with Concurrency slots.
func (w *Worker) members() []*member {
	if len(w.cfg.GPUs) == 0 {
		return []*member{{w: w, id: w.cfg.WorkerID + "/0", slots: make(chan struct{}, w.cfg.Concurrency)}}
	}
	var out []*member
	for i, gpu := range w.cfg.GPUs {
		out = append(out, &member{w: w, id: w.cfg.WorkerID + "/" + strconv.Itoa(i) + "/gpu" + gpu, gpu: gpu, slots: make(chan struct{}, 1)})
	}
	return out
}

// member is one consumer-group member. In each generation it reads every
// partition it was assigned on its own goroutine, one event at a time per
// partition in offset order, and runs up to cap(slots) steps at once; the
// slots outlive generations, so a GPU member never runs two steps at once.
type member struct {
	w      *Worker
	id     string // the worker name written into jobstream_runs
	gpu    string
	slots  chan struct{}
	joined func() // called at every generation; the first marks the member joined
}

// groupTimeouts derives the group's session timeout from the lease: a dead
// member's partitions move on before its runs' leases expire, so a rewound
// job is claimed at once. 6s is Kafka's smallest allowed session timeout.
func (w *Worker) groupTimeouts() (session, heartbeat time.Duration) {
	session = min(max(w.cfg.Lease, 6*time.Second), 10*time.Second)
	return session, session / 10
}

func (m *member) run(ctx context.Context) error {
	var joined sync.Once
	m.joined = func() { joined.Do(m.w.joining.Done) }
	defer m.joined() // a member that stops before joining does not hold Ready back
	for {
		stopped, err := m.membership(ctx, m.w.rejoinSignal())
		if err != nil || stopped {
			return err
		}
		m.w.log.Info("rejoining the consumer group", "member", m.id)
	}
}

// membership joins the group as a new member and consumes the generations
// it is given until ctx ends (stopped) or the stall watchdog asks for a
// rejoin; then it leaves the group.
func (m *member) membership(ctx context.Context, rejoin <-chan struct{}) (stopped bool, err error) {
	w := m.w
	session, heartbeat := w.groupTimeouts()
	debug := func(msg string, args ...any) { w.log.Debug(fmt.Sprintf(msg, args...), "member", m.id) }
	cg, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID:                w.group,
		Brokers:           w.cfg.Brokers,
		Dialer:            w.broker.Dialer(),
		Topics:            []string{w.topic},
		HeartbeatInterval: heartbeat,
		SessionTimeout:    session,
		RebalanceTimeout:  30 * time.Second,
		JoinGroupBackoff:  time.Second,
		StartOffset:       kafka.FirstOffset,
		Logger:            kafka.LoggerFunc(debug),
		ErrorLogger:       kafka.LoggerFunc(debug),
	})
	if err != nil {
		return false, fmt.Errorf("consumer group %s: %w", w.group, err)
	}
	defer func() {
		cg.Close() // leaves the group
		w.log.Info("left the group", "member", m.id)
	}()
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-rejoin:
			cancel()
		case <-rctx.Done():
		}
	}()
	for {
		gen, err := cg.Next(rctx)
		switch {
		case ctx.Err() != nil:
			return true, nil
		case rctx.Err() != nil:
			return false, nil
		case err != nil:
			if errors.Is(err, kafka.RebalanceInProgress) || errors.Is(err, kafka.UnknownMemberId) || errors.Is(err, kafka.IllegalGeneration) {
				w.log.Debug("joining the group again", "member", m.id, "err", err)
			} else {
				w.log.Warn("join the group failed; retrying", "member", m.id, "err", err)
			}
			continue
		}
		m.generation(ctx, rctx, gen)
		switch {
		case ctx.Err() != nil:
			return true, nil
		case rctx.Err() != nil:
			return false, nil
		}
	}
}

// generation consumes the partitions gen assigned until the generation ends
// (a rebalance) or rctx ends (a rejoin): then in-flight steps are detached,
// go on holding their runs, and their events are left uncommitted for the
// next owner, whose claim will find nothing. When ctx ends (a stop) no new
// event is taken, in-flight steps finish within the grace period, and their
// offsets are committed before the member leaves the group.
func (m *member) generation(ctx, rctx context.Context, gen *kafka.Generation) {
	w := m.w
	parts := gen.Assignments[w.topic]
	ids := make([]int, 0, len(parts))
	for _, p := range parts {
		ids = append(ids, p.ID)
	}
	w.log.Debug("generation started", "member", m.id, "generation", gen.ID, "partitions", ids)
	w.own(ids, 1)
	defer w.own(ids, -1)
	m.joined()

	over := make(chan struct{}) // closed to detach in-flight steps
	var detach sync.Once
	fetchCtx, stopFetching := context.WithCancel(ctx)
	defer stopFetching()
	com := &committer{gen: gen, topic: w.topic, log: w.log, pending: map[int]int64{}, kick: make(chan struct{}, 1)}
	var loops sync.WaitGroup
	for _, p := range parts {
		loops.Add(1)
		go func() {
			defer loops.Done()
			m.partition(fetchCtx, ctx, over, p, com)
		}()
	}
	// end detaches the steps, stops the partitions and commits what
	// finished, while the generation's connection to the coordinator is
	// still open (kafka-go keeps it until every Start function returned).
	end := func() {
		detach.Do(func() { close(over) })
		stopFetching()
		loops.Wait()
		com.flush()
	}
	finished := make(chan struct{})
	gen.Start(func(gctx context.Context) {
		defer close(finished)
		com.run(gctx)
		end()
	})
	select {
	case <-finished:
		w.log.Debug("generation ended", "member", m.id, "generation", gen.ID)
	case <-rctx.Done():
		if ctx.Err() == nil {
			end() // a rejoin
			return
		}
		// Stop: the partitions take no new event; each waits for its step
		// (bounded by the grace period), then the finished offsets are
		// committed before the member leaves the group.
		w.log.Info("stopping: taking no new events, letting running steps finish", "member", m.id, "grace", w.cfg.Grace)
		stopFetching()
		loops.Wait()
		com.flush()
	}
}

// own adds d to the holders of each of partitions.
func (w *Worker) own(partitions []int, d int) {
	w.ownedMu.Lock()
	defer w.ownedMu.Unlock()
	if w.owned == nil {
		w.owned = map[int]int{}
	}
	for _, p := range partitions {
		if w.owned[p] += d; w.owned[p] <= 0 {
			delete(w.owned, p)
		}
	}
}

// owns reports whether a member of this worker holds partition p now.
func (w *Worker) owns(p int) bool {
	w.ownedMu.Lock()
	defer w.ownedMu.Unlock()
	return w.owned[p] > 0
}

// partition handles the events of one partition in offset order until
// fetchCtx ends or the generation is over. Events that are not triggers are
// skipped in place; steps run on a goroutine of their own, so that a
// rebalance can detach the step in flight instead of waiting for it. That
// goroutine serves the partition's steps one after another (its stack,
// grown by the first, serves the next) and ends after the last.
func (m *member) partition(fetchCtx, runCtx context.Context, over <-chan struct{}, p kafka.PartitionAssignment, com *committer) {
	w := m.w
	rd := kafka.NewReader(kafka.ReaderConfig{
		Brokers:        w.cfg.Brokers,
		Dialer:         w.broker.Dialer(),
		Topic:          w.topic,
		Partition:      p.ID,
		MinBytes:       1,
		MaxBytes:       10 << 20,
		MaxWait:        time.Second,
		ReadBackoffMin: 50 * time.Millisecond,
		ReadBackoffMax: time.Second,
		QueueCapacity:  256,
		Logger:         kafka.LoggerFunc(func(string, ...any) {}),
		ErrorLogger: kafka.LoggerFunc(func(msg string, args ...any) {
			w.log.Debug(fmt.Sprintf(msg, args...), "partition", p.ID)
		}),
	})
	// Close waits for a fetch in flight (up to MaxWait): let it happen
	// after the partition is handed back.
	defer func() { go rd.Close() }()
	if err := rd.SetOffset(p.Offset); err != nil {
		w.log.Warn("seek partition", "partition", p.ID, "offset", p.Offset, "err", err)
		return
	}
	type step struct {
		msg kafka.Message
		d   decoded
	}
	steps := make(chan step)
	done := make(chan error, 1)
	defer close(steps)
	go func() {
		// A stop lets the steps finish within the grace period.
		sctx, cancel := graceContext(runCtx, w.cfg.Grace)
		defer cancel()
		for s := range steps {
			err := w.handle(sctx, s.msg, s.d, m.id, m.gpu)
			<-m.slots
			w.steps.Done()
			done <- err
		}
	}()
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 100*time.Millisecond, 5*time.Second, 0
	for {
		msg, err := rd.FetchMessage(fetchCtx)
		if err != nil {
			if fetchCtx.Err() != nil {
				return
			}
			d := bo.NextBackOff()
			w.log.Warn("fetch failed; retrying", "partition", p.ID, "err", err, "retry_in", d)
			select {
			case <-fetchCtx.Done():
				return
			case <-time.After(d):
			}
			continue
		}
		bo.Reset()
		d, act := w.decode(msg)
		if !act {
			// Not a trigger: nothing to run, and every earlier event of
			// the partition is finished (they are handled one at a time).
			w.stats.Skipped.Add(1)
			com.mark(p.ID, msg.Offset+1)
			continue
		}
		select {
		case m.slots <- struct{}{}:
		case <-fetchCtx.Done():
			return // not taken: the event stays uncommitted
		}
		if fetchCtx.Err() != nil {
			<-m.slots
			return
		}
		w.steps.Add(1)
		steps <- step{msg, d}
		select {
		case err := <-done:
			if err != nil {
				// Stopped while the database was unreachable, or released
				// past the grace: the event is delivered again.
				return
			}
			com.mark(p.ID, msg.Offset+1)
		case <-over:
			// A rebalance: the step goes on holding its run; the next owner
			// of the partition reads the event again and skips it.
			return
		}
	}
}

// graceContext returns a context that ends grace after parent ends.
func graceContext(parent context.Context, grace time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(parent))
	stop := context.AfterFunc(parent, func() {
		t := time.AfterFunc(grace, func() { cancel(errGraceOver) })
		context.AfterFunc(ctx, func() { t.Stop() })
	})
	return ctx, func() { stop(); cancel(context.Canceled) }
}

var errGraceOver = errors.New("worker stopping: the grace period is over")

// committer commits the offsets of one generation soon after they are
// marked, batching whatever was marked meanwhile.
// An offset is marked only once its event's step is complete in Postgres.
type committer struct {
	gen   *kafka.Generation
	topic string
	log   *slog.Logger

	mu      sync.Mutex // guards pending
	pending map[int]int64
	kick    chan struct{}

	commitMu sync.Mutex // one commit at a time, so an offset never goes back
}

func (c *committer) mark(partition int, next int64) {
	c.mu.Lock()
	if next > c.pending[partition] {
		c.pending[partition] = next
	}
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// commitLinger is how long the committer lets marks gather before a
// commit: a busy member then sends one commit for many events.
const commitLinger = 5 * time.Millisecond

// run commits marked offsets until the generation ends.
func (c *committer) run(gctx context.Context) {
	for {
		select {
		case <-gctx.Done():
			return
		case <-c.kick:
		}
		select {
		case <-gctx.Done():
			return // the last flush follows
		case <-time.After(commitLinger):
		}
		c.flush()
	}
}

// flush commits what is marked. A refused commit (the generation ended)
// only means the events are delivered again, and their claims skip them.
func (c *committer) flush() {
	c.commitMu.Lock()
	defer c.commitMu.Unlock()
	c.mu.Lock()
	offsets := c.pending
	c.pending = map[int]int64{}
	c.mu.Unlock()
	if len(offsets) == 0 {
		return
	}
	if err := c.gen.CommitOffsets(map[string]map[int]int64{c.topic: offsets}); err != nil {
		c.log.Debug("commit offsets refused; those events will be delivered again", "generation", c.gen.ID, "offsets", offsets, "err", err)
		c.mu.Lock()
		for p, off := range offsets {
			if _, newer := c.pending[p]; !newer {
				c.pending[p] = off
			}
		}
		c.mu.Unlock()
	}
}
