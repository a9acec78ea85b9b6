package harness

import (
	"context"
	"testing"
	"time"

	"github.com/jobstream/jobstream/cdc"
)

// Task is a function a test runs in the background with Go.
type Task struct {
	name string
	done chan struct{}
	err  error
}

// Go runs run in a goroutine under a context derived from ctx. When t ends
// it cancels that context and fails t if run returns an error or has not
// returned within 30 seconds; name says what run is in those messages.
func Go(t testing.TB, ctx context.Context, name string, run func(context.Context) error) *Task {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	k := &Task{name: name, done: make(chan struct{})}
	go func() {
		defer close(k.done)
		k.err = run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-k.done:
			if k.err != nil {
				t.Errorf("%s: %v", name, k.err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("%s did not stop within 30s", name)
		}
	})
	return k
}

// Done is closed once run has returned.
func (k *Task) Done() <-chan struct{} { return k.done }

// Err returns what run returned; call it once Done is closed.
func (k *Task) Err() error { return k.err }

// WaitReady waits until ready is closed; it fails t with the task's error
// if the task returns first, or if a minute passes.
func (k *Task) WaitReady(t testing.TB, ready <-chan struct{}) {
	t.Helper()
	select {
	case <-ready:
	case <-k.done:
		t.Fatalf("%s stopped at start: %v", k.name, k.err)
	case <-time.After(time.Minute):
		t.Fatalf("%s not ready within 1m", k.name)
	}
}

// StartReader runs a reader with cfg until ctx ends or t ends (as Go does)
// and returns it once its slot exists. A reader that stops at start, or is
// not ready within a minute, fails t with its error.
func StartReader(t testing.TB, ctx context.Context, cfg cdc.Config) *cdc.Reader {
	t.Helper()
	r, err := cdc.New(cfg)
	if err != nil {
		t.Fatalf("reader: %v", err)
	}
	Go(t, ctx, "reader", r.Run).WaitReady(t, r.Ready())
	return r
}
