package cdc

import (
	"github.com/jackc/pglogrepl"

	"github.com/jobstream/jobstream/schema"
)

// source is what an event's source block says about where it came from.
type source struct {
	tsMs     int64  // commit time (streaming) or read time (snapshot), ms since the epoch
	tsUs     int64  // the same in µs
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
// may keep them past routing.
type change struct {
	op     string // schema.OpCreate, OpUpdate, OpDelete or OpRead
	rel    *pglogrepl.RelationMessage
	before *pglogrepl.TupleData
	after  *pglogrepl.TupleData
	// oldFull says before is the whole old row (REPLICA IDENTITY FULL):
	// a delete's step is known.
	oldFull bool
	// fill, when not nil, is the whole old row, from which after's
	// unchanged TOASTed values are taken.
	fill *pglogrepl.TupleData
	src  source
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
