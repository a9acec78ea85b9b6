package kafkaconn_test

import (
	"context"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/jobstream/jobstream/schema/kafkaconn"
)

// TestEnsureTopicsReplication: on a cluster of three brokers the topics are
// created with three replicas and min.insync.replicas=2, as the broker
// reports them back (metadata, describe configs); on one broker with one
// replica and the broker's min.insync.replicas.
func TestEnsureTopicsReplication(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		nodes, replicas int
		minISR          string // "" for the broker's default
	}{
		{nodes: 3, replicas: 3, minISR: "2"},
		{nodes: 1, replicas: 1},
	} {
		c, err := kfake.NewCluster(kfake.NumBrokers(tc.nodes))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ctx := context.Background()
		b := kafkaconn.Broker{Addrs: c.ListenAddrs()[:1]}
		if err := b.EnsureTopics(ctx, 4, "jobs.a", "jobs.b"); err != nil {
			t.Fatalf("%d nodes: %v", tc.nodes, err)
		}
		if err := b.EnsureTopics(ctx, 4, "jobs.a"); err != nil {
			t.Fatalf("%d nodes, a topic that exists: %v", tc.nodes, err)
		}
		cl := b.Client(10 * time.Second)
		md, err := cl.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{"jobs.a", "jobs.b"}})
		if err != nil {
			t.Fatal(err)
		}
		if len(md.Topics) != 2 {
			t.Fatalf("%d nodes: metadata names %d topics, want 2", tc.nodes, len(md.Topics))
		}
		for _, tp := range md.Topics {
			if len(tp.Partitions) != 4 {
				t.Errorf("%d nodes: %s has %d partitions, want 4", tc.nodes, tp.Name, len(tp.Partitions))
			}
			for _, p := range tp.Partitions {
				if len(p.Replicas) != tc.replicas {
					t.Errorf("%d nodes: %s/%d has %d replicas, want %d", tc.nodes, tp.Name, p.ID, len(p.Replicas), tc.replicas)
				}
			}
		}
		res, err := cl.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{
			{ResourceType: kafka.ResourceTypeTopic, ResourceName: "jobs.a", ConfigNames: []string{"min.insync.replicas"}},
		}})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Resources) != 1 || res.Resources[0].Error != nil || len(res.Resources[0].ConfigEntries) != 1 {
			t.Fatalf("%d nodes: describe configs of jobs.a: %+v", tc.nodes, res.Resources)
		}
		// ConfigSource 1 is DYNAMIC_TOPIC_CONFIG: set on the topic.
		e := res.Resources[0].ConfigEntries[0]
		switch onTopic := e.ConfigSource == 1; {
		case tc.minISR != "" && (e.ConfigValue != tc.minISR || !onTopic):
			t.Errorf("%d nodes: min.insync.replicas %q (source %d), want %s set on the topic", tc.nodes, e.ConfigValue, e.ConfigSource, tc.minISR)
		case tc.minISR == "" && onTopic:
			t.Errorf("%d nodes: min.insync.replicas %q set on the topic, want the broker's default", tc.nodes, e.ConfigValue)
		}
	}
}
