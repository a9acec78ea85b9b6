// Package cdc is jobstream's replication reader: it streams the write-ahead
// log of the jobs table through a logical replication slot (pgoutput),
// turns every change into a Debezium change event (the Postgres
// connector's envelope with schemas off, or with Config.Schemas in Kafka
// Connect's schema/payload form with Debezium's Connect schema), and
// produces it to the Kafka topic of the row's current step,
// <prefix>.<current_step>, keyed by job_id, partitioned by murmur2 as the
// Java client does, with acks=all.
//
// # Guarantees
//
//   - At least once. The flush position reported to Postgres is the end of
//     the last transaction whose every event the broker has acknowledged;
//     the received and the acknowledged positions are kept apart. A crash
//     at any moment (kill -9 included) restarts from the slot's confirmed
//     position: events after it are sent again, none is lost. The reader
//     reports acknowledged progress every 100ms or so, which bounds the
//     duplicates after a crash; a deliberate stop (SIGTERM) lets the batch
//     in flight land and reports its position first.
//   - Per key order. One job is one key, one key is one partition of a
//     topic, and events are produced in WAL (commit) order with at most one
//     batch in flight: per job, the events in a topic are in commit order;
//     after a restart the replayed events repeat that order.
//   - Bounded memory. Postgres sends a transaction when it commits; the
//     reader produces it in batches (MaxBatch events, MaxBatchBytes bytes)
//     while it arrives, holding at most two batches, so a transaction of a
//     million rows needs no more memory than a small one. The slot passes
//     its commit only when its last event is acknowledged.
//   - No linger. A batch goes as soon as the previous one is acknowledged,
//     so a quiet stream sends each event at once and a busy one sends large
//     batches.
//   - Read your event. An event reaches the broker only once its transaction
//     is visible to new snapshots (Postgres writes a commit to the WAL a
//     moment before it makes it visible), so a consumer that queries the row
//     on an event sees at least the state the event describes.
//   - Idle slots never pin WAL. With nothing in flight, server keepalives
//     move the acknowledged position to the server's WAL end; a keepalive
//     that asks for a reply gets one at once.
//   - One bad row never stalls the stream. A row that cannot be routed (a
//     current_step that is null, empty, no valid topic name, reserved (dlq,
//     replays) or not a step of Config.Pipeline: counted in
//     Stats.Unroutable too; no topic is ever created for it), encoded (text that
//     is not UTF-8), or produced (over the broker's message.max.bytes, which
//     the reader asks the broker for, or refused by the broker) goes to
//     <prefix>.dlq, keyed by job_id, with the reason in the value and in the
//     jobstream.reason header, and counts in Stats.DeadLetters.
//   - One active reader per slot. A reader holds an advisory lock on its
//     slot for as long as it runs; a second reader of the same slot waits as
//     a standby and takes over within about a second (StandbyPoll) when the
//     lock's connection ends, a killed process included.
//   - Reconnects. A lost connection to Postgres or the broker is retried
//     with capped exponential backoff; a configuration problem (wal_level,
//     REPLICATION privilege, a table with neither primary key nor replica
//     identity, a slot Postgres invalidated) stops Run with one sentence
//     naming the fix. An invalidated slot is never skipped silently: the
//     error says how to re-snapshot.
//   - The publication is checked at start, at every reconnect and at every
//     periodic status update (StatusInterval): it must exist, include the
//     jobs table and publish insert, update, delete and truncate, or Run
//     stops with one sentence naming the fix (ALTER PUBLICATION, jobstream
//     migrate). Postgres drops for good what a narrowed publication filters
//     out between the ALTER and the check. A slot whose WAL cannot be
//     decoded because its publication was dropped (and created again) stops
//     Run too, naming RecreateSlot (--recreate-slot) as the way out.
//   - A lost slot is a reported gap. A slot that existed (this process
//     streamed from it, or jobstream_slots knows it) and is gone is created
//     again with a fresh snapshot; the changes between the old slot's last
//     confirmed position and the new consistent point were never decoded:
//     the reader logs that LSN range at ERROR, counts it in Stats.SlotGaps
//     and records it in jobstream_slots. The snapshot delivers every row's
//     current state (op "r"); the transitions inside the gap are missing.
//
// # Events
//
// Inserts are op "c", updates "u", deletes "d", snapshot reads "r",
// truncates "t". Column values are rendered as Debezium renders them with
// its defaults (jsonb as a JSON string, timestamptz as ISO-8601, numeric as
// precise decimals); an unchanged TOASTed value the WAL does not carry is
// Debezium's __debezium_unavailable_value, unless the table has REPLICA
// IDENTITY FULL, whose old row supplies it. A tombstone follows each delete
// event unless NoTombstones. An update that changes job_id is, as
// Debezium's primary-key update, a delete of the old key (and its
// tombstone) with the new key in the schema.HeaderNewKey header, then a
// create of the new key with the old key in schema.HeaderOldKey.
//
// A delete goes to its step's topic when the WAL carries the row's step
// (REPLICA IDENTITY FULL, recommended); under the default identity the WAL
// carries only job_id, and the delete goes to every step topic of the
// prefix, its before holding, as Debezium's does, null in the nullable
// columns and in each NOT NULL one its DEFAULT as Debezium parses it (a
// function's placeholder: now() the epoch) or its type's fallback (0,
// false, "", the epoch: see absentValue),
// worked out from the catalog once per relation message. A truncate, which has no key, goes to every partition of every
// step topic of the prefix, so every job's partition sees it after the
// job's earlier events. The step topics are the pipeline's (Config.Pipeline)
// that the broker knows or this reader produced to; never the dead-letter or
// replay topic.
//
// # Initial snapshot
//
// With Snapshot "initial" (the default), when the slot does not exist the
// reader creates it through the replication protocol with an exported
// snapshot, reads every published table in a REPEATABLE READ transaction
// that imports that snapshot, and emits each row as op "r" (source.snapshot
// "first" for the first row, "last" for the last, "true" between, source.lsn
// the slot's consistent point). It then streams from the consistent point:
// every transaction committed before it is in the snapshot, every later one
// is streamed, none is in both. The snapshot counts as done only when the
// broker acknowledged all its events; jobstream_slots records that. A
// snapshot a crash interrupted is started over: the next reader drops the
// slot, creates it again and reads the table again (rows of the first
// attempt that reached the broker are duplicates). With Snapshot "never",
// only changes committed after the slot's creation are streamed. An existing
// slot is never snapshotted again; to re-snapshot, set RecreateSlot (or drop
// the slot), which reports the gap as for a lost slot.
//
// # Embedding
//
// The caller owns the resources: cdc.New(cdc.Config{Pool: pool, Brokers:
// ...}) runs the reader's ordinary queries (the checks at start, the
// initial snapshot) on the caller's *pgxpool.Pool and never closes it; the
// connections it holds for long (the slot's lock, the visibility wait) are
// opened with that pool's configuration, so they share its TLS and tracer,
// and the replication connection takes Config.Replication (a
// *pgconn.Config) or, by default, the same configuration with
// replication=database. Without Pool the reader opens a pool of its own
// from DatabaseURL and closes it when Run returns. New connects nothing;
// Run(ctx) streams until ctx ends. The jobstream reader command is such a
// caller; ops' Example_embed runs a reader and a worker on one pool.
//
// # Inside
//
// A straight chain, wired by Reader for each session: the stream (the
// replication connection, decoded into changes) hands each change to the
// router, which renders it and addresses it to its step topic or makes it a
// dead letter, without touching the network; the pipeline batches the events
// for the producer, which creates a topic the first time it produces to it;
// each batch the broker acknowledged goes to the checkpoint, whose
// acknowledged position is the only one the stream reports to Postgres.
// Events addressed to every step topic (a truncate, a delete whose step the
// WAL does not carry) are fanned out by the stream with the step topics it
// looks up through the producer.
package cdc
