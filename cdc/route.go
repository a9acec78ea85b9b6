package cdc

import (
	"bytes"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/schema"
)

// router turns changes into the events to produce: each rendered as a
// Debezium envelope and addressed to the topic of its row's step, or made a
// dead letter. It is pure: it talks to no broker and creates no topic (the
// producer creates a topic the first time it produces to it). An event
// whose step the WAL does not carry (a delete without REPLICA IDENTITY
// FULL, a truncate) comes out addressed to every step topic (everyStep);
// fanOut addresses it to the step topics the caller looked up.
type router struct {
	topics     schema.Topics
	steps      []string // the pipeline's
	tombstones bool
	bareKey    bool // keys are the bare job_id, not Debezium's key struct
	maxMessage int  // the largest record the broker takes
	log        *slog.Logger
	head       *schema.SourceHead // the constant parts of the source block

	// render is the buffer an envelope is rendered in, reused from change
	// to change; stepTopic holds the topic of each step of the pipeline
	// seen (valid names only); routed the step topics events went to.
	render    []byte
	stepTopic map[string]string
	routed    map[string]bool

	// keyRel is the relation whose job_id column keyCol (-1: none) is, of
	// type keyOID/keyMod.
	keyRel *pglogrepl.RelationMessage
	keyCol int
	keyOID uint32
	keyMod int32

	// schemas writes keys and values in Kafka Connect's schema/payload
	// form; forms holds the form of each relation's events (see describe),
	// lastForm the one used last.
	schemas  bool
	forms    map[*pglogrepl.RelationMessage]*relForm
	lastForm *relForm
}

func newRouter(cfg *Config, db string, maxMessage int, log *slog.Logger) *router {
	return &router{
		topics:     schema.Topics{Prefix: cfg.TopicPrefix},
		steps:      cfg.Pipeline.Steps,
		tombstones: !cfg.NoTombstones,
		bareKey:    cfg.BareKey,
		maxMessage: maxMessage,
		log:        log,
		head:       schema.NewSourceHead(cfg.TopicPrefix, db),
		stepTopic:  map[string]string{},
		routed:     map[string]bool{},
		schemas:    cfg.Schemas,
		forms:      map[*pglogrepl.RelationMessage]*relForm{},
	}
}

// appendSource appends the envelope's source block.
func (rt *router) appendSource(v []byte, s *source) []byte {
	return rt.head.AppendSource(v, &schema.EventSource{TsMs: s.tsMs, TsUs: s.tsUs, Snapshot: s.snapshot, LastCommit: uint64(s.lastCommit),
		LSN: uint64(s.lsn), Schema: s.schema, Table: s.table, TxID: s.txID})
}

// route renders c as a Debezium envelope and appends the events it makes to
// evs: one to the topic of the row's step (and its tombstone after a
// delete), or one addressed to every step topic for a delete whose step the
// WAL does not carry, or a dead letter when the row cannot be routed or
// encoded.
func (rt *router) route(c *change, evs []event) []event {
	if c.op == schema.OpUpdate && rt.keyChanged(c) {
		return rt.routeKeyChange(c, evs)
	}
	key, step, bad, value := rt.renderChange(c)
	var reason, topic string
	unroutable := false
	switch missing := rt.formOf(c.rel).missing; {
	case missing != "" && (key == nil || step == nil && (c.op != schema.OpDelete || c.oldFull)):
		reason, unroutable = fmt.Sprintf("table %s.%s has no %s column (renamed or dropped?), which jobstream needs to key and route its events", c.rel.Namespace, c.rel.RelationName, missing), true
	case bad != "":
		reason = fmt.Sprintf("column %s holds bytes that are not valid UTF-8, so the row cannot be encoded as JSON; invalid bytes are shown as U+FFFD", bad)
	case key == nil:
		reason = "the row has no job_id, so the event has no key"
	case step == nil && c.op == schema.OpDelete && !c.oldFull:
		return append(evs, event{key: key, value: value, partition: -1, op: c.op[0], lsn: c.src.lsn, xid: c.src.xid(), everyStep: true})
	case step == nil:
		reason, unroutable = "current_step is null, so the row has no step topic", true
	default:
		topic, reason = rt.topicOf(step)
		unroutable = reason != ""
	}
	ev := event{topic: topic, key: key, value: value, partition: -1, op: c.op[0], lsn: c.src.lsn, xid: c.src.xid()}
	if reason == "" && ev.size()+batchOverhead > rt.maxMessage {
		reason, unroutable = fmt.Sprintf("event is %d bytes, over the broker's message limit of %d", ev.size()-recordOverhead, rt.maxMessage), false
	}
	if reason != "" {
		dl := rt.deadLetter(&ev, reason)
		dl.unroutable = unroutable
		return append(evs, dl)
	}
	rt.routed[topic] = true
	return rt.withTombstone(evs, ev)
}

