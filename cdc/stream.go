package cdc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/jobstream/jobstream/schema"
)

// statusMinGap is the shortest time between two standby status updates
// that report progress: the slot follows acknowledgements this closely.
const statusMinGap = 100 * time.Millisecond

// stream is one replication session: the source of the chain. It decodes
// the replication stream into changes, has the router turn each into
// events, fans out those addressed to every step topic, and hands them to
// the pipeline; it reports the checkpoint's positions to Postgres.
type stream struct {
	cfg   *Config
	log   *slog.Logger
	stats *Stats
	conn  *pgconn.PgConn // the replication connection
	lock  *pgx.Conn      // holds the slot's advisory lock
	route *router
	// topics looks up the step topics an event addressed to every step
	// topic goes to (the producer).
	topics brokerTopics
	pl     *pipeline
	cp     *checkpoint
	// check checks the publication on the lock's connection.
	check func(ctx context.Context) error

	rels     map[uint32]*pglogrepl.RelationMessage
	evs, fan []event // reused from change to change

	// The open transaction.
	inTx       bool
	txID       uint32
	commitTime time.Time
	lastCommit pglogrepl.LSN

	lastStatus   time.Time
	lastReported pglogrepl.LSN
	// recordedConfirmed is the position last recorded in jobstream_slots.
	recordedConfirmed pglogrepl.LSN

	// Receiving. The replication connection's read deadline is when the next
	// status update is due; it is set only when that changes (readDeadline is
	// the one set). wake interrupts a receive at once, from any goroutine, by
	// moving the deadline into the past (the producer calls it when a batch
	// lands, an AfterFunc when ctx is done); interrupted tells the main loop
	// to set its deadline again. Receiving with no context of its own spares
	// pgconn a context watcher, and the loop a deadline context, per message.
	readDeadline time.Time
	interrupted  atomic.Bool
	wake         func()

	rows rowDecoder
}

// run streams from start until the connection fails or ctx is done.
func (s *stream) run(ctx context.Context, start pglogrepl.LSN) error {
	err := pglogrepl.StartReplication(ctx, s.conn, s.cfg.Slot, start, pglogrepl.StartReplicationOptions{
		Mode:       pglogrepl.LogicalReplication,
		PluginArgs: []string{"proto_version '1'", "publication_names '" + s.cfg.Publication + "'"},
	})
	switch {
	case isSlotLost(err):
		return fatal(slotLost(s.cfg.Slot))
	case err != nil:
		return fmt.Errorf("start replication: %w", err)
	}
	s.log.Info("streaming", "slot", s.cfg.Slot, "from", start)
	s.pl.whileWaiting = func() error { return s.maybeSendStatus(ctx, false) }
	netConn := s.conn.Conn()
	s.wake = func() {
		netConn.SetReadDeadline(time.Unix(1, 0)) //nolint:errcheck // a closed connection needs no waking
		// After the deadline: once receive sees the flag, the past deadline
		// is set, and its own deadline replaces it.
		s.interrupted.Store(true)
	}
	defer context.AfterFunc(ctx, s.wake)()

	for {
		if err := s.pl.poll(); err != nil {
			return err
		}
		if err := s.maybeSendStatus(ctx, false); err != nil {
			return err
		}
		msg, err := s.receive(ctx)
		if err != nil {
			return err
		}
		switch msg := msg.(type) {
		case nil: // a deadline passed or the producer woke us
		case *pgproto3.CopyData:
			if err := s.handleCopyData(ctx, msg.Data); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			err := pgconn.ErrorResponseToPgError(msg)
			if isSlotLost(err) {
				return fatal(slotLost(s.cfg.Slot))
			}
			return err
		case *pgproto3.CopyDone:
			return errors.New("the server ended the replication stream")
		default:
			s.log.Debug("unexpected replication message", "type", fmt.Sprintf("%T", msg))
		}
	}
}

