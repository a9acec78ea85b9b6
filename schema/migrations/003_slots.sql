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
