-- jobstream_slots: one row per replication slot the reader created, saying whether
-- its initial snapshot completed. A row without completed_at is a snapshot a crash
-- interrupted: the reader drops the slot and takes the snapshot again.
CREATE TABLE IF NOT EXISTS jobstream_slots (
    slot_name      text PRIMARY KEY,
    snapshot       text NOT NULL,               -- initial | never
    consistent_lsn pg_lsn,                      -- where streaming starts after the snapshot
    snapshot_rows  bigint,                      -- rows the snapshot emitted
    started_at     timestamptz NOT NULL DEFAULT now(),
    completed_at   timestamptz                  -- null: the snapshot has not completed
);
-- The reader records the position it last confirmed (at each periodic status update),
-- so that a reader finding its slot gone can name where the gap starts; and the last
-- gap it found: the changes between gap_from_lsn (the old slot's last confirmed
-- position) and gap_to_lsn (the new slot's consistent point) were never streamed.
ALTER TABLE jobstream_slots ADD COLUMN IF NOT EXISTS confirmed_lsn pg_lsn;
ALTER TABLE jobstream_slots ADD COLUMN IF NOT EXISTS gap_from_lsn pg_lsn;
ALTER TABLE jobstream_slots ADD COLUMN IF NOT EXISTS gap_to_lsn pg_lsn;
ALTER TABLE jobstream_slots ADD COLUMN IF NOT EXISTS gap_at timestamptz;
