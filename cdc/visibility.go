package cdc

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// visibility holds a batch back until every transaction it carries is
// visible to new snapshots. Postgres writes a commit to the WAL, where
// logical decoding can read it, a moment before the committing backend
// makes it visible to other sessions; an event produced in that moment
// could reach a consumer that then queries the row and still sees it as it
// was before (a worker's compare-and-set claim would find nothing to claim).
// Checking costs one query per batch; the wait, when there is one, lasts
// microseconds.
type visibility struct {
	url  string
	conn *pgx.Conn
}

// wait returns once the transactions of evs are visible, or ctx is done.
func (v *visibility) wait(ctx context.Context, evs []event, log func(error, time.Duration)) error {
	var xids []uint32
	for i := range evs {
		if x := evs[i].xid; x != 0 && (len(xids) == 0 || xids[len(xids)-1] != x) {
			xids = append(xids, x)
		}
	}
	if len(xids) == 0 {
		return nil
	}
	slices.Sort(xids)
	xids = slices.Compact(xids)
	pause := 50 * time.Microsecond
	for {
		var snap string
		err := retry(ctx, func() error {
			if v.conn == nil {
				cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
				defer cancel()
				c, err := pgx.Connect(cctx, v.url)
				if err != nil {
					return err
				}
				v.conn = c
			}
			err := v.conn.QueryRow(ctx, `SELECT pg_current_snapshot()::text`).Scan(&snap)
			if err != nil {
				v.close()
			}
			return err
		}, log)
		if err != nil {
			return err
		}
		xids = slices.DeleteFunc(xids, func(x uint32) bool { return visibleIn(x, snap) })
		if len(xids) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pause):
		}
		pause = min(2*pause, 5*time.Millisecond)
	}
}

func (v *visibility) close() {
	if v.conn != nil {
		v.conn.Close(context.Background())
		v.conn = nil
	}
}

// visibleIn reports whether committed transaction xid is visible to the
// snapshot snap ("xmin:xmax:xip,..." with 64-bit ids): it precedes xmax and
// is not in progress. Ids compare modulo 2^32, as Postgres compares them.
func visibleIn(xid uint32, snap string) bool {
	parts := strings.SplitN(snap, ":", 3)
	if len(parts) != 3 {
		return true // unparsable: do not hold the stream
	}
	xmax, err := strconv.ParseUint(parts[1], 10, 64)
	if err != nil {
		return true
	}
	if int32(xid-uint32(xmax)) >= 0 {
		return false
	}
	if parts[2] == "" {
		return true
	}
	for _, s := range strings.Split(parts[2], ",") {
		if x, err := strconv.ParseUint(s, 10, 64); err == nil && uint32(x) == xid {
			return false
		}
	}
	return true
}
