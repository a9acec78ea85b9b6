// Package admin holds what an operator asks of a running jobstream, as Go
// functions returning structs: the `jobstream` command formats their results
// as text or JSON, and a web console may call them the same way.
//
//   - Status: the reader's slot (and any gap it recorded), each step's
//     consumer group with its members and lag per partition, runs of the
//     last hour, jobs per (current_step, status), expired leases, dead
//     letters written and owed.
//   - Audit: a job's whole history from the topics, in commit (LSN) order,
//     with the runs that made it and each replay shown as its rewind.
//   - Replay: find the jobs that finished a step's trigger in its topic
//     over a range (or a list of jobs, or All) and rewind them through
//     consumers.Rewind so the step runs again; DryRun returns the plan.
//   - ResetOffsets: move a step's consumer group while it has no members.
//   - Cancel and Prune: cancel jobs; delete old finished runs.
//   - Kafka: the broker admin client they share (offsets, committed
//     positions, group members, reading one partition).
//
// Every function takes a context and its resources explicitly (a
// *pgxpool.Pool, a *Kafka) with an options struct whose fields document
// their defaults, each embedding the Deployment (pipeline and topic prefix)
// it looks at; it neither parses flags nor prints. Errors in the options
// name the options' fields, match a sentinel (ErrNoScope, ErrBadBound, ...)
// under errors.Is, and satisfy IsInvalid, so a command line can say the
// same in terms of its flags.
//
// Guarantees: Status and Audit only read. Replay changes a job only through
// consumers.Rewind, one job at a time, in one statement that fences any open
// attempt and checks the job is still in the state it was seen in (a job
// that moved meanwhile is skipped, SkipMoved); a running job is rewound only
// with Force. Each rewind is recorded as a ReplayMark in the replay topic
// after the rewinds: if that write fails the jobs stay rewound and the error
// says so. A replay of the same range may be run again: each run is a new
// attempt chain. ResetOffsets refuses a group with live members.
package admin
