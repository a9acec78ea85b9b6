package cdc

import "time"

// A Hook observes a Reader: Config.Hooks holds values that each implement
// any of the Hook interfaces of this package (HookProduced,
// HookCommitAcked), and the reader calls every hook of each kind, in order.
// Hooks are called from the reader's goroutines and must not block. This
// is how ops turns measurements into metrics without cdc importing
// Prometheus (franz-go's kgo hooks work the same way).
type Hook any

// HookProduced is called after every batch the broker acknowledged, with
// its number of events and how long producing it took.
type HookProduced interface {
	OnProduced(events int, took time.Duration)
}

// HookCommitAcked is called once per transaction when its last event is
// acknowledged, with the time from its commit in Postgres to that
// acknowledgement.
type HookCommitAcked interface {
	OnCommitAcked(latency time.Duration)
}
