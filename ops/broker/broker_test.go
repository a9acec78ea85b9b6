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
