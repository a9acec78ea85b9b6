// Package broker runs jobstream's embedded Kafka-protocol broker: kfake from
// franz-go, persisted to a data folder, one node by default or a cluster of
// several, each node listening on its own address. Any Kafka client (kcat,
// kafka-go, the Java client) talks to it over TCP.
package broker

import (
	"cmp"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/jobstream/jobstream/schema"
	"github.com/jobstream/jobstream/schema/kafkaconn"
)

// Config configures the broker.
type Config struct {
	// Listen is the host:port the first node listens on (default
	// 127.0.0.1:9092); port 0 picks a free one.
	Listen string
	// Nodes is the number of broker nodes (default 1). Node i listens on
	// Listen's port + i, or on a free port when Listen's port is 0. The
	// nodes share one log, as kfake keeps it; partition leaders and group
	// coordinators are spread over them and move as on a real cluster
	// (Cluster().ShufflePartitionLeaders, RehashCoordinators).
	Nodes int
	// DataDir persists topics, offsets and groups (default: memory only).
	DataDir string
	// Partitions is the partition count of auto-created topics (default 12).
	Partitions int
	// Opts are further kfake options (SASL, TLS, faults) for tests.
	Opts []kfake.Opt
}

// Broker is a running embedded broker.
type Broker struct {
	c     *kfake.Cluster
	addrs []string
}

// Start starts the broker and returns once it listens.
func Start(cfg Config) (*Broker, error) {
	listen := cmp.Or(cfg.Listen, "127.0.0.1:9092")
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, schema.FieldError("Listen", "%q is not host:port", listen)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, schema.FieldError("Listen", "%q has no valid port", listen)
	}
	host = cmp.Or(host, "127.0.0.1")
	nodes := cmp.Or(cfg.Nodes, 1)
	if nodes < 1 || nodes > 16 {
		return nil, schema.FieldError("Nodes", "%d is out of range 1..16", nodes)
	}
	if port != 0 && port+nodes-1 > 65535 {
		return nil, &schema.ConfigError{Fields: []string{"Listen", "Nodes"}, Msg: fmt.Sprintf("Listen %q leaves no port for node %d of Nodes %d", listen, nodes-1, nodes)}
	}
	ports := make([]int, nodes)
	for i := range ports {
		if port != 0 {
			ports[i] = port + i
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, err
		}
		ports[i] = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	opts := []kfake.Opt{
		kfake.ClusterID(kafkaconn.EmbeddedClusterID),
		kfake.Ports(ports...),
		// kfake asks for 127.0.0.1:<port>; listen on the configured host.
		kfake.ListenFn(func(network, addr string) (net.Listener, error) {
			_, p, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			return net.Listen(network, net.JoinHostPort(host, p))
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
	compat(c) // answer as Kafka does where kfake differs (compat.go)
	return &Broker{c: c, addrs: c.ListenAddrs()}, nil
}

// Addr returns the host:port of the first node, enough for a client to
// bootstrap from.
func (b *Broker) Addr() string { return b.addrs[0] }

// Addrs returns the host:port of every node, the first node's first.
func (b *Broker) Addrs() []string { return slices.Clone(b.addrs) }

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
