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

	"github.com/jobstream/jobstream/ops/admin"
	"github.com/jobstream/jobstream/ops/console"
	"github.com/jobstream/jobstream/ops/harness"
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

	con, err := console.New(console.Config{Pool: pool, Kafka: admin.NewKafka(kafkaconn.Broker{Addrs: e.Brokers}),
		Deployment: admin.Deployment{TopicPrefix: e.Prefix}, Slot: e.Slot, Token: token, Images: e.Dir,
		Sample: 200 * time.Millisecond, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	harness.Go(t, ctx, "console", con.Run)
	srv := httptest.NewServer(con.Handler())
	t.Cleanup(srv.Close)

	// The overview's stream, read the way the page reads it (ended before
	// the server closes: cleanups run last first).
	sctx, stopStream := context.WithCancel(ctx)
	t.Cleanup(stopStream)
	samples := make(chan map[string]any, 64)
	req, _ := http.NewRequestWithContext(sctx, http.MethodGet, srv.URL+"/api/events", nil)
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
				case samples <- s:
				default:
				}
			}
		}
	}()
	waitSample := func(what string, ok func(s map[string]any) bool) map[string]any {
		t.Helper()
		deadline := time.After(60 * time.Second)
		for {
			select {
			case s := <-samples:
				if ok(s) {
					return s
				}
			case <-deadline:
				t.Fatalf("no overview sample %s within 60s", what)
			}
		}
	}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, readBody(t, resp)
	}
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
