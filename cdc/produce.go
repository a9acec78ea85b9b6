package cdc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pglogrepl"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	metadataAPI "github.com/segmentio/kafka-go/protocol/metadata"

	"github.com/jobstream/jobstream/schema/kafkaconn"
)

// Record batch framing the broker counts against its message size limit:
// the v2 batch header, and a generous bound on one record's own framing.
const (
	batchOverhead  = 61
	recordOverhead = 40
)

// event is one Kafka record to produce.
type event struct {
	topic   string
	key     []byte
	value   []byte
	headers []kafka.Header
	// partition is the target partition, or -1 for the key's partition
	// (murmur2 of the key, as the Java client computes it).
	partition int32
	// op is the envelope's op ('c', 'u', 'd', 'r', 't'), or 0 for a dead letter.
	op byte
	// reason is why a dead letter is one.
	reason string
	// unroutable marks the dead letter of a row no step can take.
	unroutable bool
	// lsn is the WAL position of the change (for dead letters and logs).
	lsn pglogrepl.LSN
	// xid is the streamed transaction the event comes from (0: a snapshot read).
	xid uint32
	// everyStep marks an event the router addressed to every step topic
	// (topic ""): fanned out before it reaches the pipeline.
	everyStep bool
}

// size bounds the bytes the event takes in a record batch.
func (e *event) size() int {
	n := len(e.key) + len(e.value) + recordOverhead
	for _, h := range e.headers {
		n += len(h.Key) + len(h.Value) + 8
	}
	return n
}

// producer writes events to the broker with acks=all. Unlike kafka-go's
// Writer it never waits for a batch to fill: a call produces what it is
// given at once, one request per topic partition, all partitions in
// parallel, and returns when the broker has acknowledged every event.
type producer struct {
	client *kafka.Client
	broker kafkaconn.Broker
	log    *slog.Logger
	// newPartitions is the partition count of the topics it creates.
	newPartitions int
	// maxMessage is the largest record the broker takes (bytes, framing included).
	maxMessage int
	// deadLetter turns an event the broker refused into a dead letter.
	deadLetter func(ev *event, reason string) event

	mu      sync.Mutex
	parts   map[string]int  // topic → partition count
	created map[string]bool // topics created or seen to exist

	// addrs names the brokers in "cannot reach" logs.
	addrs string
	// downSince is when the broker was first found unreachable (Unix
	// nanoseconds; 0 while it answers), downLogged when that was last said.
	downSince, downLogged atomic.Int64
}

// brokerDownEvery is how often, at most, the reader repeats that it cannot
// reach the broker while it stays down.
const brokerDownEvery = 30 * time.Second

func newProducer(b kafkaconn.Broker, newPartitions int, log *slog.Logger) *producer {
	return &producer{
		broker:        b,
		newPartitions: newPartitions,
		created:       map[string]bool{},
		client: &kafka.Client{
			Addr:    kafka.TCP(b.Addrs...),
			Timeout: 10 * time.Second,
			Transport: &kafka.Transport{
				ClientID:    "jobstream-reader",
				MetadataTTL: 5 * time.Second,
				IdleTimeout: time.Minute,
				DialTimeout: 10 * time.Second,
				SASL:        b.SASL,
				TLS:         b.TLS,
			},
		},
		log:   log,
		parts: map[string]int{},
		addrs: strings.Join(b.Addrs, ","),
	}
}

// unreachable reports whether err says the broker could not be reached: a
// failed dial, or a connection that broke.
func unreachable(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, net.ErrClosed)
}

// brokerError returns err, or the dial error behind it: kafka-go's transport
// answers "topic not found" (or no partition, no leader) when it holds no
// metadata at all, which is what a broker it cannot reach looks like; its
// metadata cache then returns the failure that left it empty.
func (p *producer) brokerError(ctx context.Context, err error) error {
	if errors.Is(err, protocol.ErrNoTopic) || errors.Is(err, protocol.ErrNoPartition) || errors.Is(err, protocol.ErrNoLeader) {
		if _, merr := p.client.Metadata(ctx, &kafka.MetadataRequest{}); merr != nil && unreachable(merr) {
			return merr
		}
	}
	return err
}

