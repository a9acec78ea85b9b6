package harness_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/ops/localpg"
)

// fakeT records what a helper reports; Fatal ends the calling goroutine as
// testing.T does. Other testing.TB methods are not expected.
type fakeT struct {
	testing.TB
	mu       sync.Mutex
	failures []string
	cleanups []func()
}

func (f *fakeT) Helper() {}

func (f *fakeT) Cleanup(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanups = append(f.cleanups, fn)
}

func (f *fakeT) Errorf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures = append(f.failures, fmt.Sprintf(format, args...))
}

func (f *fakeT) Fatalf(format string, args ...any) {
	f.Errorf(format, args...)
	runtime.Goexit()
}

func (f *fakeT) Fatal(args ...any) { f.Fatalf("%s", fmt.Sprint(args...)) }

// end runs the cleanups, last registered first, and returns the failures.
func (f *fakeT) end() string {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.failures, "\n")
}

// TestStartReaderFailsOnReaderThatDiesAtStart: a reader that stops at start
// (here: Postgres is not there) fails the test at once with its error
// instead of leaving StartReader waiting for readiness.
func TestStartReaderFailsOnReaderThatDiesAtStart(t *testing.T) {
	t.Parallel()
	port, err := localpg.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ft := &fakeT{}
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		harness.StartReader(ft, context.Background(), cdc.Config{DatabaseURL: fmt.Sprintf("postgres://postgres@127.0.0.1:%d/none", port),
			Brokers: []string{"127.0.0.1:1"}, Slot: "s", TopicPrefix: "p"})
	}()
	select {
	case <-returned:
	case <-time.After(30 * time.Second):
		t.Fatal("StartReader still waits 30s after its reader failed")
	}
	if got := ft.end(); !strings.Contains(got, "reader stopped at start: ") {
		t.Errorf("failures %q, want the reader's error at start", got)
	}
}

// TestPoolConcurrentFirstUse: goroutines asking for an Env's pool at once
// all get the same one.
func TestPoolConcurrentFirstUse(t *testing.T) {
	t.Parallel()
	e := &harness.Env{DatabaseURL: "postgres://postgres@127.0.0.1:1/none"}
	pools := make(chan any, 8)
	var wg sync.WaitGroup
	for range cap(pools) {
		wg.Add(1)
		go func() { defer wg.Done(); pools <- e.Pool(t) }()
	}
	wg.Wait()
	close(pools)
	first := <-pools
	defer e.Pool(t).Close()
	for p := range pools {
		if p != first {
			t.Fatal("concurrent first uses of Env.Pool opened more than one pool")
		}
	}
}
