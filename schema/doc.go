// Package schema is the bottom layer of jobstream: the names, tables and
// wire format that the reader (cdc) and the workers (consumers) share, and
// no network code (Kafka connections live in schema/kafkaconn).
//
//   - Postgres: Migrate creates the jobs table, the jobstream_runs ledger,
//     jobstream_slots and the publication, idempotently: it creates what is
//     missing and reports each change it made, so running it against a
//     user's existing jobs table only adds columns. RolesSQL grants the
//     least privileges; VisibleIn and WaitVisible tell when a committed
//     transaction is visible to new snapshots, which both the reader
//     (before producing) and a worker (before trusting an empty claim) wait
//     for.
//   - Names: the Pipeline's step order, and Topics, which names every topic
//     and consumer group of a deployment from its prefix.
//   - Change events: Envelope is the value of every event the reader
//     writes (Debezium's envelope, schemas off; EnvelopeJSONSchema states
//     it), or its payload in Kafka Connect's schema/payload form (Unwrap,
//     AppendConnectEnvelopeSchema). The reader renders it straight into
//     bytes; a worker reads only
//     its Trigger with DecodeTrigger, a one-pass decoder held by its fuzz
//     test to encoding/json's result and error on any input.
//   - Dead letters: DeadLetter is the value of every record in the
//     dead-letter topic, whoever wrote it, with HeaderReason (and
//     HeaderStep) in its headers.
package schema
