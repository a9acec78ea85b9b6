package consumers

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
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

// Worker is one process's share of the consumer groups of its steps: one
// membership per step (one per GPU with GPUs), all sharing a Postgres pool,
// one Kafka connection and the slots.
type Worker struct {
	cfg   Config
	log   *slog.Logger
	parts []*stepWorker // one per step, by step name
	slots []chan struct{}
	stats Stats
	ready chan struct{}
	// embedded: the brokers are jobstream's embedded broker, whose group
	// coordinator the stall watchdog guards against; real Kafka needs none.
	embedded bool
}

// stepWorker is the worker of one step: its group membership, its store,
// and the runs it holds. The Worker that runs it fills in the shared parts
// (stats, stop, stopping, joining, dialer, transport, dlq) before it runs.
type stepWorker struct {
	cfg       Config // Step and Handler set to this step's
	log       *slog.Logger
	trigger   string
	topic     string
	group     string
	brokers   []string
	dialer    *kafka.Dialer
	transport *kafka.Transport
	store     *store
	dlq       *kafka.Writer
	stats     *Stats
	slots     []chan struct{}     // the Worker's: one per GPU, or one of Concurrency
	batch     BatchHandler        // the step's, if it is batched (then it runs in lanes)
	lanes     map[string]*laneSet // a batched step's lanes, by member GPU ("" without GPUs)
	steps     sync.WaitGroup      // every step this worker has in hand
	stopping  <-chan struct{}     // closed when Run's ctx ends
	joining   *sync.WaitGroup     // members that have not had a generation yet

	rejoinMu sync.Mutex
	// rebalancingSince is when the stall watchdog first saw the group in
	// the rebalance it is in now (zero: not in one); only it touches it.
	rebalancingSince time.Time
	rejoinCh         chan struct{} // closed to make every member rejoin

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
	w := &Worker{cfg: cfg, log: cfg.Logger, ready: make(chan struct{})}
	// A lane holds up to Batch jobs: they wait in its queue for the next batch.
	if len(cfg.GPUs) == 0 {
		w.slots = []chan struct{}{make(chan struct{}, cfg.Concurrency*cfg.Batch)}
	}
	for range cfg.GPUs {
		w.slots = append(w.slots, make(chan struct{}, cfg.Batch))
	}
	steps, batched := cfg.steps(), cfg.batchSteps()
	for _, step := range cfg.allSteps() {
		scfg := cfg
		scfg.Step, scfg.Handler, scfg.Steps = step, steps[step], nil
		scfg.BatchHandler, scfg.BatchSteps = batched[step], nil
		trigger, _ := cfg.Pipeline.Trigger(step)
		topics := schema.Topics{Prefix: cfg.TopicPrefix}
		w.parts = append(w.parts, &stepWorker{
			cfg:     scfg,
			log:     cfg.Logger.With("step", step),
			trigger: trigger,
			topic:   topics.Step(trigger),
			group:   topics.Group(step),
			brokers: cfg.Brokers,
			stats:   &w.stats,
			slots:   w.slots,
			batch:   batched[step],
		})
	}
	return w, nil
}

// Ready is closed once the worker has reached Postgres and the broker and
// every one of its members, of every step, has joined its group and been
// given its partitions: from then on, a new trigger event is acted on at
// once.
func (w *Worker) Ready() <-chan struct{} { return w.ready }

// Stats returns the worker's live counters, all its steps together.
func (w *Worker) Stats() *Stats { return &w.stats }

// Run joins the consumer group of each step with one member per GPU, or one
// member running up to Config.Concurrency steps at once, and handles events
// until ctx is done. Then it takes no new event, gives running steps
// Config.Grace to finish (past it their runs are released), commits the
// offsets of what finished, and leaves the groups. A deliberate stop
// returns nil. It closes the pool only if it opened it (Config.Pool unset).
func (w *Worker) Run(ctx context.Context) (err error) {
	parent := ctx
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	// A schema error found while running stops the worker like a stop
	// does, and is what Run returns.
	defer func() {
		if cause := context.Cause(ctx); parent.Err() == nil && errors.Is(cause, ErrSchema) {
			err = cause
		}
	}()
	closeAll, err := w.start(ctx, stop)
	if err != nil {
		if ctx.Err() != nil {
			return nil // a stop while starting is a stop, not a failure to start
		}
		return err
	}
	defer closeAll()
	err = w.serve(ctx)
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		err = nil
	}
	if err == nil {
		w.log.Info("worker stopped", "claims", w.stats.Claims.Load(), "completions", w.stats.Completions.Load(),
			"released", w.stats.Released.Load())
	}
	return err
}

