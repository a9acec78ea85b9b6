package admin_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jobstream/jobstream/ops/admin"
)

func TestReplayOptionsValidate(t *testing.T) {
	t.Parallel()
	at := admin.BoundAt(time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC))
	for _, c := range []struct {
		name string
		o    admin.ReplayOptions
		want error
	}{
		{"a range", admin.ReplayOptions{Step: "s", From: at}, nil},
		{"jobs", admin.ReplayOptions{Step: "s", Jobs: []string{"j1"}}, nil},
		{"all", admin.ReplayOptions{Step: "s", All: true}, nil},
		{"one partition", admin.ReplayOptions{Step: "s", From: admin.BoundOffset(2, 5), To: admin.BoundOffset(2, 9)}, nil},
		{"no step", admin.ReplayOptions{All: true}, admin.ErrNoStep},
		{"no scope", admin.ReplayOptions{Step: "s"}, admin.ErrNoScope},
		{"all and jobs", admin.ReplayOptions{Step: "s", All: true, Jobs: []string{"j1"}}, admin.ErrAllWithRange},
		{"time and offset", admin.ReplayOptions{Step: "s", From: at, To: admin.BoundOffset(1, 2)}, admin.ErrMixedBounds},
		{"two partitions", admin.ReplayOptions{Step: "s", From: admin.BoundOffset(1, 0), To: admin.BoundOffset(2, 9)}, admin.ErrSplitRange},
		{"negative offset", admin.ReplayOptions{Step: "s", From: admin.BoundOffset(1, -1)}, admin.ErrBadBound},
	} {
		err := c.o.Validate()
		if !errors.Is(err, c.want) || (err != nil) != admin.IsInvalid(err) {
			t.Errorf("%s: Validate() = %v, want %v", c.name, err, c.want)
		}
	}
}

func TestParseBound(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		in        string
		partition int
		bad       bool
	}{
		{"", -1, false},
		{"2026-11-26T10:00:00Z", -1, false},
		{"2026-11-26T11:00:00+01:00", -1, false},
		{"3:1200", 3, false},
		{"yesterday", 0, true},
		{"3:", 0, true},
		{"-1:4", 0, true},
	} {
		b, err := admin.ParseBound(c.in)
		switch {
		case c.bad && !errors.Is(err, admin.ErrBadBound):
			t.Errorf("ParseBound(%q) = %v, want ErrBadBound", c.in, err)
		case !c.bad && (err != nil || b.Partition() != c.partition || b.String() != c.in):
			t.Errorf("ParseBound(%q) = %v (partition %d), %v", c.in, b, b.Partition(), err)
		}
	}
}

func TestPruneRejectsAnAgeThatIsNotPositive(t *testing.T) {
	t.Parallel()
	if _, err := admin.Prune(context.Background(), nil, admin.PruneOptions{}); !errors.Is(err, admin.ErrBadAge) || !admin.IsInvalid(err) {
		t.Fatalf("Prune with no OlderThan: %v, want ErrBadAge", err)
	}
}
