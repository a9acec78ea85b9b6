package broker

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// TestNodes: a three-node broker listens on three addresses, each of which
// answers metadata naming all three, and with a fixed --listen port the
// nodes take the ports after it.
func TestNodes(t *testing.T) {
	t.Parallel()
	brokers := func(t *testing.T, addr string) []string {
		t.Helper()
		c := &kafka.Client{Addr: kafka.TCP(addr), Timeout: 10 * time.Second}
		md, err := c.Metadata(context.Background(), &kafka.MetadataRequest{})
		if err != nil {
			t.Fatalf("metadata from %s: %v", addr, err)
		}
		var got []string
		for _, b := range md.Brokers {
			got = append(got, net.JoinHostPort(b.Host, strconv.Itoa(b.Port)))
		}
		slices.Sort(got)
		return got
	}

	b, err := Start(Config{Listen: "127.0.0.1:0", Nodes: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	addrs := b.Addrs()
	if len(addrs) != 3 || addrs[0] != b.Addr() {
		t.Fatalf("Addrs() = %v, Addr() = %s", addrs, b.Addr())
	}
	want := slices.Sorted(slices.Values(addrs))
	for _, a := range addrs {
		if got := brokers(t, a); !slices.Equal(got, want) {
			t.Errorf("node %s names brokers %v, want %v", a, got, want)
		}
	}

	// A fixed port: the nodes listen on it and the two after it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	fixed, err := Start(Config{Listen: fmt.Sprintf("127.0.0.1:%d", port), Nodes: 3})
	if err != nil {
		t.Skipf("ports after %d taken meanwhile: %v", port, err)
	}
	defer fixed.Close()
	for i, a := range fixed.Addrs() {
		if w := fmt.Sprintf("127.0.0.1:%d", port+i); a != w {
			t.Errorf("node %d listens on %s, want %s", i, a, w)
		}
	}

	// The default stays one node.
	one, err := Start(Config{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	if got := brokers(t, one.Addr()); len(got) != 1 {
		t.Errorf("a default broker names %v, want one node", got)
	}
	if _, err := Start(Config{Listen: "127.0.0.1:0", Nodes: 17}); err == nil {
		t.Error("17 nodes started")
	}
}

// TestNodesPersist: a three-node broker's data folder comes back with its
// records whether it is reopened with three nodes or with one.
func TestNodesPersist(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	b, err := Start(Config{Listen: "127.0.0.1:0", Nodes: 3, DataDir: dir, Partitions: 3})
	if err != nil {
		t.Fatal(err)
	}
	w := &kafka.Writer{Addr: kafka.TCP(b.Addrs()...), Topic: "kept", Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll, AllowAutoTopicCreation: true}
	var msgs []kafka.Message
	for i := range 30 {
		msgs = append(msgs, kafka.Message{Key: []byte(fmt.Sprint("j", i)), Value: []byte("v")})
	}
	for {
		err = w.WriteMessages(ctx, msgs...)
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond) // the topic is being created
	}
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	for _, nodes := range []int{3, 1} {
		b, err := Start(Config{Listen: "127.0.0.1:0", Nodes: nodes, DataDir: dir})
		if err != nil {
			t.Fatalf("reopen with %d nodes: %v", nodes, err)
		}
		c := &kafka.Client{Addr: kafka.TCP(b.Addr()), Timeout: 10 * time.Second}
		var n int64
		for p := range 3 {
			res, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{"kept": {kafka.LastOffsetOf(p)}}})
			if err != nil {
				t.Fatalf("reopened with %d nodes: %v", nodes, err)
			}
			for _, po := range res.Topics["kept"] {
				if po.Error != nil {
					t.Fatalf("reopened with %d nodes: partition %d: %v", nodes, p, po.Error)
				}
				n += po.LastOffset
			}
		}
		if n != 30 {
			t.Errorf("reopened with %d nodes: %d records, want 30", nodes, n)
		}
		b.Close()
	}
}