// start reaches the broker and Postgres, creates the topics, checks the
// schema and hands every step its share of the connections. closeAll
// closes what start opened.
func (w *Worker) start(ctx context.Context, stop context.CancelCauseFunc) (closeAll func(), err error) {
	b := kafkaconn.Broker{Addrs: w.cfg.Brokers, SASL: w.cfg.SASL, TLS: w.cfg.TLS}
	if t := w.cfg.Transport; t != nil {
		b.SASL, b.TLS = t.SASL, t.TLS // the start-up checks speak as the caller's transport
	}
	dialer, transport := cmp.Or(w.cfg.Dialer, b.Dialer()), cmp.Or(w.cfg.Transport, b.Transport())
	if err := b.Ping(ctx, 10*time.Second); err != nil {
		return nil, err
	}
	w.embedded = b.ClusterID(ctx, 10*time.Second) == kafkaconn.EmbeddedClusterID
	if err := b.EnsureTopics(ctx, w.cfg.Partitions, w.topics()...); err != nil {
		return nil, err
	}
	pool, closePool, err := w.openPool(ctx)
	if err != nil {
		return nil, err
	}
	dlq := &kafka.Writer{
		Addr:         kafka.TCP(w.cfg.Brokers...),
		Topic:        schema.Topics{Prefix: w.cfg.TopicPrefix}.DLQ(),
		Balancer:     &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll,
		BatchTimeout: time.Millisecond,
		Transport:    transport,
	}
	closeAll = func() { dlq.Close(); closePool() }
	joining := &sync.WaitGroup{}
	for _, s := range w.parts {
		if s.store, err = newStore(ctx, pool, s.cfg.Step, s.trigger, s.cfg.Lease); err != nil {
			closeAll()
			return nil, err
		}
		s.dialer, s.transport, s.dlq, s.stop, s.stopping, s.joining = dialer, transport, dlq, stop, ctx.Done(), joining
	}
	return closeAll, nil
}

// topics returns the topics the worker needs: each step's trigger topic,
// the topic its own transitions land on (the next step's trigger), and the
// dead-letter topic.
func (w *Worker) topics() []string {
	names := schema.Topics{Prefix: w.cfg.TopicPrefix}
	topics := []string{names.DLQ()}
	for _, s := range w.parts {
		topics = append(topics, s.topic, names.Step(s.cfg.Step))
	}
	slices.Sort(topics)
	return slices.Compact(topics)
}

// openPool returns Config.Pool, or a pool of the worker's own opened from
// DatabaseURL, once it answers and has jobstream's tables; closePool
// closes only a pool the worker opened.
func (w *Worker) openPool(ctx context.Context) (pool *pgxpool.Pool, closePool func(), err error) {
	pool, closePool = w.cfg.Pool, func() {}
	if pool == nil {
		pcfg, err := pgxpool.ParseConfig(w.cfg.DatabaseURL)
		if err != nil {
			return nil, nil, fmt.Errorf("parse DATABASE_URL: %w", err)
		}
		// A claim or completion per slot, a renewal per run in hand, and per
		// step the sweeper, the watcher and the stall watchdog.
		slots := 0
		for _, s := range w.slots {
			slots += cap(s)
		}
		pcfg.MaxConns = int32(min(2*slots+3*len(w.parts)+1, 64))
		if pool, err = pgxpool.NewWithConfig(ctx, pcfg); err != nil {
			return nil, nil, fmt.Errorf("connect to Postgres: %w", err)
		}
		closePool = pool.Close
	}
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = pool.Ping(pctx)
	cancel()
	if err == nil {
		err = checkSchema(ctx, pool)
	} else {
		err = schema.PostgresUnreachable(err)
	}
	if err != nil {
		closePool()
		return nil, nil, err
	}
	return pool, closePool, nil
}

