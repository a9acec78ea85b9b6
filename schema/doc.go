// Package schema is the bottom layer of jobstream: the Postgres objects it
// needs (the jobs table, the jobstream_runs ledger, the publication), the
// pipeline's step order, the Kafka topic names, and the change-event envelope
// that the reader writes and the workers read.
//
// Migrate is idempotent: it creates what is missing and reports each change it
// made, so running it against a user's existing jobs table only adds columns.
package schema
