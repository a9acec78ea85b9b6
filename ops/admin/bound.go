package admin

import (
	"cmp"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ErrBadBound is matched (errors.Is) by the error of a Bound that is
// neither a time nor a partition and offset.
var ErrBadBound = errors.New("bad bound")

// Bound is one end of a replay range in a topic: a time, or a partition and
// offset. The zero Bound is open: the beginning or the end of the topic.
type Bound struct {
	at        time.Time
	partition int // -1 for a time
	offset    int64
	text      string // as given; "" for an open bound
}

// BoundAt is the bound at time t: in each partition, the first message at
// or after t.
func BoundAt(t time.Time) Bound {
	return Bound{at: t, partition: -1, text: t.Format(time.RFC3339Nano)}
}

// BoundOffset is the bound at offset of partition; a range with such a
// bound stays in that partition.
func BoundOffset(partition int, offset int64) Bound {
	return Bound{partition: partition, offset: offset, text: fmt.Sprintf("%d:%d", partition, offset)}
}

// ParseBound reads a bound written as an RFC 3339 time
// (2026-11-26T10:00:00Z) or PARTITION:OFFSET (3:1200); "" is the open bound.
func ParseBound(s string) (Bound, error) {
	if s == "" {
		return Bound{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return Bound{at: t, partition: -1, text: s}, nil
	}
	p, o, ok := strings.Cut(s, ":")
	pi, err1 := strconv.Atoi(p)
	oi, err2 := strconv.ParseInt(o, 10, 64)
	if !ok || err1 != nil || err2 != nil || pi < 0 || oi < 0 {
		return Bound{}, invalid{ErrBadBound, fmt.Sprintf("%q is neither an RFC 3339 time (2026-11-26T10:00:00Z) nor PARTITION:OFFSET (3:1200)", s)}
	}
	b := BoundOffset(pi, oi)
	b.text = s
	return b, nil
}

// IsZero reports whether b is open.
func (b Bound) IsZero() bool { return b.text == "" }

// Partition returns the partition of a PARTITION:OFFSET bound, -1 for a
// time or an open bound.
func (b Bound) Partition() int {
	if b.IsZero() {
		return -1
	}
	return b.partition
}

// String returns the bound as it was given or made.
func (b Bound) String() string { return b.text }

// rangeString renders [from, to) as a replay records it.
func rangeString(from, to Bound) string {
	return "[" + cmp.Or(from.text, "beginning") + ", " + cmp.Or(to.text, "end") + ")"
}
