package cdc

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/schema"
)

// source is what an event's source block says about where it came from.
type source struct {
	tsMs     int64  // commit time (streaming) or read time (snapshot), ms since the epoch
	snapshot string // "false", or "first", "true", "last" in a snapshot
	txID     uint64
	// lastCommit is the commit LSN of the transaction before this one (0:
	// none yet); lsn is this event's position.
	lastCommit pglogrepl.LSN
	lsn        pglogrepl.LSN
	schema     string
	table      string
}

// xid returns the transaction to wait for before producing the event: the
// streamed one, none for a snapshot read.
func (s *source) xid() uint32 {
	if s.snapshot != "false" {
		return 0
	}
	return uint32(s.txID)
}

// change is one row change to render and route. The values of its tuples
// may be slices of the replication message they were decoded from: nothing
// may keep them past routeChange.
type change struct {
	op     string // schema.OpCreate, OpUpdate, OpDelete or OpRead
	rel    *pglogrepl.RelationMessage
	before *pglogrepl.TupleData
	after  *pglogrepl.TupleData
	// oldFull says before is the whole old row (REPLICA IDENTITY FULL):
	// unchanged TOASTed values of after are taken from it, and a delete's
	// step is known.
	oldFull bool
	src     source
}

// appendSource appends the envelope's source block.
func (r *Reader) appendSource(v []byte, s *source) []byte {
	if r.srcHead == nil || r.srcHead.DB() != r.db {
		r.srcHead = schema.NewSourceHead(r.cfg.TopicPrefix, r.db)
	}
	return r.srcHead.AppendSource(v, &schema.EventSource{TsMs: s.tsMs, Snapshot: s.snapshot, LastCommit: uint64(s.lastCommit),
		LSN: uint64(s.lsn), Schema: s.schema, Table: s.table, TxID: s.txID})
}

// routeChange renders c as a Debezium envelope and hands the events it makes
// to emit: one to the topic of the row's step, or one per step topic for a
// delete whose step the WAL does not carry, or a dead letter when the row
// cannot be routed or encoded.
func (r *Reader) routeChange(ctx context.Context, c *change, emit func(event) error) error {
	// Render into a buffer reused from change to change, then copy.
	v := r.render[:0]
	v = append(v, `{"before":`...)
	v, bID, bStep, bBad := appendRow(v, c.rel, c.before, nil)
	v = append(v, `,"after":`...)
	var fill *pglogrepl.TupleData
	if c.oldFull {
		fill = c.before
	}
	v, aID, aStep, aBad := appendRow(v, c.rel, c.after, fill)
	v = append(v, ',')
	v = r.appendSource(v, &c.src)
	v = schema.AppendTail(v, c.op)
	r.render = v

	key, step, bad := aID, aStep, aBad
	if c.after == nil {
		key, step, bad = bID, bStep, bBad
	} else if bad == "" {
		bad = bBad
	}
	// One allocation holds the event's value and key, both the event's own.
	value := append([]byte(nil), v...)
	if key != nil {
		if cap(value)-len(value) >= len(key) {
			n := len(value)
			value = append(value, key...)
			value, key = value[:n:n], value[n:]
		} else {
			key = append([]byte{}, key...)
		}
	}
	var reason, topic string
	unroutable := false
	switch {
	case bad != "":
		reason = fmt.Sprintf("column %s holds bytes that are not valid UTF-8, so the row cannot be encoded as JSON; invalid bytes are shown as U+FFFD", bad)
	case key == nil:
		reason = "the row has no job_id, so the event has no key"
	case step == nil && c.op == schema.OpDelete && !c.oldFull:
		return r.broadcast(ctx, c.op, key, value, &c.src, emit)
	case step == nil:
		reason, unroutable = "current_step is null, so the row has no step topic", true
	default:
		var ok bool
		if topic, ok = r.topics[string(step)]; !ok {
			topic = schema.Topics{Prefix: r.cfg.TopicPrefix}.Step(string(step))
			if err := schema.ValidTopic(topic); err != nil {
				reason, unroutable = err.Error(), true
			} else if reason, unroutable = r.stepProblem(string(step)), true; reason == "" {
				r.topics[string(step)] = topic // the pipeline's steps only: bounded
			}
		}
	}
	ev := event{topic: topic, key: key, value: value, partition: -1, op: c.op[0], lsn: c.src.lsn, xid: c.src.xid()}
	if reason == "" && ev.size()+batchOverhead > r.maxMessage {
		reason, unroutable = fmt.Sprintf("event is %d bytes, over the broker's message limit of %d", ev.size()-recordOverhead, r.maxMessage), false
	}
	if reason != "" {
		dl := r.deadLetter(&ev, reason)
		dl.unroutable = unroutable
		return emit(dl)
	}
	if err := r.ensureTopic(ctx, topic); err != nil {
		return err
	}
	return r.emitWithTombstone(ev, emit)
}