// serve runs every step's members, sweeper, watcher and stall watchdog
// until ctx ends or one of them fails, then waits for the steps in hand.
func (w *Worker) serve(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	// The lanes outlive gctx until the steps in hand are done.
	laneCtx, stopLanes := context.WithCancel(context.WithoutCancel(ctx))
	var lanes sync.WaitGroup
	defer lanes.Wait()
	defer stopLanes()
	var all []*member
	for _, s := range w.parts {
		members := s.members()
		for _, m := range members {
			if m.lanes != nil {
				lanes.Add(1)
				go func() { defer lanes.Done(); m.lanes.run(laneCtx) }()
			}
		}
		all = append(all, members...)
		s.log.Info("worker started", "topic", s.topic, "group", s.group, "members", len(members), "slots", s.slotCount())
		g.Go(func() error { return s.sweepLoop(gctx) })
		if w.embedded {
			g.Go(func() error { return s.watchStalls(gctx) })
		}
		g.Go(func() error { return s.watchLoop(gctx) })
	}
	if !w.embedded && w.cfg.StallTimeout >= 0 {
		w.log.Info("stall watchdog off: the brokers are not jobstream's embedded broker, whose group coordinator it guards against")
	}
	joining := w.parts[0].joining
	joining.Add(len(all))
	go func() {
		joining.Wait()
		close(w.ready)
	}()
	for _, m := range all {
		g.Go(func() error { return m.run(gctx) })
	}
	err := g.Wait()
	// Steps a rebalance detached from their partition finish (or are
	// released) within the grace period too.
	for _, s := range w.parts {
		s.steps.Wait()
	}
	return err
}

// members returns one member per GPU, or one member with Concurrency
// slots, each slot shared with the Worker's other steps.
// A batched step's member gets its lanes: one per GPU, or Concurrency.
func (w *stepWorker) members() []*member {
	var out []*member
	if len(w.cfg.GPUs) == 0 {
		out = []*member{{w: w, id: w.cfg.WorkerID + "/0", slots: w.slots[0]}}
	}
	for i, gpu := range w.cfg.GPUs {
		out = append(out, &member{w: w, id: w.cfg.WorkerID + "/" + strconv.Itoa(i) + "/gpu" + gpu, gpu: gpu, slots: w.slots[i]})
	}
	if w.batch != nil {
		w.lanes = map[string]*laneSet{}
		for _, m := range out {
			m.lanes = w.newLaneSet(m.gpu, cap(m.slots)/w.cfg.Batch)
			w.lanes[m.gpu] = m.lanes
		}
	}
	return out
}

// slotCount returns how many steps the worker runs at once.
func (w *stepWorker) slotCount() int {
	n := 0
	for _, s := range w.slots {
		n += cap(s)
	}
	return n
}

// member is one consumer-group member. In each generation it reads every
// partition it was assigned on its own goroutine, one event at a time per
// partition in offset order, and runs up to cap(slots) steps at once; the
// slots outlive generations, so a GPU member never runs two steps at once.
type member struct {
	w      *stepWorker
	id     string // the worker name written into jobstream_runs
	gpu    string
	slots  chan struct{}
	lanes  *laneSet // a batched step's lanes; nil for a Handler
	joined func()   // called at every generation; the first marks the member joined
}

// rebalanceTimeout is how long the coordinator waits for the members to
// join again at a rebalance.
const rebalanceTimeout = 30 * time.Second

// groupTimeouts derives the group's session timeout from the lease: a dead
// member's partitions move on before its runs' leases expire, so a rewound
// job is claimed at once. 6s is Kafka's smallest allowed session timeout.
func (w *stepWorker) groupTimeouts() (session, heartbeat time.Duration) {
	session = min(max(w.cfg.Lease, 6*time.Second), 10*time.Second)
	return session, session / 10
}

