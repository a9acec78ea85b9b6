// Package broker runs jobstream's embedded Kafka-protocol broker: kfake from
// franz-go, one node, persisted to a data folder, listening on one address.
// Any Kafka client (kcat, kafka-go, the Java client) talks to it over TCP.
package broker

import (
	"cmp"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/jobstream/jobstream/schema/kafkaconn"
)

// Config configures the broker.
type Config struct {
	// Listen is the host:port to listen on (default 127.0.0.1:9092); port 0
	// picks a free one.
	Listen string
	// DataDir persists topics, offsets and groups (default: memory only).
	DataDir string
	// Partitions is the partition count of auto-created topics (default 12).
	Partitions int
	// Opts are further kfake options (SASL, TLS, faults) for tests.
	Opts []kfake.Opt
}

// Broker is a running embedded broker.
type Broker struct {
	c    *kfake.Cluster
	addr string
}

// Start starts the broker and returns once it listens.
func Start(cfg Config) (*Broker, error) {
	listen := cmp.Or(cfg.Listen, "127.0.0.1:9092")
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("--listen %q is not host:port", listen)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("--listen %q has no valid port", listen)
	}
	host = cmp.Or(host, "127.0.0.1")
	if port == 0 {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, err
		}
		port = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	opts := []kfake.Opt{
		kfake.ClusterID(kafkaconn.EmbeddedClusterID),
		kfake.Ports(port),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			return net.Listen(network, net.JoinHostPort(host, strconv.Itoa(port)))
		}),
		kfake.DefaultNumPartitions(cmp.Or(cfg.Partitions, 12)),
		kfake.AllowAutoTopicCreation(),
		kfake.GroupMinSessionTimeout(time.Second), // so tests may use short sessions
	}
	if cfg.DataDir != "" {
		if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
			return nil, err
		}
		opts = append(opts, kfake.DataDir(cfg.DataDir))
	}
	opts = append(opts, cfg.Opts...)
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("start broker on %s: %w", listen, err)
	}
	return &Broker{c: c, addr: c.ListenAddrs()[0]}, nil
}

// Addr returns the host:port clients connect to.
func (b *Broker) Addr() string { return b.addr }

// Cluster gives tests the kfake cluster for fault injection.
func (b *Broker) Cluster() *kfake.Cluster { return b.c }

// Close stops the broker, persisting its state when it has a data folder.
func (b *Broker) Close() { b.c.Close() }

// FailProduceAndFetch makes the broker answer every produce and fetch with a
// retriable error (NOT_LEADER_OR_FOLLOWER) for d, as a broker does during a
// leader election, or until stop is called. For chaos and crash tests.
func (b *Broker) FailProduceAndFetch(d time.Duration) (stop func()) {
	h := b.c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce, kmsg.Fetch}, Err: kerr.NotLeaderForPartition, Count: -1})
	var once sync.Once
	stop = func() { once.Do(h.Remove) }
	time.AfterFunc(d, stop)
	return stop
}
