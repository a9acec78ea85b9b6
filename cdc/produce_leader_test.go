package cdc

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/jobstream/jobstream/schema/kafkaconn"
)

// warnCounter counts the warnings logged through it.
type warnCounter struct{ n atomic.Int64 }

func (w *warnCounter) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (w *warnCounter) Handle(context.Context, slog.Record) error    { w.n.Add(1); return nil }
func (w *warnCounter) WithAttrs([]slog.Attr) slog.Handler           { return w }
func (w *warnCounter) WithGroup(string) slog.Handler                { return w }

// TestProduceFollowsLeaderMove: when a partition's leader moves to another
// node of the cluster, the producer's next attempt goes to the new leader.
// Before, it kept sending to the old leader, which answered
// NOT_LEADER_FOR_PARTITION, until its metadata cache expired (up to 5s),
// and the reader's acknowledgements stood still meanwhile.
func TestProduceFollowsLeaderMove(t *testing.T) {
	t.Parallel()
	c, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.SeedTopics(1, "moves"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var warns warnCounter
	p := newProducer(kafkaconn.Broker{Addrs: c.ListenAddrs()}, 1, slog.New(&warns))
	defer p.close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	send := func() {
		t.Helper()
		evs := []event{{topic: "moves", key: []byte("j1"), value: []byte("{}"), partition: 0, op: 'c'}}
		if err := p.sendChunk(ctx, topicPartition{"moves", 0}, evs, []int{0}); err != nil {
			t.Fatal(err)
		}
	}
	send() // the producer now holds the cluster's metadata
	for i := range 5 {
		from := c.LeaderFor("moves", 0)
		to := (from + 1) % 3
		if err := c.MoveTopicPartition("moves", 0, to); err != nil {
			t.Fatal(err)
		}
		before := warns.n.Load()
		start := time.Now()
		send()
		if n := warns.n.Load() - before; n > 1 {
			t.Errorf("move %d (node %d → %d): %d attempts failed over %s before the producer found the new leader, want at most 1",
				i, from, to, n, time.Since(start).Round(time.Millisecond))
		}
	}
}
