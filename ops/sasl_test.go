package ops_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/ops/broker"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema/kafkaconn"
)

// TestKafkaSASL: against a broker that demands SASL, the reader, a worker
// and status work with PLAIN and SCRAM credentials, and a wrong password is
// one clear sentence, never printed.
func TestKafkaSASL(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	b := harness.StartBroker(t, broker.Config{Opts: []kfake.Opt{
		kfake.EnableSASL(),
		kfake.Superuser("PLAIN", "plainuser", "plain-secret"),
		kfake.Superuser("SCRAM-SHA-256", "scramuser", "scram-secret"),
	}})

	plain, err := kafkaconn.Auth{Mechanism: "PLAIN", User: "plainuser", Password: "plain-secret"}.Apply(kafkaconn.Broker{Addrs: []string{b.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	scram, err := kafkaconn.Auth{Mechanism: "SCRAM-SHA-256", User: "scramuser", Password: "scram-secret"}.Apply(kafkaconn.Broker{Addrs: []string{b.Addr()}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	harness.StartReader(t, ctx, cdc.Config{DatabaseURL: e.DatabaseURL, Brokers: plain.Addrs, SASL: plain.SASL, Slot: e.Slot, TopicPrefix: e.Prefix})
	w, err := consumers.New(consumers.Config{DatabaseURL: e.DatabaseURL, Brokers: scram.Addrs, SASL: scram.SASL, Step: "vlm_analyze", TopicPrefix: e.Prefix,
		Handler: func(context.Context, consumers.Job) (json.RawMessage, error) { return json.RawMessage(`{}`), nil }})
	if err != nil {
		t.Fatal(err)
	}
	go w.Run(ctx)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('s1', 'img_gen', 'done')`)
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		n := e.Count(t, `SELECT count(*) FROM jobs WHERE job_id = 's1' AND current_step = 'vlm_analyze' AND status = 'done'`)
		return n == 1, "s1 not at (vlm_analyze, done) through a SASL broker"
	})

	flags := []string{"--database-url", e.DatabaseURL, "--brokers", b.Addr(), "--topic-prefix", e.Prefix, "--slot", e.Slot}
	code, out, stderr := runMain(t, append([]string{"status", "--kafka-sasl", "SCRAM-SHA-256", "--kafka-user", "scramuser", "--kafka-password", "scram-secret"}, flags...)...)
	if code != 0 || !strings.Contains(out, "vlm_analyze") {
		t.Fatalf("status with SCRAM: exit %d: %s %s", code, out, stderr)
	}
	code, _, stderr = runMain(t, append([]string{"status", "--kafka-sasl", "PLAIN", "--kafka-user", "plainuser", "--kafka-password", "wrong-secret"}, flags...)...)
	if code != 1 || !strings.Contains(stderr, "refused the SASL credentials") || strings.Contains(stderr, "wrong-secret") {
		t.Fatalf("wrong password: exit %d: %s", code, stderr)
	}
	code, _, stderr = runMain(t, append([]string{"status", "--kafka-sasl", "GSSAPI", "--kafka-user", "x"}, flags...)...)
	if code != 2 || !strings.Contains(stderr, "not one of PLAIN") {
		t.Fatalf("unknown mechanism: exit %d: %s", code, stderr)
	}
}