// keyChanged reports whether update c changed the row's job_id: the old
// tuple (the key under REPLICA IDENTITY DEFAULT, which pgoutput sends only
// then; the whole row under FULL) holds another job_id than the new.
func (rt *router) keyChanged(c *change) bool {
	i := rt.keyColumn(c.rel)
	if c.before == nil || i < 0 || i >= len(c.before.Columns) || i >= len(c.after.Columns) {
		return false
	}
	old, now := c.before.Columns[i], c.after.Columns[i]
	if now.DataType == 'u' || old.DataType == 'u' { // an unchanged TOASTed value
		return false
	}
	return old.DataType != now.DataType || !bytes.Equal(old.Data, now.Data)
}

// routeKeyChange routes update c, which changed the row's job_id, as
// Debezium routes a primary-key update: a delete of the old key (and its
// tombstone), then a create of the new, so that each key's history in the
// topics ends or begins there and log compaction keeps only the new key.
// The delete and tombstone carry the new key in the __debezium.newkey
// header, the create the old key in __debezium.oldkey.
func (rt *router) routeKeyChange(c *change, evs []event) []event {
	del, cr := *c, *c
	del.op, del.after = schema.OpDelete, nil
	cr.op, cr.before, cr.oldFull = schema.OpCreate, nil, false
	n := len(evs)
	evs = rt.route(&del, evs)
	m := len(evs)
	evs = rt.route(&cr, evs)
	oldKey, newKey := keyOf(evs[n:m]), keyOf(evs[m:])
	for i := n; i < len(evs); i++ {
		if evs[i].op == 0 { // a dead letter: its header is its reason
			continue
		}
		h := kafka.Header{Key: schema.HeaderNewKey, Value: newKey}
		if i >= m {
			h = kafka.Header{Key: schema.HeaderOldKey, Value: oldKey}
		}
		evs[i].headers = append(evs[i].headers, h)
	}
	return evs
}

// keyOf returns the key of the first of evs that has one.
func keyOf(evs []event) []byte {
	for _, ev := range evs {
		if ev.key != nil {
			return ev.key
		}
	}
	return nil
}

// renderChange renders c and returns the row's job_id (the key), its
// current_step, the first column that is not valid UTF-8, and the envelope.
// Key and value share one allocation of their own.
func (rt *router) renderChange(c *change) (key, step []byte, bad string, value []byte) {
	v := rt.render[:0]
	rf := rt.formOf(c.rel)
	var cr *relForm // the Connect form's
	if rt.schemas {
		cr = rf
		v = append(v, cr.value...)
	}
	v = append(v, `{"before":`...)
	v, bID, bStep, bBad := appendRow(v, c.rel, c.before, nil, rf.absent)
	v = append(v, `,"after":`...)
	v, aID, aStep, aBad := appendRow(v, c.rel, c.after, c.fill, rf.absent)
	v = append(v, ',')
	v = rt.appendSource(v, &c.src)
	v = schema.AppendTail(v, c.op)
	if cr != nil {
		v = append(v, schema.ConnectClose...)
	}
	rt.render = v

	key, step, bad = aID, aStep, aBad
	if c.after == nil {
		key, step, bad = bID, bStep, bBad
	} else if bad == "" {
		bad = bBad
	}
	value = append([]byte(nil), v...)
	if key != nil && !rt.bareKey {
		key = rt.keyStruct(c.rel, key, cr)
	}
	if key != nil {
		if cap(value)-len(value) >= len(key) {
			n := len(value)
			value = append(value, key...)
			value, key = value[:n:n], value[n:]
		} else {
			key = append([]byte{}, key...)
		}
	}
	return key, step, bad, value
}

