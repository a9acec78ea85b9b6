// Command bench measures jobstream against the physical limit and the
// alternatives users weigh it against, side by side in one run on one
// machine, and prints one table (and writes BENCHMARKS.md). `make bench`
// runs it; `go run ./ops/bench -h` lists its flags.
//
// It starts its own throwaway Postgres (ops/localpg, wal_level=logical) and,
// per scenario, a fresh embedded broker (`jobstream broker`, ops/broker) in
// its own process, and runs, each in a database of its own:
//
//  1. CDC throughput: the same changes (mixed inserts and updates of
//     realistic rows) decoded by pg_recvlogical with pgoutput to /dev/null
//     from one slot, and streamed by the reader (cdc.Reader) from another
//     until the broker acknowledged them all; the ratio of the two rates.
//  2. Trigger latency: commit of (img_gen, done) → the next step's handler
//     starting, at a steady rate, for jobstream (reader + a vlm_analyze
//     worker with an in-process handler), a LISTEN/NOTIFY trigger, a polling
//     loop and the floor (a bare pglogrepl client receiving the change).
//  3. Loss under disconnect: the same three alternatives with their
//     listener or worker away for a while in the middle of the run.
//  4. Pipeline throughput: jobs/s through the four steps with no-op
//     handlers (each step's worker in its own process), against the same
//     claim/complete SQL in a tight loop with no CDC and no Kafka.
//  5. Memory: peak RSS (VmHWM) of a `jobstream reader` process during one
//     large transaction, and of the worker processes of scenario 4.
//  6. The Go micro-benchmarks of the repository (go test -bench).
//  7. GPU step modes: exec, serve and serve --batch with a stand-in model.
//  8. The web console: the pipeline with and without it open, and its
//     jobs pages on a million rows.
//  9. Pipeline peers: the four steps through jobstream, River, LISTEN/NOTIFY
//     workers, polling workers and the database alone: jobs/s of a batch,
//     the handoff latency at a paced rate, CPU per job by process, and the
//     jobs lost while the first step's worker is away.
//  10. Transaction shape: one transaction of 100,000 and of 1,000,000
//     updates, pg_recvlogical against the reader.
//  11. How cost grows: the pipeline at 1,000, 10,000 and 100,000 jobs
//     (-long: a backlog of 1,000,000): jobs/s, CPU, peak RSS, the WAL the
//     slot holds, the size of jobstream_runs.
//
// Every scenario runs -runs times; the table shows medians, each run's
// value, the targets of issues 6 and 17 with PASS or MISS, and the command that
// reproduces each figure. Nothing it measures fails a test: a shared
// machine may be slow. A scenario that cannot complete (a timeout, a
// process that died) is an error, not a figure.
package main
