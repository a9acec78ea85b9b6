package cdc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/jobstream/jobstream/schema"
)

// prepare makes sure the slot exists and can be streamed from, and returns
// the position to stream from. A slot whose initial snapshot never completed
// (the reader died during it) is dropped and created again, and the snapshot
// taken again: a snapshot is all or nothing. With RecreateSlot, the first
// session drops the slot and creates it again. A slot that existed before
// and is gone (dropped by hand, or lost) is created again, and the gap in
// the stream is reported (see reportGap).
func (r *Reader) prepare(ctx context.Context, s *stream) (pglogrepl.LSN, error) {
	slot, err := lookupSlot(ctx, s.lock, r.cfg.Slot)
	if err != nil {
		return 0, err
	}
	var gap *slotGap
	if slot == nil {
		if from := r.lastPosition(ctx, s); from > 0 {
			gap = &slotGap{from: from}
		}
	}
	if slot != nil && r.cfg.RecreateSlot && !r.recreated {
		from := max(slot.confirmed, r.cp.acked)
		r.log.Warn(fmt.Sprintf("dropping replication slot %s to create it again with a fresh snapshot, as RecreateSlot (--recreate-slot) asks: changes committed between its last confirmed position %s and the new slot's consistent point are not streamed; the snapshot re-reads every row's current state as op r events instead", r.cfg.Slot, from),
			"slot", r.cfg.Slot, "confirmed", from)
		if _, err := s.lock.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, r.cfg.Slot); err != nil {
			return 0, fmt.Errorf("drop replication slot %s: %w", r.cfg.Slot, err)
		}
		r.recreated = true
		slot, gap = nil, &slotGap{from: from, deliberate: true}
	}
	if slot != nil {
		if err := slot.usable(r.cfg.Slot, r.db); err != nil {
			return 0, fatal(err)
		}
		if slot.walStatus == "unreserved" {
			r.log.Warn("the slot retains more WAL than max_slot_wal_keep_size allows; Postgres invalidates it at the next checkpoint unless the reader catches up", "slot", r.cfg.Slot)
		}
		state, err := snapshotState(ctx, s.lock, r.cfg.Slot)
		if err != nil {
			return 0, err
		}
		if state == snapshotRunning {
			if r.cfg.Snapshot == SnapshotNever {
				r.log.Warn("the initial snapshot of this slot was interrupted; with Snapshot never (--snapshot never) it stays incomplete", "slot", r.cfg.Slot)
			} else {
				r.log.Warn("the initial snapshot of this slot was interrupted; dropping the slot to take the snapshot again", "slot", r.cfg.Slot)
				if _, err := s.lock.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, r.cfg.Slot); err != nil {
					return 0, fmt.Errorf("drop replication slot %s: %w", r.cfg.Slot, err)
				}
				slot = nil
			}
		}
	}
	if slot == nil {
		return r.createSlot(ctx, s, gap)
	}
	start := max(slot.confirmed, r.cp.acked)
	r.cp.setAcked(start)
	return start, nil
}

// slotGap is a stretch of WAL no slot streamed: from the old slot's last
// confirmed position known to the new slot's consistent point.
type slotGap struct {
	from       pglogrepl.LSN
	deliberate bool // RecreateSlot, not a lost slot
}

// lastPosition returns the last confirmed position known of a slot that no
// longer exists: what this process acknowledged, or what jobstream_slots
// recorded (the reader records its confirmed position there at every
// periodic status update, so the recorded one may trail the real one by a
// StatusInterval, which widens the gap reported, never narrows it). 0: the
// slot never existed as far as anyone knows.
func (r *Reader) lastPosition(ctx context.Context, s *stream) pglogrepl.LSN {
	from := r.cp.acked
	var recorded *string
	err := s.lock.QueryRow(ctx, `SELECT greatest(confirmed_lsn, consistent_lsn)::text FROM jobstream_slots WHERE slot_name = $1`, r.cfg.Slot).Scan(&recorded)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		// An older jobstream_slots without confirmed_lsn, or none at all.
		err = s.lock.QueryRow(ctx, `SELECT consistent_lsn::text FROM jobstream_slots WHERE slot_name = $1`, r.cfg.Slot).Scan(&recorded)
	}
	if err == nil && recorded != nil {
		if lsn, err := pglogrepl.ParseLSN(*recorded); err == nil {
			from = max(from, lsn)
		}
	}
	return from
}

