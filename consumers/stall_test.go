package consumers_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/ops/broker"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
	"github.com/jobstream/jobstream/schema/kafkaconn"
)

// TestJoinOutlastsARebalanceAnotherJoinExtends: the embedded broker (kfake)
// waits for every member of a group to join again before it completes a
// rebalance, up to the rebalance timeout, and restarts that wait at every
// join. A member that never joins again (here a ghost that only sends
// heartbeats; in the chaos test a member killed while its join was in
// flight, which kfake keeps without a session timer) then holds the
// group until the wait runs out. If a member's join gave up before the
// wait could run out, a second member joining a few seconds later would
// restart the wait, the first would leave and join again, restarting it
// too, and so on: no generation ever again, and jobs waiting unclaimed for
// good. A member's join must outlast the wait another member's join
// restarts.
func TestJoinOutlastsARebalanceAnotherJoinExtends(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	topic, group := e.Topic(trigger), e.Topics().Group(step)
	if err := (kafkaconn.Broker{Addrs: e.Brokers}).EnsureTopics(ctx, schema.DefaultPartitions, topic); err != nil {
		t.Fatal(err)
	}

	// The ghost: in the group, alive, never joining again.
	client := &kafka.Client{Addr: kafka.TCP(e.Brokers...), Timeout: 40 * time.Second}
	join := &kafka.JoinGroupRequest{GroupID: group, SessionTimeout: 6 * time.Second, RebalanceTimeout: 30 * time.Second,
		ProtocolType: "consumer", Protocols: []kafka.GroupProtocol{{Name: "range", Metadata: kafka.GroupProtocolSubscription{Topics: []string{topic}}}}}
	var jr *kafka.JoinGroupResponse
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		var err error
		jr, err = client.JoinGroup(ctx, join)
		if err == nil && errors.Is(jr.Error, kafka.MemberIDRequired) {
			join.MemberID = jr.MemberID
			jr, err = client.JoinGroup(ctx, join)
		}
		if err == nil {
			err = jr.Error
		}
		return err == nil, fmt.Sprint("ghost join: ", err)
	})
	sr, err := client.SyncGroup(ctx, &kafka.SyncGroupRequest{GroupID: group, GenerationID: jr.GenerationID, MemberID: jr.MemberID,
		ProtocolType: "consumer", ProtocolName: "range",
		Assignments: []kafka.SyncGroupRequestAssignment{{MemberID: jr.MemberID, Assignment: kafka.GroupProtocolAssignment{
			AssignedPartitions: map[string][]int{topic: {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}}}}}})
	if err == nil {
		err = sr.Error
	}
	if err != nil {
		t.Fatal("ghost sync: ", err)
	}
	ghostDone := make(chan struct{})
	go func() {
		defer close(ghostDone)
		for ctx.Err() == nil {
			client.Heartbeat(ctx, &kafka.HeartbeatRequest{GroupID: group, GenerationID: int32(jr.GenerationID), MemberID: jr.MemberID})
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	defer func() { cancel(); <-ghostDone }()

	// Two workers join 12s apart: the second restarts the wait the first
	// is in. No stall watchdog: the group must recover on its own.
	cfg := consumers.Config{StallTimeout: -1, Handler: (&recorder{}).attemptResult}
	cfg.WorkerID = "worker-a"
	a := startWorker(t, e, cfg)
	time.Sleep(12 * time.Second)
	cfg.WorkerID = "worker-b"
	b := startWorker(t, e, cfg)
	ids := []string{"ghost-0", "ghost-1", "ghost-2", "ghost-3", "ghost-4", "ghost-5"}
	insertJobs(t, e, ids...)
	for _, id := range ids {
		waitJob(t, e, id, step, "done", 90*time.Second)
	}
	select {
	case <-a.Ready():
	default:
		t.Error("worker-a never had a generation")
	}
	select {
	case <-b.Ready():
	default:
		t.Error("worker-b never had a generation")
	}
}

// TestWatchdogOnlyOnTheEmbeddedBroker: the stall watchdog guards against a
// fault of the embedded broker's group coordinator, so a worker runs it only
// when the brokers report that broker's cluster id; against any other
// cluster (Kafka) it says it is off, and the step still runs.
func TestWatchdogOnlyOnTheEmbeddedBroker(t *testing.T) {
	t.Parallel()
	e := streamingEnv(t)
	other := harness.StartBroker(t, broker.Config{Opts: []kfake.Opt{kfake.ClusterID("some-kafka-cluster")}})
	if id := (kafkaconn.Broker{Addrs: []string{e.Brokers[0]}}).ClusterID(context.Background(), 5*time.Second); id != kafkaconn.EmbeddedClusterID {
		t.Fatalf("the embedded broker reports cluster id %q, want %q", id, kafkaconn.EmbeddedClusterID)
	}
	for _, tc := range []struct {
		name    string
		brokers []string
		off     bool
	}{{"embedded broker", e.Brokers, false}, {"other cluster", []string{other.Addr()}, true}} {
		log, sink := logSink(t, tc.name)
		cfg := consumers.Config{DatabaseURL: e.DatabaseURL, Brokers: tc.brokers, TopicPrefix: e.Prefix, Step: step, WorkerID: tc.name,
			Logger: log, Grace: time.Second, Handler: func(context.Context, consumers.Job) (json.RawMessage, error) { return nil, nil }}
		w, err := consumers.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		harness.Go(t, context.Background(), tc.name, w.Run).WaitReady(t, w.Ready())
		if got := strings.Contains(sink.String(), "stall watchdog off"); got != tc.off {
			t.Errorf("%s: watchdog off %v, want %v", tc.name, got, tc.off)
		}
	}
}