func (m *member) run(ctx context.Context) error {
	var joined sync.Once
	m.joined = func() { joined.Do(m.w.joining.Done) }
	defer m.joined() // a member that stops before joining does not hold Ready back
	for {
		if !m.waitLanes(ctx) {
			return nil
		}
		stopped, err := m.membership(ctx, m.rejoinSignal(ctx))
		if err != nil || stopped {
			return err
		}
		m.w.log.Info("rejoining the consumer group", "member", m.id)
	}
}

// waitLanes returns once the member can run its step (a lane is ready), so
// that a member whose serve processes are still loading, or down, is no
// member of the group and claims nothing; false when ctx ended first.
func (m *member) waitLanes(ctx context.Context) bool {
	if m.lanes == nil {
		return true
	}
	if ok, _ := m.lanes.ready(); ok {
		return true
	}
	m.w.log.Info("waiting for a serve process to say ready before joining the group", "member", m.id)
	if !m.lanes.waitReady(ctx) {
		return false
	}
	m.w.log.Info("serve process ready; joining the group", "member", m.id)
	return true
}

// rejoinSignal is closed when the stall watchdog asks for a rejoin or,
// for a batched step, when none of the member's lanes is ready any more.
func (m *member) rejoinSignal(ctx context.Context) <-chan struct{} {
	rejoin := m.w.rejoinSignal()
	if m.lanes == nil {
		return rejoin
	}
	out := make(chan struct{})
	go func() {
		defer close(out)
		for {
			ok, changed := m.lanes.ready()
			if !ok {
				m.w.log.Warn("no serve process of this member is ready; leaving the group so other members take the work", "member", m.id)
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-rejoin:
				return
			case <-changed:
			}
		}
	}()
	return out
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
		Brokers:           w.brokers,
		Dialer:            w.dialer,
		Topics:            []string{w.topic},
		HeartbeatInterval: heartbeat,
		SessionTimeout:    session,
		RebalanceTimeout:  rebalanceTimeout,
		// kafka-go gives a join Timeout + RebalanceTimeout. The embedded
		// broker (kfake) restarts its wait for the members (up to the
		// rebalance timeout) at every join: with the default 5s, a join
		// gave up while another member's later join had pushed the wait
		// further, and leaving and joining again pushed it again, with
		// the members taking turns forever while a member that never
		// joins again (one killed mid-join) held the group. A join that
		// outlasts a second whole wait lets the wait run out.
		Timeout:          rebalanceTimeout,
		JoinGroupBackoff: time.Second,
		StartOffset:      kafka.FirstOffset,
		Logger:           kafka.LoggerFunc(debug),
		ErrorLogger:      kafka.LoggerFunc(debug),
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
			// A coordinator that moved to another broker between the
			// lookup and the join (NOT_COORDINATOR) is as routine on a
			// cluster as a rebalance: the next join looks it up again.
			if errors.Is(err, kafka.RebalanceInProgress) || errors.Is(err, kafka.UnknownMemberId) || errors.Is(err, kafka.IllegalGeneration) ||
				errors.Is(err, kafka.NotCoordinatorForGroup) {
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
func (w *stepWorker) own(partitions []int, d int) {
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
func (w *stepWorker) owns(p int) bool {
	w.ownedMu.Lock()
	defer w.ownedMu.Unlock()
	return w.owned[p] > 0
}

// partition handles the events of one partition in offset order until
// fetchCtx ends or the generation is over. Events that are not triggers are
// skipped in place; steps run on a goroutine of their own (runSteps), so
// that a rebalance can detach the step in flight instead of waiting for it.
func (m *member) partition(fetchCtx, runCtx context.Context, over <-chan struct{}, p kafka.PartitionAssignment, com *committer) {
	w := m.w
	rd := w.partitionReader(p.ID)
	// Close waits for a fetch in flight (up to MaxWait): let it happen
	// after the partition is handed back.
	defer func() { go rd.Close() }()
	if err := rd.SetOffset(p.Offset); err != nil {
		w.log.Warn("seek partition", "partition", p.ID, "offset", p.Offset, "err", err)
		return
	}
	steps, done := m.runSteps(runCtx)
	defer close(steps)
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 100*time.Millisecond, 5*time.Second, 0
	for {
		msg, ok := w.fetch(fetchCtx, rd, p.ID, bo)
		if !ok {
			return
		}
		d, act := w.decode(msg)
		if !act {
			// Not a trigger: nothing to run, and every earlier event of
			// the partition is finished (they are handled one at a time).
			w.stats.Skipped.Add(1)
			com.mark(p.ID, msg.Offset+1)
			continue
		}
		if !m.dispatch(fetchCtx, over, steps, done, queued{msg, d}) {
			return
		}
		com.mark(p.ID, msg.Offset+1)
	}
}

// partitionReader returns a reader of partition p of the trigger topic.
func (w *stepWorker) partitionReader(p int) *kafka.Reader {
	return kafka.NewReader(kafka.ReaderConfig{
		Brokers:        w.brokers,
		Dialer:         w.dialer,
		Topic:          w.topic,
		Partition:      p,
		MinBytes:       1,
		MaxBytes:       10 << 20,
		MaxWait:        time.Second,
		ReadBackoffMin: 50 * time.Millisecond,
		ReadBackoffMax: time.Second,
		QueueCapacity:  256,
		Logger:         kafka.LoggerFunc(func(string, ...any) {}),
		ErrorLogger: kafka.LoggerFunc(func(msg string, args ...any) {
			w.log.Debug(fmt.Sprintf(msg, args...), "partition", p)
		}),
	})
}

// fetch returns the partition's next event, retrying with backoff bo while
// fetching fails; ok is false once ctx ends.
func (w *stepWorker) fetch(ctx context.Context, rd *kafka.Reader, p int, bo backoff.BackOff) (msg kafka.Message, ok bool) {
	for {
		msg, err := rd.FetchMessage(ctx)
		if err == nil {
			bo.Reset()
			return msg, true
		}
		if ctx.Err() != nil {
			return msg, false
		}
		d := bo.NextBackOff()
		w.log.Warn("fetch failed; retrying", "partition", p, "err", err, "retry_in", d)
		select {
		case <-ctx.Done():
			return msg, false
		case <-time.After(d):
		}
	}
}

// queued is an event handed to a partition's step goroutine.
type queued struct {
	msg kafka.Message
	d   decoded
}

// runSteps starts the goroutine that runs a partition's steps one after
// another (its stack, grown by the first, serves the next), each handed in
// on steps with a slot taken; it reports each outcome on done and ends
// once steps is closed. A stop lets the steps finish within the grace
// period.
func (m *member) runSteps(runCtx context.Context) (steps chan<- queued, done <-chan error) {
	w := m.w
	in, out := make(chan queued), make(chan error, 1)
	go func() {
		sctx, cancel := graceContext(runCtx, w.cfg.Grace)
		defer cancel()
		for q := range in {
			err := w.handle(sctx, q.msg, q.d, m.id, m.gpu)
			<-m.slots
			w.steps.Done()
			out <- err
		}
	}()
	return in, out
}

// dispatch runs q's step once a slot is free and reports whether it
// finished, so that its offset may be committed. It is false when the
// partition must stop: fetchCtx ended before a slot was free (the event
// stays uncommitted), the step asked for the event to be delivered again,
// or the generation is over (a rebalance: the step goes on holding its
// run; the next owner of the partition reads the event again and skips it).
func (m *member) dispatch(fetchCtx context.Context, over <-chan struct{}, steps chan<- queued, done <-chan error, q queued) bool {
	select {
	case m.slots <- struct{}{}:
	case <-fetchCtx.Done():
		return false
	}
	if fetchCtx.Err() != nil {
		<-m.slots
		return false
	}
	m.w.steps.Add(1)
	steps <- q
	select {
	case err := <-done:
		// An error: stopped while the database was unreachable, or
		// released past the grace; the event is delivered again.
		return err == nil
	case <-over:
		return false
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