// recordConfirmed notes in jobstream_slots the position last reported to
// Postgres as flushed, so that a reader that finds the slot gone can say
// where the gap starts. Failures (no such table or column, no privilege)
// only cost that precision.
func (s *stream) recordConfirmed(ctx context.Context, at pglogrepl.LSN) {
	if at == 0 || at == s.recordedConfirmed {
		return
	}
	if _, err := s.lock.Exec(ctx, `UPDATE jobstream_slots SET confirmed_lsn = $2::text::pg_lsn WHERE slot_name = $1`, s.cfg.Slot, at.String()); err != nil {
		s.log.Debug("cannot record the confirmed position in jobstream_slots", "err", err)
		return
	}
	s.recordedConfirmed = at
}

// reportGap says loudly that the changes committed in g (up to the new
// slot's consistent point at) were never streamed: an error log naming the
// LSN range, Stats.SlotGaps, and the range in jobstream_slots, which
// jobstream status shows.
func (r *Reader) reportGap(ctx context.Context, s *stream, g *slotGap, at pglogrepl.LSN) {
	r.stats.SlotGaps.Add(1)
	then := "the snapshot re-reads every row's current state as op r events, so every job's latest state is delivered, but the intermediate transitions in that range are missing from the topics"
	if r.cfg.Snapshot == SnapshotNever {
		then = "with Snapshot never nothing re-reads them: those changes are missing from the topics; restart with RecreateSlot (--recreate-slot) to take a snapshot"
	}
	if g.deliberate {
		r.log.Warn(fmt.Sprintf("replication slot %s created again: changes committed between %s and %s were not streamed; %s", r.cfg.Slot, g.from, at, then),
			"slot", r.cfg.Slot, "gap_from", g.from, "gap_to", at)
	} else {
		r.log.Error(fmt.Sprintf("replication slot %s was lost (it no longer exists; dropped by hand or by another tool) and has been created again: changes committed between %s (the old slot's last confirmed position) and %s (the new slot's consistent point) were never streamed; %s", r.cfg.Slot, g.from, at, then),
			"slot", r.cfg.Slot, "gap_from", g.from, "gap_to", at)
	}
	if _, err := s.lock.Exec(ctx, `UPDATE jobstream_slots SET gap_from_lsn = $2::text::pg_lsn, gap_to_lsn = $3::text::pg_lsn, gap_at = now()
		WHERE slot_name = $1`, r.cfg.Slot, g.from.String(), at.String()); err != nil {
		r.log.Warn("cannot record the gap in jobstream_slots (run jobstream migrate to add its gap columns)", "err", err)
	}
}

// Snapshot states recorded in jobstream_slots.
const (
	snapshotNone    = ""        // no row: the slot predates jobstream_slots, or another tool made it
	snapshotRunning = "running" // started, not completed
	snapshotDone    = "done"
)