// receive waits for the next replication message until a status update is
// due or the batch in flight is acknowledged (then it returns nil, nil).
func (s *stream) receive(ctx context.Context) (pgproto3.BackendMessage, error) {
	deadline := s.lastStatus.Add(s.cfg.StatusInterval)
	if soon := s.lastStatus.Add(statusMinGap); s.cp.acked > s.lastReported && soon.Before(deadline) {
		deadline = soon
	}
	// Set the deadline before publishing wake and before looking at ctx and
	// the flight: a wake this overwrites came after the flight finished or
	// ctx was done, which the checks below then see.
	if s.interrupted.Swap(false) || !deadline.Equal(s.readDeadline) {
		if err := s.conn.Conn().SetReadDeadline(deadline); err != nil {
			return nil, fmt.Errorf("receive: %w", err)
		}
		s.readDeadline = deadline
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if f := s.pl.inflight; f != nil {
		f.wake.Store(&s.wake)
		defer f.wake.Store(nil)
		if f.finished() {
			return nil, nil
		}
	}
	msg, err := s.conn.ReceiveMessage(context.Background())
	switch {
	case err == nil:
		return msg, nil
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case errors.Is(err, os.ErrDeadlineExceeded) && !s.conn.IsClosed():
		// The deadline passed or wake was called. pgconn keeps a message it
		// was part way through for the next call.
		return nil, nil
	}
	return nil, fmt.Errorf("receive: %w", err)
}

func (s *stream) handleCopyData(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		pkm, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("parse keepalive: %w", err)
		}
		s.stats.ServerLSN.Store(uint64(pkm.ServerWALEnd))
		s.cp.setReceived(pkm.ServerWALEnd)
		// Everything the server sent before this keepalive has been read;
		// with no transaction open and nothing unacknowledged, the slot may
		// move to the server's position, so an idle table never pins WAL.
		if !s.inTx && s.pl.idle() {
			s.cp.setAcked(pkm.ServerWALEnd)
		}
		if pkm.ReplyRequested {
			s.stats.KeepaliveReplies.Add(1)
			return s.maybeSendStatus(ctx, true)
		}
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("parse XLogData: %w", err)
		}
		s.cp.setReceived(xld.WALStart)
		return s.handleWAL(ctx, xld)
	}
	return nil
}

