// Package ops is the jobstream command: Main parses each subcommand's
// flags and environment twins, builds the cdc.Config or consumers.Config
// (the one table configFlags maps a config field to its flag), calls the
// libraries and ops/admin, and formats what they return. It holds no domain
// logic of its own: what a command does lives below it.
//
// The house, floor by floor (an arrow is an import):
//
//	ops/jobstream (main: signal.NotifyContext, ops.Main)
//	  → ops (CLI) → ops/admin (Status, Audit, Replay, Cancel, Prune, Jobs, Job, DeadLetters)
//	              → ops/console (the web console over ops/admin) → ops/admin
//	              → ops/metrics (Prometheus hooks, /healthz, /readyz)
//	              → ops/devstack (Postgres + broker for dev, tests, bench) → ops/localpg, ops/broker
//	              → ops/demo (the dev pipeline's handlers and PNGs)
//	  → cdc (the reader) and consumers (the workers), never each other
//	  → schema (names, migrations, the wire format) and schema/kafkaconn (the Kafka connection)
//
// Test kits: ops/harness (a Postgres and broker per test binary, a
// database per test); ops/chaos (kill -9 and model-based tests); ops/bench
// (make bench).
package ops
