package ops_test

import (
	"context"
	"testing"
	"time"

	"github.com/jobstream/jobstream/cdc"
)

// startReader runs a reader with cfg until ctx ends and returns it once its
// slot exists; a reader that fails at start fails the test with its error.
func startReader(t *testing.T, ctx context.Context, cfg cdc.Config) *cdc.Reader {
	t.Helper()
	r, err := cdc.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rerr := make(chan error, 1)
	go func() { rerr <- r.Run(ctx) }()
	select {
	case <-r.Ready():
	case err := <-rerr:
		t.Fatalf("reader stopped at start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("reader not ready within 30s")
	}
	return r
}