// warnRetry logs a failed attempt that will be retried: msg with attrs, or,
// when the broker cannot be reached, that, once and then at most every
// brokerDownEvery however many attempts fail meanwhile.
func (p *producer) warnRetry(msg string, err error, next time.Duration, attrs ...any) {
	if !unreachable(err) {
		p.log.Warn(msg, append(attrs, "err", err, "retry_in", next)...)
		return
	}
	now := time.Now().UnixNano()
	p.downSince.CompareAndSwap(0, now)
	last := p.downLogged.Load()
	if last != 0 && now-last < int64(brokerDownEvery) || !p.downLogged.CompareAndSwap(last, now) {
		return
	}
	p.log.Warn("cannot reach the Kafka broker at "+p.addrs+"; retrying",
		"down_for", time.Duration(now-p.downSince.Load()).Round(time.Second), "err", err)
}

// reached notes that the broker answered; after an outage it says so.
func (p *producer) reached() {
	if p.downSince.Load() == 0 {
		return
	}
	if since := p.downSince.Swap(0); since != 0 {
		p.downLogged.Store(0)
		p.log.Info("the Kafka broker is reachable again", "broker", p.addrs,
			"down_for", time.Since(time.Unix(0, since)).Round(time.Second))
	}
}

// close releases the producer's connections and the metadata its transport
// holds; requests in flight finish on theirs.
func (p *producer) close() {
	if t, ok := p.client.Transport.(*kafka.Transport); ok {
		t.CloseIdleConnections()
	}
}

// messageLimit asks the broker for its message.max.bytes; 0 when it does not say.
func (p *producer) messageLimit(ctx context.Context) int {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	md, err := p.client.Metadata(ctx, &kafka.MetadataRequest{})
	if err != nil || len(md.Brokers) == 0 {
		return 0
	}
	res, err := p.client.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
		ResourceType: kafka.ResourceTypeBroker, ResourceName: strconv.Itoa(md.Brokers[0].ID), ConfigNames: []string{"message.max.bytes"},
	}}})
	if err != nil {
		return 0
	}
	for _, r := range res.Resources {
		for _, c := range r.ConfigEntries {
			if c.ConfigName == "message.max.bytes" {
				if n, err := strconv.Atoi(c.ConfigValue); err == nil && n > 0 {
					return n
				}
			}
		}
	}
	return 0
}

// partitions returns topic's partition count, cached.
func (p *producer) partitions(ctx context.Context, topic string) (int, error) {
	p.mu.Lock()
	n := p.parts[topic]
	p.mu.Unlock()
	if n > 0 {
		return n, nil
	}
	// AllowAutoTopicCreation makes kafka-go's transport ask the broker when
	// the topic is not in its cache yet (and refresh the cache), as its
	// Writer does; the reader has created the topic already.
	res, err := p.client.Transport.RoundTrip(ctx, p.client.Addr, &metadataAPI.Request{TopicNames: []string{topic}, AllowAutoTopicCreation: true})
	if err != nil {
		return 0, fmt.Errorf("look up partitions of %s: %w", topic, err)
	}
	for _, t := range res.(*metadataAPI.Response).Topics {
		if t.Name != topic {
			continue
		}
		if t.ErrorCode != 0 {
			return 0, fmt.Errorf("look up partitions of %s: %w", topic, kafka.Error(t.ErrorCode))
		}
		if n = len(t.Partitions); n > 0 {
			p.mu.Lock()
			p.parts[topic] = n
			p.mu.Unlock()
			return n, nil
		}
	}
	return 0, fmt.Errorf("look up partitions of %s: %w", topic, kafka.UnknownTopicOrPartition)
}