// snapshotState reads what jobstream_slots says about slot's initial snapshot.
func snapshotState(ctx context.Context, conn *pgx.Conn, slot string) (string, error) {
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass('jobstream_slots') IS NOT NULL`).Scan(&exists); err != nil {
		return "", fmt.Errorf("look up jobstream_slots: %w", err)
	}
	if !exists {
		return snapshotNone, nil
	}
	var done bool
	err := conn.QueryRow(ctx, `SELECT completed_at IS NOT NULL FROM jobstream_slots WHERE slot_name = $1`, slot).Scan(&done)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return snapshotNone, nil
	case isPermissionDenied(err):
		return snapshotNone, nil
	case err != nil:
		return "", fmt.Errorf("read jobstream_slots: %w", err)
	case done:
		return snapshotDone, nil
	}
	return snapshotRunning, nil
}

// createSlot creates the slot through the replication protocol. With
// Snapshot initial it exports the snapshot consistent with the slot's start
// point, emits every row of it as a read event, waits until the broker
// acknowledged them all, and only then records the snapshot as complete.
func (r *Reader) createSlot(ctx context.Context, s *stream, gap *slotGap) (pglogrepl.LSN, error) {
	initial := r.cfg.Snapshot == SnapshotInitial
	recorded := false
	if initial {
		// Record the intent first: a crash at any later point leaves a row
		// without completed_at, and the next start takes the snapshot again.
		err := r.recordStart(ctx, s)
		switch {
		case isPermissionDenied(err):
			r.log.Warn("cannot record the initial snapshot in jobstream_slots: if this reader dies during the snapshot, the next one cannot tell, and the snapshot stays incomplete; grant the reader's role SELECT, INSERT, UPDATE on jobstream_slots",
				"slot", r.cfg.Slot, "err", err)
		case err != nil:
			return 0, err
		default:
			recorded = true
		}
	}
	action := "NOEXPORT_SNAPSHOT"
	if initial {
		action = "EXPORT_SNAPSHOT"
	}
	res, err := pglogrepl.CreateReplicationSlot(ctx, s.conn, r.cfg.Slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: action})
	if err != nil {
		return 0, fmt.Errorf("create replication slot %s: %w", r.cfg.Slot, err)
	}
	at, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return 0, fmt.Errorf("parse the slot's consistent point: %w", err)
	}
	r.log.Info("created replication slot", "slot", r.cfg.Slot, "consistent_point", at, "snapshot", r.cfg.Snapshot)
	r.markReady()
	r.cp.setAcked(at)
	if !initial {
		r.recordNever(ctx, s, at)
		if gap != nil {
			r.reportGap(ctx, s, gap, at)
		}
		return at, nil
	}
	if gap != nil {
		r.reportGap(ctx, s, gap, at)
	}
	started := time.Now()
	n, err := r.snapshot(ctx, s, res.SnapshotName, at)
	if err != nil {
		return 0, fmt.Errorf("initial snapshot: %w", err)
	}
	if recorded {
		if _, err := s.lock.Exec(ctx, `UPDATE jobstream_slots SET completed_at = now(), consistent_lsn = $2::text::pg_lsn, snapshot_rows = $3
			WHERE slot_name = $1`, r.cfg.Slot, at.String(), n); err != nil {
			return 0, fmt.Errorf("record the completed snapshot in jobstream_slots: %w", err)
		}
	}
	r.log.Info("initial snapshot complete", "slot", r.cfg.Slot, "rows", n, "took", time.Since(started).Round(time.Millisecond))
	return at, nil
}

// recordStart records in jobstream_slots that the slot's initial snapshot
// is starting, creating the table if an older migrate did not.
func (r *Reader) recordStart(ctx context.Context, s *stream) error {
	var exists bool
	if err := s.lock.QueryRow(ctx, `SELECT to_regclass('jobstream_slots') IS NOT NULL`).Scan(&exists); err != nil {
		return fmt.Errorf("look up jobstream_slots: %w", err)
	}
	if !exists {
		if _, err := s.lock.Exec(ctx, schema.SlotsSQL); err != nil {
			if isPermissionDenied(err) {
				return err
			}
			return fatal(fmt.Errorf("create table jobstream_slots, which records initial snapshots (%w); run jobstream migrate", err))
		}
	}
	_, err := s.lock.Exec(ctx, `INSERT INTO jobstream_slots (slot_name, snapshot) VALUES ($1, 'initial')
		ON CONFLICT (slot_name) DO UPDATE SET snapshot = 'initial', started_at = now(), completed_at = NULL, consistent_lsn = NULL, snapshot_rows = NULL`,
		r.cfg.Slot)
	if err != nil && !isPermissionDenied(err) {
		return fmt.Errorf("record the snapshot in jobstream_slots: %w", err)
	}
	return err
}

// isPermissionDenied reports whether Postgres refused err for lack of privilege.
func isPermissionDenied(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42501"
}

// recordNever notes in jobstream_slots, when that table exists, that the
// slot was created without a snapshot.
func (r *Reader) recordNever(ctx context.Context, s *stream, at pglogrepl.LSN) {
	_, err := s.lock.Exec(ctx, `INSERT INTO jobstream_slots (slot_name, snapshot, consistent_lsn, completed_at)
		VALUES ($1, 'never', $2::text::pg_lsn, now())
		ON CONFLICT (slot_name) DO UPDATE SET snapshot = 'never', started_at = now(), completed_at = now(), consistent_lsn = EXCLUDED.consistent_lsn, snapshot_rows = NULL`,
		r.cfg.Slot, at.String())
	if err != nil {
		r.log.Debug("cannot record the slot in jobstream_slots", "err", err)
	}
}

// isSlotBusy reports whether err says another process streams from the slot.
func isSlotBusy(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "55006"
}
