package schema

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"time"
)

// SnapshotQuery reads the snapshot that VisibleIn and WaitVisible test
// transactions against.
const SnapshotQuery = `SELECT pg_current_snapshot()::text`

// VisibleIn reports whether committed transaction xid is visible to the
// snapshot snap, as SnapshotQuery returns it ("xmin:xmax:xip,..." with
// 64-bit ids): it precedes xmax and is not in progress. Ids compare modulo
// 2^32, as Postgres compares them and as an envelope's source.txId carries
// them. An unparsable snapshot counts as visible, so that it never holds
// events back.
func VisibleIn(xid uint32, snap string) bool {
	parts := strings.SplitN(snap, ":", 3)
	if len(parts) != 3 {
		return true
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

// WaitVisible waits until every transaction of xids is visible to new
// snapshots, read by snapshot (which runs SnapshotQuery, retrying as its
// caller sees fit). Postgres writes a commit to the WAL, where logical
// decoding reads it, a moment before the committing backend makes it
// visible to other sessions: an event of that moment, acted on at once,
// could meet the row as it was before. The wait, when there is one, lasts
// microseconds: snapshots are read 50µs apart at first, at most 5ms apart.
//
// It returns the transactions still not visible when deadline passed (a
// zero deadline: none), nil once all are visible, or the error of snapshot
// or of ctx. It sorts and compacts xids in place.
func WaitVisible(ctx context.Context, xids []uint32, deadline time.Time, snapshot func(context.Context) (string, error)) ([]uint32, error) {
	slices.Sort(xids)
	xids = slices.Compact(xids)
	for pause := 50 * time.Microsecond; len(xids) > 0; pause = min(2*pause, 5*time.Millisecond) {
		snap, err := snapshot(ctx)
		if err != nil {
			return xids, err
		}
		if xids = slices.DeleteFunc(xids, func(x uint32) bool { return VisibleIn(x, snap) }); len(xids) == 0 {
			break
		}
		if !deadline.IsZero() && time.Now().After(deadline) {
			return xids, nil
		}
		select {
		case <-ctx.Done():
			return xids, context.Cause(ctx)
		case <-time.After(pause):
		}
	}
	return nil, nil
}
