// Package devstack starts jobstream's local stack: a throwaway PostgreSQL
// (ops/localpg: the machine's own binaries, wal_level=logical, a free
// loopback port) and the embedded Kafka-protocol broker (ops/broker), and
// creates and drops the databases that run on it. It is the one start-up
// shared by `jobstream dev`, the test harness (ops/harness) and the bench
// (ops/bench).
//
// What a Stack guarantees:
//
//   - A clean start. Start with a Dir stops a server a killed run left in
//     it, removes the folder (with the private folder its cluster may live
//     in, see below) and makes it again, empty; with no Dir it makes a fresh
//     temporary folder. Nothing of an earlier run is ever reused.
//   - Reachable as root. Initdb refuses root, so as root the server runs as
//     the postgres OS user. Dir is made mode 0755 so that user can enter it;
//     if a parent folder shuts that user out (a clone under /root, any
//     parent of mode 0700), the cluster lives in a private folder under the
//     temp folder and Dir/pg is a link to it. If no such folder can be
//     found, Start fails with a *localpg.UnreachableError naming the fix.
//   - Ready when returned. Start returns once Postgres accepts connections
//     (and is migrated, with Config.Migrate) and the broker listens. If ctx
//     ends first, or a part fails, what was started is stopped and a
//     temporary folder removed before Start returns the error.
//   - An ordered stop. Stop closes the broker, then shuts Postgres down
//     (fast mode, killed after 15s); it may be called more than once.
//
// Who owns the folders: the caller owns a Dir it names. Start wipes it and
// fills it (Dir/pg with its log Dir/pg.log, Dir/broker), and neither Stop
// nor Close removes it, so logs and data stay to be read after a run. A
// temporary folder Start made is the Stack's own: Close removes it (and the
// private cluster folder), Stop leaves it for a caller that keeps it.
package devstack