// keyStruct renders Debezium's key struct of a row whose job_id is id:
// {"job_id": <id as the row renders it>}, schemas off, or wrapped in the
// schema/payload form of cr when cr is not nil. The job_id column's type is
// looked up once per relation message, not per event.
func (rt *router) keyStruct(rel *pglogrepl.RelationMessage, id []byte, cr *relForm) []byte {
	rt.keyColumn(rel)
	var k []byte
	if cr != nil {
		k = append(make([]byte, 0, len(cr.key)+len(id)+17), cr.key...)
	} else {
		k = make([]byte, 0, len(id)+16)
	}
	k = append(k, `{"job_id":`...)
	k = appendValue(k, rt.keyOID, rt.keyMod, id)
	k = append(k, '}')
	if cr != nil {
		k = append(k, schema.ConnectClose...)
	}
	return k
}

// keyColumn returns the index of rel's job_id column (-1: none) and has
// keyOID/keyMod hold its type (text if it is missing), looked up once per
// relation message.
func (rt *router) keyColumn(rel *pglogrepl.RelationMessage) int {
	if rel != rt.keyRel {
		rt.keyRel, rt.keyCol, rt.keyOID, rt.keyMod = rel, -1, 25, -1
		for i, c := range rel.Columns {
			if c.Name == "job_id" {
				rt.keyCol, rt.keyOID, rt.keyMod = i, c.DataType, c.TypeModifier
				break
			}
		}
	}
	return rt.keyCol
}

// topicOf returns the topic of step, and why no step can take the row when
// none can.
func (rt *router) topicOf(step []byte) (topic, reason string) {
	if topic, ok := rt.stepTopic[string(step)]; ok {
		return topic, ""
	}
	topic = rt.topics.Step(string(step))
	if err := schema.ValidTopic(topic); err != nil {
		return topic, err.Error()
	}
	if reason = rt.stepProblem(string(step)); reason == "" {
		rt.stepTopic[string(step)] = topic // the pipeline's steps only: bounded
	}
	return topic, reason
}

// stepProblem says why no step can take a row whose current_step is step
// (a valid topic-name component), or "" when step is one of the pipeline's.
func (rt *router) stepProblem(step string) string {
	switch {
	case step == "":
		return "current_step is empty, so the row has no step topic"
	case reservedStep(step):
		return fmt.Sprintf("current_step %q is a reserved topic name (%s), which never takes change events", step, strings.Join(reservedSteps, ", "))
	case !slices.Contains(rt.steps, step):
		return fmt.Sprintf("current_step %q is not a step of the pipeline (%s), so no worker would ever take the row", step, strings.Join(rt.steps, ", "))
	}
	return ""
}

// opTombstone marks a tombstone among events (it is no envelope op).
const opTombstone = 'x'

// withTombstone appends ev and, when ev is a delete and tombstones are on,
// the tombstone that follows it: ev's key with a null value, in ev's topic
// and (by the key) partition, in the same transaction.
func (rt *router) withTombstone(evs []event, ev event) []event {
	evs = append(evs, ev)
	if ev.op != schema.OpDelete[0] || !rt.tombstones {
		return evs
	}
	return append(evs, event{topic: ev.topic, key: ev.key, headers: ev.headers, partition: ev.partition, op: opTombstone, lsn: ev.lsn, xid: ev.xid})
}

