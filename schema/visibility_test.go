package schema

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestVisibleIn(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		xid  uint32
		snap string
		want bool
	}{
		{100, "90:101:", true},
		{100, "90:100:", false},           // not below xmax
		{100, "90:105:95,100,103", false}, // in progress
		{100, "90:105:95,103", true},
		{4294967295, "4294967290:4294967296:", true},     // below xmax across 2^32
		{5, "4294967290:4294967296:", false},             // 2^32+5 is past xmax
		{100, "4294967386:4294967397:4294967396", false}, // in progress, 64-bit ids modulo 2^32
		{100, "garbage", true},
		{100, "1:x:", true},
	} {
		if got := VisibleIn(c.xid, c.snap); got != c.want {
			t.Errorf("VisibleIn(%d, %q) = %v, want %v", c.xid, c.snap, got, c.want)
		}
	}
}

func TestWaitVisible(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	snaps := []string{"1:10:5,7", "1:10:7", "1:11:"}
	calls := 0
	next := func(context.Context) (string, error) {
		s := snaps[min(calls, len(snaps)-1)]
		calls++
		return s, nil
	}
	if pending, err := WaitVisible(ctx, []uint32{7, 5, 7}, time.Time{}, next); err != nil || pending != nil || calls != 3 {
		t.Fatalf("pending %v, err %v after %d snapshots; want none after 3", pending, err, calls)
	}
	calls = 0
	if pending, err := WaitVisible(ctx, []uint32{10}, time.Now().Add(5*time.Millisecond), next); err != nil || len(pending) != 0 || calls != 3 {
		t.Fatalf("pending %v, err %v after %d snapshots; want none after 3", pending, err, calls)
	}
	never := func(context.Context) (string, error) { return "1:2:", nil }
	if pending, err := WaitVisible(ctx, []uint32{5}, time.Now().Add(2*time.Millisecond), never); err != nil || len(pending) != 1 {
		t.Fatalf("past the deadline: pending %v, err %v; want [5]", pending, err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := WaitVisible(cctx, []uint32{5}, time.Time{}, never); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: err %v", err)
	}
	boom := errors.New("boom")
	if _, err := WaitVisible(ctx, []uint32{5}, time.Time{}, func(context.Context) (string, error) { return "", boom }); !errors.Is(err, boom) {
		t.Fatalf("snapshot error: err %v", err)
	}
}
