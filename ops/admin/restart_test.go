package admin_test

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/ops/admin"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
	"github.com/jobstream/jobstream/schema/kafkaconn"
)

// freeAddr returns a loopback host:port that nothing listens on now.
func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestReadAfterBrokerCrash: every record the embedded broker (`jobstream
// broker --data-dir`) acknowledged is found by Offsets and Read right after
// it is SIGKILLed and restarted on the same data folder: the offsets it
// reports once it answers again cover everything it had acknowledged, and a
// read up to End sees it all (what replay relies on after a broker crash).
func TestReadAfterBrokerCrash(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	ctx := context.Background()
	addr := freeAddr(t)
	dir := filepath.Join(e.Dir, "broker")
	start := func() *harness.Process {
		p := e.StartProcess(t, "broker", nil, "broker", "--listen", addr, "--data-dir", dir)
		harness.Eventually(t, 30*time.Second, func() (bool, string) {
			return (kafkaconn.Broker{Addrs: []string{addr}}).Ping(ctx, time.Second) == nil, "broker not up"
		})
		return p
	}
	p := start()
	b := kafkaconn.Broker{Addrs: []string{addr}}
	topic := e.Prefix + ".t"
	if err := b.EnsureTopics(ctx, 12, topic); err != nil {
		t.Fatal(err)
	}
	acked := map[string]bool{}
	for round := 0; round < 6; round++ {
		w := &kafka.Writer{Addr: kafka.TCP(addr), Topic: topic, Balancer: &kafka.Murmur2Balancer{}, BatchTimeout: time.Millisecond,
			RequiredAcks: kafka.RequireAll, Transport: b.Transport()}
		for i := 0; i < 20; i++ {
			k := fmt.Sprintf("r%d-%d", round, i)
			if err := w.WriteMessages(ctx, kafka.Message{Key: []byte(k), Value: []byte(k)}); err != nil {
				t.Fatal(err)
			}
			acked[k] = true
		}
		w.Close()
		p.Kill()
		p = start()
		k := admin.NewKafka(b)
		offs, err := k.Offsets(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, o := range offs {
			if err := k.Read(ctx, topic, o.Partition, o.First, o.End, func(m kafka.Message) error {
				seen[schema.JobIDFromKey(m.Key)] = true
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
		var missing []string
		for k := range acked {
			if !seen[k] {
				missing = append(missing, k)
			}
		}
		if len(missing) > 0 {
			t.Fatalf("round %d: %d of %d acknowledged records missing after restart: %v; offsets %+v", round, len(missing), len(acked), missing, offs)
		}
	}
}
