// Package consumers runs jobstream's step workers: each is a member of the
// consumer group of one step, reads the topic of the step before it, and
// walks every job it is given through claim → run → complete → commit.
//
// Guarantees:
//   - At-least-once delivery, exactly one completion: an event may be
//     delivered twice (after a crash, a rebalance, a replay), but a step is
//     claimed by a compare-and-set on (current_step, status), so only one
//     claim of a (T, done) state succeeds; the others are skipped.
//   - The Kafka offset is committed only after the step's result and the
//     job's next state are committed to Postgres. A crash at any point
//     re-delivers the event; the claim decides whether it runs again.
//   - Fencing: a result is written only while its attempt still holds the run
//     (its jobstream_runs row is open). A run whose lease expired is closed by
//     the sweeper and the job rewound to (T, done), which re-delivers it
//     through the normal path; the late result of the fenced attempt is
//     discarded.
//   - Leases and heartbeats live in jobstream_runs, never on jobs, so a
//     heartbeat makes no change event.
//   - Per partition, events are handled one at a time in offset order, so a
//     job's transitions are seen in commit order.
package consumers
