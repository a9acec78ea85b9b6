package console_test

import (
	"bufio"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/ops/admin"
	"github.com/jobstream/jobstream/ops/broker"
	"github.com/jobstream/jobstream/ops/console"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
	"github.com/jobstream/jobstream/schema/kafkaconn"
)

// TestConsoleWhilePostgresIsDown is what an operator sees with the console
// open while Postgres goes away for a while: the page still loads, the
// overview says what is wrong in one sentence (no database URL), reads and
// actions answer 502 without a crash, and everything comes back on its own
// once Postgres does.
func TestConsoleWhilePostgresIsDown(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	u, err := url.Parse(e.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := harness.NewProxy(t, u.Host)
	u.Host = proxy.Addr
	q := u.Query()
	q.Set("connect_timeout", "2")
	u.RawQuery = q.Encode()
	pool, err := pgxpool.New(context.Background(), u.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('j1', 'img_gen', 'done')`)

	c := openConsole(t, console.Config{Pool: pool, Kafka: admin.NewKafka(kafkaconn.Broker{Addrs: e.Brokers}),
		Deployment: admin.Deployment{TopicPrefix: e.Prefix}, Slot: e.Slot, Token: token, Images: e.Dir})
	srv, waitSample, get := c.srv, c.waitSample, c.get
	healthy := func(s map[string]any) bool { return s["error"] == nil && s["report"] != nil }
	waitSample("with a report", healthy)
	if code, body := get("/api/jobs"); code != http.StatusOK || !strings.Contains(body, `"j1"`) {
		t.Fatalf("jobs before the outage: %d %s", code, body)
	}

	proxy.Cut()
	t.Log("Postgres cut off")
	s := waitSample("with an error", func(s map[string]any) bool { return s["error"] != nil })
	msg, _ := s["error"].(string)
	t.Logf("overview says: %s", msg)
	if !strings.Contains(msg, "Postgres") || strings.Contains(msg, "postgres://") || strings.Contains(msg, "\n") {
		t.Errorf("the overview's error is not one sentence without the database URL: %q", msg)
	}
	if code, _ := get("/"); code != http.StatusOK {
		t.Errorf("the page itself: %d, want 200 while Postgres is down", code)
	}
	if code, body := get("/api/letters"); code != http.StatusOK {
		t.Errorf("dead letters come from the brokers: %d %s, want 200 while Postgres is down", code, body)
	}
	for _, path := range []string{"/api/jobs", "/api/job?id=j1"} {
		code, body := get(path)
		if code != http.StatusBadGateway {
			t.Errorf("%s while Postgres is down: %d %s, want 502", path, code, body)
		}
		var answer map[string]string
		if json.Unmarshal([]byte(body), &answer) != nil || !strings.Contains(answer["error"], "Postgres") || strings.Contains(body, "postgres://") {
			t.Errorf("%s while Postgres is down: %s, want {\"error\": <one sentence naming Postgres>}", path, body)
		}
		t.Logf("%s says: %s", path, answer["error"])
	}
	csrf := pageCSRF(t, srv.URL)
	cancelJob := func() int {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/api/cancel", strings.NewReader(`{"job_id": "j1"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-CSRF-Token", csrf)
		req.Header.Set("X-Jobstream-Token", token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := cancelJob(); code != http.StatusBadGateway {
		t.Errorf("cancel while Postgres is down: %d, want 502", code)
	}

	proxy.Restore()
	t.Log("Postgres back")
	waitSample("with a report after the outage", healthy)
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		code, body := get("/api/jobs")
		return code == http.StatusOK, body
	})
	if code := cancelJob(); code != http.StatusOK {
		t.Errorf("cancel after the outage: %d, want 200", code)
	}
	if n := e.Count(t, `SELECT count(*) FROM jobs WHERE job_id = 'j1' AND status = 'cancelled'`); n != 1 {
		t.Errorf("the cancel after the outage did not cancel j1: %s", e.Dump(t, `SELECT * FROM jobs`))
	}
}

// TestConsoleWhileTheBrokerIsDown is what an operator sees with the console
// open while the Kafka broker goes away: the page and the jobs (Postgres)
// still load, the overview and the dead letters say in one sentence that
// the brokers cannot be reached, and everything comes back on its own once
// the broker does.
func TestConsoleWhileTheBrokerIsDown(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	b := harness.StartBroker(t, broker.Config{})
	addr := b.Addrs()[0]
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('j1', 'img_gen', 'done')`)

	k := admin.NewKafka(kafkaconn.Broker{Addrs: []string{addr}})
	c := openConsole(t, console.Config{Pool: e.Pool(t), Kafka: k,
		Deployment: admin.Deployment{TopicPrefix: e.Prefix}, Slot: e.Slot, Token: token, Images: e.Dir})
	healthy := func(s map[string]any) bool { return s["error"] == nil && s["report"] != nil }
	c.waitSample("with a report", healthy)
	if code, body := c.get("/api/letters"); code != http.StatusOK || strings.TrimSpace(body) != "[]" {
		t.Fatalf("dead letters before any was written: %d %s, want 200 []", code, body)
	}
	// A letter, so that reading them needs the partitions' offsets, not
	// only the metadata the client may still hold once the broker is gone.
	kb := kafkaconn.Broker{Addrs: []string{addr}}
	if err := kb.EnsureTopics(context.Background(), 1, e.Topics().DLQ()); err != nil {
		t.Fatal(err)
	}
	letter := schema.DeadLetter{Reason: "step failed", JobID: "j0", Step: "vlm_analyze"}
	if _, err := kb.Client(10*time.Second).Produce(context.Background(), &kafka.ProduceRequest{Topic: e.Topics().DLQ(), RequiredAcks: kafka.RequireAll,
		Records: kafka.NewRecordReader(kafka.Record{Key: kafka.NewBytes([]byte("j0")), Value: kafka.NewBytes(letter.Encode())})}); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		code, body := c.get("/api/letters")
		return code == http.StatusOK && strings.Contains(body, "step failed"), body
	})

	b.Close()
	t.Log("broker stopped")
	s := c.waitSample("with an error", func(s map[string]any) bool { return s["error"] != nil })
	msg, _ := s["error"].(string)
	t.Logf("overview says: %s", msg)
	if !strings.Contains(msg, "Kafka") || !strings.Contains(msg, addr) || strings.Contains(msg, "\n") {
		t.Errorf("the overview's error is not one sentence naming the broker: %q", msg)
	}
	if code, _ := c.get("/"); code != http.StatusOK {
		t.Errorf("the page itself: %d, want 200 while the broker is down", code)
	}
	if code, body := c.get("/api/jobs"); code != http.StatusOK || !strings.Contains(body, `"j1"`) {
		t.Errorf("/api/jobs comes from Postgres: %d %s, want 200 while the broker is down", code, body)
	}
	// The job's row comes from Postgres; its timeline, from the topics,
	// says why it cannot be read.
	code, body := c.get("/api/job?id=j1")
	var job struct {
		Job struct {
			JobID string `json:"job_id"`
		} `json:"job"`
		TimelineError string `json:"timeline_error"`
	}
	if code != http.StatusOK || json.Unmarshal([]byte(body), &job) != nil || job.Job.JobID != "j1" || !strings.Contains(job.TimelineError, "cannot reach a Kafka broker") {
		t.Errorf("/api/job while the broker is down: %d %s, want 200 with the job and the timeline's error", code, body)
	}
	code, body = c.get("/api/letters")
	var answer map[string]string
	if code != http.StatusBadGateway || json.Unmarshal([]byte(body), &answer) != nil || !strings.Contains(answer["error"], "Kafka") {
		t.Errorf("dead letters while the broker is down: %d %s, want 502 {\"error\": <one sentence naming Kafka>}", code, body)
	}
	t.Logf("/api/letters says: %s", answer["error"])
	// A topic that never existed: the client's cached metadata says so,
	// but no broker confirms it.
	if _, err := admin.DeadLetters(context.Background(), k, admin.DeadLettersOptions{Deployment: admin.Deployment{TopicPrefix: "never-written"}}); err == nil || !strings.Contains(err.Error(), "cannot reach a Kafka broker") {
		t.Errorf("dead letters of a topic that never existed, while the broker is down: %v, want the broker named unreachable", err)
	}
	if _, err := admin.Audit(context.Background(), k, nil, admin.AuditOptions{JobID: "j1", Deployment: admin.Deployment{TopicPrefix: "never-written"}}); err == nil || !strings.Contains(err.Error(), "cannot reach a Kafka broker") {
		t.Errorf("audit in topics that never existed, while the broker is down: %v, want the broker named unreachable", err)
	}

	// The embedded broker keeps no data without --data-dir: it comes back
	// empty, and says so.
	harness.StartBroker(t, broker.Config{Listen: addr})
	t.Log("broker back")
	c.waitSample("with a report after the outage", healthy)
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		code, body := c.get("/api/letters")
		return code == http.StatusOK && strings.TrimSpace(body) == "[]", body
	})
}

// consoleProbe is a console under test, served over HTTP, with its
// overview's stream read the way the page reads it.
type consoleProbe struct {
	t       *testing.T
	srv     *httptest.Server
	samples chan map[string]any
}

// openConsole starts a console of cfg (sampling every 200 ms, logging
// nowhere) and its server, both stopped at the test's end.
func openConsole(t *testing.T, cfg console.Config) *consoleProbe {
	t.Helper()
	cfg.Sample, cfg.Log = 200*time.Millisecond, slog.New(slog.DiscardHandler)
	con, err := console.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	harness.Go(t, ctx, "console", con.Run)
	c := &consoleProbe{t: t, srv: httptest.NewServer(con.Handler()), samples: make(chan map[string]any, 64)}
	t.Cleanup(c.srv.Close)

	// The stream ends before the server closes: cleanups run last first.
	sctx, stopStream := context.WithCancel(ctx)
	t.Cleanup(stopStream)
	req, _ := http.NewRequestWithContext(sctx, http.MethodGet, c.srv.URL+"/api/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var s map[string]any
			if json.Unmarshal([]byte(data), &s) == nil {
				select {
				case c.samples <- s:
				default:
				}
			}
		}
	}()
	return c
}

// waitSample returns the first overview sample for which ok holds, within
// 60 s.
func (c *consoleProbe) waitSample(what string, ok func(s map[string]any) bool) map[string]any {
	c.t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		select {
		case s := <-c.samples:
			if ok(s) {
				return s
			}
		case <-deadline:
			c.t.Fatalf("no overview sample %s within 60s", what)
		}
	}
}

// get fetches path from the console and returns the status and body.
func (c *consoleProbe) get(path string) (int, string) {
	c.t.Helper()
	resp, err := http.Get(c.srv.URL + path)
	if err != nil {
		c.t.Fatal(err)
	}
	return resp.StatusCode, readBody(c.t, resp)
}