// truncate renders the event of a truncate (op "t"), addressed to every
// step topic.
func (rt *router) truncate(src *source) event { return rt.truncateOf(nil, src) }

// truncateOf renders the event of a truncate of rel (op "t"), addressed to
// every step topic; in the schema/payload form, with rel's envelope schema
// (Debezium's truncate event has its table's envelope: Envelope.truncate).
func (rt *router) truncateOf(rel *pglogrepl.RelationMessage, src *source) event {
	v := make([]byte, 0, 512)
	var cr *relForm
	if rt.schemas && rel != nil {
		cr = rt.formOf(rel)
		v = append(v, cr.value...)
	}
	v = append(v, `{"before":null,"after":null,`...)
	v = rt.appendSource(v, src)
	v = schema.AppendTail(v, schema.OpTruncate)
	if cr != nil {
		v = append(v, schema.ConnectClose...)
	}
	return event{value: v, partition: -1, op: schema.OpTruncate[0], lsn: src.lsn, xid: src.xid(), everyStep: true}
}

// stepTopics returns the step topics an event addressed to every step topic
// goes to: of listed (the broker's topics) and the topics this router sent
// events to, those of the pipeline's steps, sorted. Never the dead-letter
// or replay topic, nor the topic of a step no longer in the pipeline.
func (rt *router) stepTopics(listed []string) []string {
	ts := slices.Clone(listed)
	for t := range rt.routed {
		ts = append(ts, t)
	}
	steps := make(map[string]bool, len(rt.steps))
	for _, s := range rt.steps {
		steps[rt.topics.Step(s)] = true
	}
	slices.Sort(ts)
	ts = slices.Compact(ts)
	return slices.DeleteFunc(ts, func(t string) bool { return !steps[t] })
}

// fanOut appends the events of ev, addressed to every step topic, as sent
// to topics: with a key, one (and its tombstone) to the key's partition of
// each; without (a truncate), one to every partition of each (parts[i] of
// topics[i]), so each job's partition sees it after the job's earlier
// events. With no step topic, ev becomes a dead letter.
func (rt *router) fanOut(ev *event, topics []string, parts []int, evs []event) []event {
	if len(topics) == 0 {
		what := "a truncate of the table"
		if ev.op == schema.OpDelete[0] {
			what = "a delete whose step the WAL does not carry (REPLICA IDENTITY is not FULL)"
		}
		dl := event{key: ev.key, value: ev.value, partition: -1, op: ev.op, lsn: ev.lsn, xid: ev.xid}
		return append(evs, rt.deadLetter(&dl, what+" found no step topic to go to"))
	}
	for i, t := range topics {
		if ev.key != nil {
			evs = rt.withTombstone(evs, event{topic: t, key: ev.key, value: ev.value, headers: ev.headers, partition: -1, op: ev.op, lsn: ev.lsn, xid: ev.xid})
			continue
		}
		for p := range parts[i] {
			evs = append(evs, event{topic: t, value: ev.value, partition: int32(p), op: ev.op, lsn: ev.lsn, xid: ev.xid})
		}
	}
	return evs
}

// deadLetter turns ev into a record for the dead-letter topic, keyed by
// job_id, with the reason in a header and in the value. It is safe to call
// from any goroutine (the producer calls it too).
func (rt *router) deadLetter(ev *event, reason string) event {
	rt.log.Warn("dead letter", "job_id", schema.JobIDFromKey(ev.key), "lsn", ev.lsn, "topic", ev.topic, "reason", reason)
	return event{
		topic:     rt.topics.DLQ(),
		key:       ev.key,
		value:     deadLetterValue(reason, ev.topic, ev.lsn, ev.value, rt.maxMessage/2),
		headers:   []kafka.Header{{Key: schema.HeaderReason, Value: []byte(reason)}},
		partition: -1,
		reason:    reason,
		lsn:       ev.lsn,
		xid:       ev.xid,
	}
}
