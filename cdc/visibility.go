package cdc

import (
	"context"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/jobstream/jobstream/schema"
)

// visibility holds a batch back until every transaction it carries is
// visible to new snapshots. Postgres writes a commit to the WAL, where
// logical decoding can read it, a moment before the committing backend
// makes it visible to other sessions; an event produced in that moment
// could reach a consumer that then queries the row and still sees it as it
// was before (a worker's compare-and-set claim would find nothing to claim).
// Checking costs one query per batch (schema.WaitVisible) whose
// transactions the last snapshot read did not already show.
type visibility struct {
	connect func(context.Context) (*pgx.Conn, error)
	conn    *pgx.Conn
	// last is the newest snapshot read, at lastAt: a committed transaction
	// visible in it stays visible, so the batches of a large transaction
	// after its first cost no query. It serves for a minute, far less than
	// the ids take to wrap around.
	last   string
	lastAt time.Time
}

// wait returns once the transactions of evs are visible, or ctx is done.
func (v *visibility) wait(ctx context.Context, evs []event, log func(error, time.Duration)) error {
	var xids []uint32
	for i := range evs {
		if x := evs[i].xid; x != 0 && (len(xids) == 0 || xids[len(xids)-1] != x) {
			xids = append(xids, x)
		}
	}
	if v.last != "" && time.Since(v.lastAt) < time.Minute {
		xids = slices.DeleteFunc(xids, func(x uint32) bool { return schema.VisibleIn(x, v.last) })
	}
	if len(xids) == 0 {
		return nil
	}
	_, err := schema.WaitVisible(ctx, xids, time.Time{}, func(ctx context.Context) (snap string, err error) {
		err = retry(ctx, func() error { return v.snapshot(ctx, &snap) }, log)
		if err == nil {
			v.last, v.lastAt = snap, time.Now()
		}
		return snap, err
	})
	return err
}

// snapshot reads the current snapshot into *snap, connecting first if
// needed; a failed query drops the connection for the next try.
func (v *visibility) snapshot(ctx context.Context, snap *string) error {
	if v.conn == nil {
		c, err := v.connect(ctx)
		if err != nil {
			return err
		}
		v.conn = c
	}
	err := v.conn.QueryRow(ctx, schema.SnapshotQuery).Scan(snap)
	if err != nil {
		v.close()
	}
	return err
}

func (v *visibility) close() {
	if v.conn != nil {
		v.conn.Close(context.Background())
		v.conn = nil
	}
}