// forget drops topic's cached partition count.
func (p *producer) forget(topic string) {
	p.mu.Lock()
	delete(p.parts, topic)
	p.mu.Unlock()
}

// topicsWithPrefix lists the broker's topics named prefix + "." + something,
// as of the transport's metadata cache.
func (p *producer) topicsWithPrefix(ctx context.Context, prefix string) ([]string, error) {
	md, err := p.client.Metadata(ctx, &kafka.MetadataRequest{})
	if err != nil {
		return nil, fmt.Errorf("list topics: %w", err)
	}
	var out []string
	for _, t := range md.Topics {
		if t.Error == nil && strings.HasPrefix(t.Name, prefix+".") {
			out = append(out, t.Name)
		}
	}
	p.mu.Lock()
	for _, t := range out {
		p.created[t] = true
	}
	p.mu.Unlock()
	return out, nil
}

// listTopics is topicsWithPrefix, retried until it succeeds or ctx is done.
func (p *producer) listTopics(ctx context.Context, prefix string) ([]string, error) {
	var ts []string
	err := retry(ctx, func() error {
		var err error
		ts, err = p.topicsWithPrefix(ctx, prefix)
		return err
	}, func(err error, next time.Duration) {
		p.warnRetry("cannot list the step topics; retrying", err, next)
	})
	return ts, err
}

// partitionsOf returns the partition count of topic, which it creates
// first if it has not yet (the router may have sent events to it that are
// not produced yet).
func (p *producer) partitionsOf(ctx context.Context, topic string) (int, error) {
	if err := p.ensureTopic(ctx, topic); err != nil {
		return 0, err
	}
	return p.partitionsRetrying(ctx, topic)
}

// ensureTopic creates topic unless this producer created it or saw it exist.
func (p *producer) ensureTopic(ctx context.Context, t string) error {
	p.mu.Lock()
	ok := p.created[t]
	p.mu.Unlock()
	if ok {
		return nil
	}
	err := retry(ctx, func() error { return p.broker.EnsureTopics(ctx, p.newPartitions, t) }, func(err error, next time.Duration) {
		p.warnRetry("cannot create a topic; retrying", err, next, "topic", t)
	})
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.created[t] = true
	p.mu.Unlock()
	return nil
}

type topicPartition struct {
	topic     string
	partition int
}