// stepProblem says why no step can take a row whose current_step is step
// (a valid topic-name component), or "" when step is one of the pipeline's.
func (r *Reader) stepProblem(step string) string {
	switch {
	case step == "":
		return "current_step is empty, so the row has no step topic"
	case reservedStep(step):
		return fmt.Sprintf("current_step %q is a reserved topic name (%s), which never takes change events", step, strings.Join(reservedSteps, ", "))
	case !slices.Contains(r.cfg.Pipeline.Steps, step):
		return fmt.Sprintf("current_step %q is not a step of the pipeline (%s), so no worker would ever take the row", step, strings.Join(r.cfg.Pipeline.Steps, ", "))
	}
	return ""
}

// opTombstone marks a tombstone among events (it is no envelope op).
const opTombstone = 'x'

// emitWithTombstone emits ev and, when ev is a delete and tombstones are on,
// the tombstone that follows it: ev's key with a null value, in ev's topic
// and (by the key) partition, in the same transaction.
func (r *Reader) emitWithTombstone(ev event, emit func(event) error) error {
	if err := emit(ev); err != nil || ev.op != schema.OpDelete[0] || r.cfg.NoTombstones {
		return err
	}
	return emit(event{topic: ev.topic, key: ev.key, partition: ev.partition, op: opTombstone, lsn: ev.lsn, xid: ev.xid})
}

// broadcast sends an event whose step is unknown to every step topic: with
// key, to the key's partition of each; without (a truncate), to every
// partition of each, so each job's partition sees it after the job's earlier
// events. With no step topic yet, it goes to the dead-letter topic.
func (r *Reader) broadcast(ctx context.Context, op string, key, v []byte, src *source, emit func(event) error) error {
	var topics []string
	err := retry(ctx, func() error {
		var err error
		topics, err = r.stepTopics(ctx)
		return err
	}, func(err error, next time.Duration) {
		r.prod.warnRetry("cannot list the step topics; retrying", err, next)
	})
	if err != nil {
		return err
	}
	if len(topics) == 0 {
		what := "a truncate of the table"
		if op == schema.OpDelete {
			what = "a delete whose step the WAL does not carry (REPLICA IDENTITY is not FULL)"
		}
		ev := event{key: key, value: v, partition: -1, op: op[0], lsn: src.lsn, xid: src.xid()}
		return emit(r.deadLetter(&ev, what+" found no step topic to go to"))
	}
	for _, t := range topics {
		if key != nil {
			if err := r.emitWithTombstone(event{topic: t, key: key, value: v, partition: -1, op: op[0], lsn: src.lsn, xid: src.xid()}, emit); err != nil {
				return err
			}
			continue
		}
		var n int
		err := retry(ctx, func() error {
			var err error
			n, err = r.prod.partitions(ctx, t)
			return err
		}, func(err error, next time.Duration) {
			r.prod.warnRetry("cannot look up a topic's partitions; retrying", err, next, "topic", t)
		})
		if err != nil {
			return err
		}
		for p := range n {
			if err := emit(event{topic: t, value: v, partition: int32(p), op: op[0], lsn: src.lsn, xid: src.xid()}); err != nil {
				return err
			}
		}
	}
	return nil
}

// routeTruncate emits op "t" for a truncate of rel.
func (r *Reader) routeTruncate(ctx context.Context, rel *pglogrepl.RelationMessage, src *source, emit func(event) error) error {
	v := make([]byte, 0, 512)
	v = append(v, `{"before":null,"after":null,`...)
	v = r.appendSource(v, src)
	v = schema.AppendTail(v, schema.OpTruncate)
	return r.broadcast(ctx, schema.OpTruncate, nil, v, src, emit)
}

// deadLetter turns ev into a record for the dead-letter topic, keyed by
// job_id, with the reason in a header and in the value.
func (r *Reader) deadLetter(ev *event, reason string) event {
	r.log.Warn("dead letter", "job_id", string(ev.key), "lsn", ev.lsn, "topic", ev.topic, "reason", reason)
	return event{
		topic:     schema.Topics{Prefix: r.cfg.TopicPrefix}.DLQ(),
		key:       ev.key,
		value:     deadLetterValue(reason, ev.topic, ev.lsn, ev.value, r.maxMessage/2),
		headers:   []kafka.Header{{Key: schema.HeaderReason, Value: []byte(reason)}},
		partition: -1,
		reason:    reason,
		lsn:       ev.lsn,
		xid:       ev.xid,
	}
}

// deadLetterValue renders the reader's dead letter: the reason, the topic
// the event was meant for, its LSN, and the event itself when it is under
// limit bytes.
func deadLetterValue(reason, topic string, lsn pglogrepl.LSN, event []byte, limit int) []byte {
	l := schema.DeadLetter{Reason: reason, Topic: topic, LSN: uint64(lsn)}
	if len(event) > 0 && len(event) < limit {
		l.Event = event
	}
	return l.Encode()
}

// ensureTopic creates topic if this reader has not produced to it yet.
func (r *Reader) ensureTopic(ctx context.Context, t string) error {
	if r.known[t] {
		return nil
	}
	err := retry(ctx, func() error { return r.broker.EnsureTopics(ctx, r.cfg.Partitions, t) }, func(err error, next time.Duration) {
		r.prod.warnRetry("cannot create a topic; retrying", err, next, "topic", t)
	})
	if err != nil {
		return err
	}
	r.known[t] = true
	return nil
}
