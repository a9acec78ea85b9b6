// Package cdc is jobstream's replication reader: it streams the write-ahead
// log of the jobs table through a logical replication slot (pgoutput), turns
// every change into a Debezium-shaped change event, and produces it to the
// Kafka topic of the row's current step, keyed by job_id.
//
// Guarantees:
//   - At least once. The flush position reported to Postgres is the end of the
//     last transaction whose every event the broker has acknowledged
//     (acks=all). Received and acknowledged positions are kept apart, so a
//     crash at any moment restarts from the slot's confirmed position: some
//     events may be sent twice, none is lost.
//   - Per job, events reach a topic in commit order: one job is one key, one
//     key is one partition (murmur2, as the Java client), and batches are
//     written in WAL order with one writer.
//   - An idle jobs table never pins WAL: with nothing in flight, server
//     keepalives advance the acknowledged position to the server's WAL end.
//   - A row that cannot be routed (no current_step, a step that is no valid
//     topic name) goes to the dead-letter topic with the reason; the stream
//     moves on.
package cdc