// produce writes evs and returns once the broker acknowledged all of them,
// or ctx is done. Events of one topic partition are written in order, one
// request after the other; partitions are written in parallel. Failures are
// retried with capped exponential backoff for as long as ctx lasts. An event
// the broker refuses for its size or content is replaced by a dead letter
// (its op set to 0), so one bad row never stalls the stream.
// The first event to a topic the producer has not created or seen to exist
// creates it, so routing never waits for the broker.
func (p *producer) produce(ctx context.Context, evs []event) error {
	groups := map[topicPartition][]int{}
	var order []topicPartition
	var lastTopic string // and its partition count n, looked up once per run of events
	var n int
	for i := range evs {
		ev := &evs[i]
		if i == 0 || ev.topic != lastTopic {
			// The first event to a topic creates it.
			if err := p.ensureTopic(ctx, ev.topic); err != nil {
				return err
			}
			lastTopic, n = ev.topic, 0
		}
		part := int(ev.partition)
		if part < 0 {
			if n == 0 {
				var err error
				if n, err = p.partitionsRetrying(ctx, ev.topic); err != nil {
					return err
				}
			}
			part = int((murmur2(ev.key) & 0x7fffffff) % uint32(n))
		}
		tp := topicPartition{ev.topic, part}
		if _, ok := groups[tp]; !ok {
			order = append(order, tp)
		}
		groups[tp] = append(groups[tp], i)
	}
	if len(order) == 1 {
		return p.sendGroup(ctx, order[0], evs, groups[order[0]])
	}
	errs := make([]error, len(order))
	var wg sync.WaitGroup
	for gi, tp := range order {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[gi] = p.sendGroup(ctx, tp, evs, groups[tp])
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// partitionsRetrying looks up topic's partitions until it succeeds or ctx is done.
func (p *producer) partitionsRetrying(ctx context.Context, topic string) (int, error) {
	var n int
	err := retry(ctx, func() error {
		var err error
		n, err = p.partitions(ctx, topic)
		return err
	}, func(err error, next time.Duration) {
		p.warnRetry("cannot look up a topic's partitions; retrying", err, next, "topic", topic)
	})
	return n, err
}

// sendGroup writes the events idx of one topic partition, in order, in
// requests that each fit the broker's message limit.
func (p *producer) sendGroup(ctx context.Context, tp topicPartition, evs []event, idx []int) error {
	budget := max(p.maxMessage-batchOverhead, 1)
	for start := 0; start < len(idx); {
		end, bytes := start, 0
		for end < len(idx) && (end == start || bytes+evs[idx[end]].size() <= budget) {
			bytes += evs[idx[end]].size()
			end++
		}
		if err := p.sendChunk(ctx, tp, evs, idx[start:end]); err != nil {
			return err
		}
		start = end
	}
	return nil
}

// sendChunk writes one request's worth of events, retrying until the broker
// acknowledges it. When the broker refuses the request as too large, the
// chunk is split; a single event it refuses becomes a dead letter.
func (p *producer) sendChunk(ctx context.Context, tp topicPartition, evs []event, idx []int) error {
	return p.sendChunkOr(ctx, tp, evs, idx, false)
}

// sendChunkOr is sendChunk; insist retries even what the broker refuses.
func (p *producer) sendChunkOr(ctx context.Context, tp topicPartition, evs []event, idx []int, insist bool) error {
	var refused error
	err := retry(ctx, func() error {
		err := p.write(ctx, tp, evs, idx)
		if err == nil {
			p.reached()
			return nil
		}
		err = p.brokerError(ctx, err)
		if refusesRecord(err) && !insist {
			refused = err
			return backoff.Permanent(err)
		}
		var kerr kafka.Error
		switch {
		case errors.Is(err, kafka.UnknownTopicOrPartition) || errors.Is(err, kafka.NotLeaderForPartition) || errors.Is(err, kafka.LeaderNotAvailable):
			// The broker's view of the topic changed (a broker restarted
			// and reloaded it, or the partition's leader moved to another
			// broker): look its partitions up again, and drop the
			// transport's metadata, which names the old leader for up to
			// its MetadataTTL, so that the next attempt asks the cluster
			// where the leader is now.
			p.forget(tp.topic)
			p.close()
		case !errors.As(err, &kerr):
			// A network failure: the pooled connections may be dead (a
			// restarted broker); the next attempt dials afresh.
			p.close()
		}
		return err
	}, func(err error, next time.Duration) {
		p.warnRetry("broker did not acknowledge events; retrying", err, next, "topic", tp.topic, "partition", tp.partition,
			"events", len(idx))
	})
	if refused == nil {
		return err
	}
	if len(idx) > 1 {
		half := len(idx) / 2
		if err := p.sendChunk(ctx, tp, evs, idx[:half]); err != nil {
			return err
		}
		return p.sendChunk(ctx, tp, evs, idx[half:])
	}
	ev := &evs[idx[0]]
	if ev.op == 0 {
		// A dead letter refused in turn: send its reason alone; if even that
		// is refused, the dead-letter topic is misconfigured, and the reader
		// keeps trying, loudly, rather than lose the row.
		p.log.Error("the dead-letter topic refused a dead letter; sending its reason alone", "topic", ev.topic, "err", refused)
		ev.value = deadLetterValue(ev.reason+"; the broker refused the full dead letter: "+refused.Error(), ev.topic, ev.lsn, nil, 0)
		return p.sendChunkOr(ctx, tp, evs, idx, true)
	}
	dl := p.deadLetter(ev, fmt.Sprintf("the broker refused the event: %v", refused))
	n, err := p.partitionsRetrying(ctx, dl.topic)
	if err != nil {
		return err
	}
	dlp := int((murmur2(dl.key) & 0x7fffffff) % uint32(n))
	one := []event{dl}
	if err := p.sendChunk(ctx, topicPartition{dl.topic, dlp}, one, []int{0}); err != nil {
		return err
	}
	*ev = one[0]
	return nil
}

// refusesRecord reports whether the broker refused the records themselves,
// so that sending them again cannot succeed.
func refusesRecord(err error) bool {
	return errors.Is(err, kafka.MessageSizeTooLarge) || errors.Is(err, kafka.RecordListTooLarge) ||
		errors.Is(err, kafka.InvalidRecord) || errors.Is(err, kafka.InvalidMessage)
}

// write sends one produce request and returns the broker's verdict.
func (p *producer) write(ctx context.Context, tp topicPartition, evs []event, idx []int) error {
	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	res, err := p.client.Produce(rctx, &kafka.ProduceRequest{
		Topic:        tp.topic,
		Partition:    tp.partition,
		RequiredAcks: kafka.RequireAll,
		Records:      &records{evs: evs, idx: idx, now: time.Now()},
	})
	switch {
	case err != nil:
		return err
	case res.Error != nil:
		return res.Error
	}
	for _, e := range res.RecordErrors {
		return e
	}
	return nil
}

// records feeds events to a produce request.
type records struct {
	evs []event
	idx []int
	i   int
	now time.Time
	rec kafka.Record
}

// ReadRecord implements kafka.RecordReader.
func (r *records) ReadRecord() (*kafka.Record, error) {
	if r.i >= len(r.idx) {
		return nil, io.EOF
	}
	ev := &r.evs[r.idx[r.i]]
	r.i++
	r.rec = kafka.Record{Time: r.now, Headers: ev.headers}
	if ev.key != nil {
		r.rec.Key = kafka.NewBytes(ev.key)
	}
	if ev.value != nil {
		r.rec.Value = kafka.NewBytes(ev.value)
	}
	return &r.rec, nil
}

// retry runs op until it succeeds, returns a backoff.Permanent error, or ctx
// is done, waiting with capped exponential backoff (50ms doubling to 2s,
// randomised) in between.
func retry(ctx context.Context, op func() error, notify func(error, time.Duration)) error {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 50 * time.Millisecond
	bo.MaxInterval = 2 * time.Second
	bo.MaxElapsedTime = 0
	err := backoff.RetryNotify(func() error {
		err := op()
		if err != nil && ctx.Err() != nil {
			return backoff.Permanent(ctx.Err())
		}
		return err
	}, backoff.WithContext(bo, ctx), notify)
	var perm *backoff.PermanentError
	if errors.As(err, &perm) {
		return perm.Err
	}
	return err
}

// murmur2 is the Java client's hash of a record key (Utils.murmur2), so any
// Kafka client computes the same partition for a job.
func murmur2(data []byte) uint32 {
	const (
		seed uint32 = 0x9747b28c
		m           = 0x5bd1e995
		r           = 24
	)
	length := len(data)
	h := seed ^ uint32(length)
	length4 := length / 4
	for i := 0; i < length4; i++ {
		i4 := i * 4
		k := uint32(data[i4+0]) | uint32(data[i4+1])<<8 | uint32(data[i4+2])<<16 | uint32(data[i4+3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	extra := length % 4
	if extra >= 3 {
		h ^= uint32(data[(length & ^3)+2]) << 16
	}
	if extra >= 2 {
		h ^= uint32(data[(length & ^3)+1]) << 8
	}
	if extra >= 1 {
		h ^= uint32(data[length & ^3])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}
