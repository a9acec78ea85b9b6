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
// taken again: a snapshot is all or nothing.
func (s *stream) prepare(ctx context.Context) (pglogrepl.LSN, error) {
	r := s.r
	slot, err := lookupSlot(ctx, s.lock, r.cfg.Slot)
	if err != nil {
		return 0, err
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
				r.log.Warn("the initial snapshot of this slot was interrupted; with --snapshot never it stays incomplete", "slot", r.cfg.Slot)
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
		return s.createSlot(ctx)
	}
	start := max(slot.confirmed, r.acked)
	r.setAcked(start)
	return start, nil
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
func (s *stream) createSlot(ctx context.Context) (pglogrepl.LSN, error) {
	r := s.r
	initial := r.cfg.Snapshot == SnapshotInitial
	recorded := false
	if initial {
		// Record the intent first: a crash at any later point leaves a row
		// without completed_at, and the next start takes the snapshot again.
		err := s.recordStart(ctx)
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
	r.setAcked(at)
	if !initial {
		s.recordNever(ctx, at)
		return at, nil
	}
	started := time.Now()
	n, err := s.snapshot(ctx, res.SnapshotName, at)
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
func (s *stream) recordStart(ctx context.Context) error {
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
		s.r.cfg.Slot)
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
func (s *stream) recordNever(ctx context.Context, at pglogrepl.LSN) {
	_, err := s.lock.Exec(ctx, `INSERT INTO jobstream_slots (slot_name, snapshot, consistent_lsn, completed_at)
		VALUES ($1, 'never', $2::text::pg_lsn, now())
		ON CONFLICT (slot_name) DO UPDATE SET snapshot = 'never', started_at = now(), completed_at = now(), consistent_lsn = EXCLUDED.consistent_lsn, snapshot_rows = NULL`,
		s.r.cfg.Slot, at.String())
	if err != nil {
		s.r.log.Debug("cannot record the slot in jobstream_slots", "err", err)
	}
}

// isSlotBusy reports whether err says another process streams from the slot.
func isSlotBusy(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "55006"
}
