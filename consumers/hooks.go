package consumers

import "time"

// A Hook observes a Worker: Config.Hooks holds values that each implement
// any of the Hook interfaces of this package (HookClaimed, HookAttempted),
// and the worker calls every hook of each kind, in order. Hooks are called
// from the members' goroutines, so they must be safe for concurrent use,
// and must not block. This is how ops turns measurements into metrics
// without consumers importing Prometheus (franz-go's kgo hooks work the
// same way).
type Hook any

// HookClaimed is called when a run of step is claimed, with the time from
// the trigger's commit in Postgres to the claim.
type HookClaimed interface {
	OnClaimed(step string, commitToClaim time.Duration)
}

// HookAttempted is called when an attempt of step ends, with its outcome
// (done, retried, failed, fenced, released, cancelled, discarded) and how
// long the handler ran.
type HookAttempted interface {
	OnAttempted(step, outcome string, took time.Duration)
}

// claimed calls the HookClaimed hooks.
func (w *stepWorker) claimed(commitToClaim time.Duration) {
	for _, h := range w.cfg.Hooks {
		if h, ok := h.(HookClaimed); ok {
			h.OnClaimed(w.cfg.Step, commitToClaim)
		}
	}
}

// attempted calls the HookAttempted hooks.
func (w *stepWorker) attempted(outcome string, took time.Duration) {
	for _, h := range w.cfg.Hooks {
		if h, ok := h.(HookAttempted); ok {
			h.OnAttempted(w.cfg.Step, outcome, took)
		}
	}
}
