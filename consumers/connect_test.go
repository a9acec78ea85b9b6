package consumers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/ops/admin"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
	"github.com/jobstream/jobstream/schema/kafkaconn"
)

// TestWorkerReadsConnectForm is issue 16 item 2 (consumers): with a reader
// writing Kafka Connect's schema/payload form (cdc.Config.Schemas), workers
// walk jobs through two steps as they do with the plain form, and audit
// and a replay's dry run find each job's events by its key.
func TestWorkerReadsConnectForm(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	harness.StartReader(t, context.Background(), cdc.Config{DatabaseURL: e.DatabaseURL, Brokers: e.Brokers, Slot: e.Slot,
		TopicPrefix: e.Prefix, Publication: e.Publication, Logger: testLogger(t, "reader"), Schemas: true})
	handler := func(ctx context.Context, job consumers.Job) (json.RawMessage, error) {
		return json.Marshal(job.Step + " of " + job.JobID)
	}
	w := startWorker(t, e, consumers.Config{Steps: map[string]consumers.Handler{"vlm_analyze": handler, "yolo_detect": handler}})
	<-w.Ready()

	const n = 5
	runTwoSteps(t, e, w, n)
	if f := w.Stats().Failures.Load(); f != 0 {
		t.Errorf("%d failures", f)
	}

	// The events are in the schema/payload form, keys too.
	msgs := e.ReadTopic(t, e.Topic("img_gen"))
	if len(msgs) == 0 {
		t.Fatal("no events in the img_gen topic")
	}
	for _, m := range msgs {
		if _, ok := schema.Unwrap(m.Value); !ok {
			t.Fatalf("value is not in the schema/payload form: %.200s", m.Value)
		}
		if _, ok := schema.Unwrap(m.Key); !ok {
			t.Fatalf("key is not in the schema/payload form: %s", m.Key)
		}
	}

	ctx := context.Background()
	k := admin.NewKafka(kafkaconn.Broker{Addrs: e.Brokers})
	hist, err := admin.Audit(ctx, k, e.Pool(t), admin.AuditOptions{JobID: "j3", Deployment: admin.Deployment{TopicPrefix: e.Prefix}})
	var steps []string
	for _, h := range hist {
		if h.Kind == "change" {
			steps = append(steps, h.Step+":"+h.Status)
		}
	}
	if err != nil || !slices.Contains(steps, "img_gen:done") || !slices.Contains(steps, "yolo_detect:done") {
		t.Errorf("audit of j3: %v, %v", steps, err)
	}
	plan, err := admin.Replay(ctx, e.Pool(t), k, admin.ReplayOptions{Step: "vlm_analyze", Jobs: []string{"j2"}, DryRun: true,
		Deployment: admin.Deployment{TopicPrefix: e.Prefix}})
	if err != nil || len(plan.Replayed) != 1 || plan.Replayed[0].JobID != "j2" {
		t.Errorf("replay dry run of j2: %+v, %v", plan, err)
	}

	// Bad input in the schema/payload form is one dead letter with one
	// sentence, as in the plain form: its job is named by its key's payload.
	key := schema.ConnectWrap(schema.AppendConnectKeySchema(nil, e.Prefix, "public", "jobs", []byte(schema.ConnectJobIDString)), schema.Key("poison", false))
	wr := &kafka.Writer{Addr: kafka.TCP(e.Brokers...), Topic: e.Topic("img_gen"), Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll}
	defer wr.Close()
	if err := wr.WriteMessages(ctx, kafka.Message{Key: key, Value: []byte(`{"schema":{"type":"string","optional":false},"payload":"not an envelope"}`)}); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		var reasons []string
		for _, m := range e.ReadTopic(t, e.Topics().DLQ()) {
			d := decodeEvent(t, m.Value)
			reason := fmt.Sprint(d["reason"])
			if schema.JobIDFromKey(m.Key) == "poison" && reason == "event is not a change-event envelope: json: cannot unmarshal string into Go value of type schema.Trigger" {
				return true, ""
			}
			reasons = append(reasons, schema.JobIDFromKey(m.Key)+": "+reason)
		}
		return false, "no dead letter for the poison message: " + strings.Join(reasons, "; ")
	})
}