func (s *stream) handleWAL(ctx context.Context, xld pglogrepl.XLogData) error {
	if d := xld.WALData; len(d) > 0 && (d[0] == 'I' || d[0] == 'U' || d[0] == 'D') {
		// Rows, nearly all of the stream: decoded in place, the tuples valid
		// until the next receive.
		m, ok := s.rows.decode(d)
		if !ok {
			// One change we cannot read must not stop the stream.
			ev := event{partition: -1, lsn: xld.WALStart}
			return s.pl.add(s.route.deadLetter(&ev, fmt.Sprintf("the pgoutput %q message is malformed and cannot be decoded", d[0])))
		}
		switch m.op {
		case 'I':
			return s.change(ctx, xld.WALStart, schema.OpCreate, m.relID, nil, m.new, false)
		case 'U':
			return s.change(ctx, xld.WALStart, schema.OpUpdate, m.relID, m.old, m.new, m.oldType == pglogrepl.UpdateMessageTupleTypeOld)
		default:
			return s.change(ctx, xld.WALStart, schema.OpDelete, m.relID, m.old, nil, m.oldType == pglogrepl.DeleteMessageTupleTypeOld)
		}
	}
	msg, err := parsePgoutput(xld.WALData)
	if err != nil {
		return fmt.Errorf("decode pgoutput message at %s: %w", xld.WALStart, err)
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		s.rels[m.RelationID] = m
		if !skipTable(m.RelationName) {
			// The form of the relation's events (its Connect schema, what
			// a NOT NULL column left null renders as), once per relation
			// message: NOT NULL and defaults come from the catalog.
			facts, err := lookupColumns(ctx, s.lock, m.Namespace, m.RelationName)
			if err != nil {
				return err
			}
			if rf := s.route.describe(m, facts); rf.missing != "" {
				s.log.Error(fmt.Sprintf("table %s.%s has no %s column (renamed or dropped?): its changes go to the dead-letter topic until it has one again", m.Namespace, m.RelationName, rf.missing),
					"slot", s.cfg.Slot)
			}
		}
	case *pglogrepl.BeginMessage:
		s.inTx, s.txID, s.commitTime = true, m.Xid, m.CommitTime
		s.pl.inTx = true
	case *pglogrepl.CommitMessage:
		s.inTx = false
		s.lastCommit = m.CommitLSN
		s.stats.Transactions.Add(1)
		return s.pl.commit(m.TransactionEndLSN, s.commitTime)
	case *pglogrepl.TruncateMessage:
		for _, id := range m.RelationIDs {
			rel, ok := s.rels[id]
			if !ok {
				return fmt.Errorf("truncate of unknown relation %d at %s", id, xld.WALStart)
			}
			if skipTable(rel.RelationName) {
				continue
			}
			src := s.source(rel, xld.WALStart)
			if err := s.fanOut(ctx, s.route.truncateOf(rel, &src)); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *stream) source(rel *pglogrepl.RelationMessage, lsn pglogrepl.LSN) source {
	return source{tsMs: s.commitTime.UnixMilli(), tsUs: s.commitTime.UnixMicro(), snapshot: "false", txID: uint64(s.txID), lastCommit: s.lastCommit,
		lsn: lsn, schema: rel.Namespace, table: rel.RelationName}
}

// change routes one decoded row change.
func (s *stream) change(ctx context.Context, lsn pglogrepl.LSN, op string, relID uint32, before, after *pglogrepl.TupleData, oldFull bool) error {
	rel, ok := s.rels[relID]
	if !ok {
		return fmt.Errorf("change for unknown relation %d at %s", relID, lsn)
	}
	if skipTable(rel.RelationName) {
		return nil
	}
	c := change{op: op, rel: rel, before: before, after: after, oldFull: oldFull, src: s.source(rel, lsn)}
	if oldFull {
		c.fill = before
	}
	return s.routeChange(ctx, &c)
}

// routeChange has the router turn c into events and hands them on.
func (s *stream) routeChange(ctx context.Context, c *change) error {
	s.evs = s.route.route(c, s.evs[:0])
	defer clear(s.evs) // drop references to values
	for i := range s.evs {
		var err error
		if s.evs[i].everyStep {
			err = s.fanOut(ctx, s.evs[i])
		} else {
			err = s.pl.add(s.evs[i])
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// brokerTopics is what fanning out asks of the broker: its topics with a
// prefix, and a topic's partition count. Both retry until ctx is done.
type brokerTopics interface {
	listTopics(ctx context.Context, prefix string) ([]string, error)
	partitionsOf(ctx context.Context, topic string) (int, error)
}

// fanOut hands on ev, addressed to every step topic, to each step topic the
// broker has or the router sent events to: to every partition of each when
// ev has no key (a truncate).
func (s *stream) fanOut(ctx context.Context, ev event) error {
	listed, err := s.topics.listTopics(ctx, s.route.topics.Prefix)
	if err != nil {
		return err
	}
	topics := s.route.stepTopics(listed)
	var parts []int
	if ev.key == nil {
		for _, t := range topics {
			n, err := s.topics.partitionsOf(ctx, t)
			if err != nil {
				return err
			}
			parts = append(parts, n)
		}
	}
	s.fan = s.route.fanOut(&ev, topics, parts, s.fan[:0])
	defer clear(s.fan)
	for i := range s.fan {
		if err := s.pl.add(s.fan[i]); err != nil {
			return err
		}
	}
	return nil
}

// maybeSendStatus reports the positions to Postgres when due, when the
// acknowledged position moved and statusMinGap passed, or when forced (a
// keepalive asked for a reply). On the periodic update it also checks that
// the connection holding the slot's lock is alive.
func (s *stream) maybeSendStatus(ctx context.Context, force bool) error {
	since := time.Since(s.lastStatus)
	due := since >= s.cfg.StatusInterval
	if !force && !due && !(since >= statusMinGap && s.cp.acked > s.lastReported) {
		return nil
	}
	err := pglogrepl.SendStandbyStatusUpdate(ctx, s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: max(s.cp.received, s.cp.acked),
		WALFlushPosition: s.cp.acked,
		WALApplyPosition: s.cp.acked,
	})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	s.lastStatus = time.Now()
	s.lastReported = s.cp.acked
	if due {
		// The publication check doubles as the check that the connection
		// holding the slot's lock is alive. A publication changed under a
		// running reader (ALTER PUBLICATION ... SET (publish = 'insert'))
		// stops it within a StatusInterval (Postgres filters the changes
		// committed after the ALTER out of the stream for good).
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := s.check(pctx); err != nil {
			var fe *fatalError
			if errors.As(err, &fe) {
				return err
			}
			return fmt.Errorf("lost the connection that holds the slot's lock: %w", err)
		}
		s.recordConfirmed(pctx, s.lastReported)
	}
	return nil
}
