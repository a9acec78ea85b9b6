package consumers_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/ops/harness"
)

// TestHTTPJobIDHeaders: with the http executor a job id that is no valid
// header value (a newline, non-ASCII) still completes: X-Jobstream-Job-Id
// and Idempotency-Key carry it percent-encoded, and url.PathUnescape of the
// header gives back the id of the body. A plain id goes as it is; an id
// holding '%' is encoded, so that no two ids share a header value.
func TestHTTPJobIDHeaders(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	startReader(t, e)
	type seen struct{ id, key string }
	var mu sync.Mutex
	got := map[string][]seen{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var job consumers.Job
		if err := json.NewDecoder(r.Body).Decode(&job); err != nil {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		mu.Lock()
		got[job.JobID] = append(got[job.JobID], seen{r.Header.Get("X-Jobstream-Job-Id"), r.Header.Get("Idempotency-Key")})
		mu.Unlock()
		fmt.Fprint(w, `{"ok": true}`)
	}))
	t.Cleanup(srv.Close)
	startWorker(t, e, consumers.Config{Handler: consumers.HTTP(srv.URL + "/step")})

	want := map[string]string{ // job id → X-Jobstream-Job-Id
		"a\nb":          "a%0Ab",
		"café-画像":       "caf%C3%A9-%E7%94%BB%E5%83%8F",
		"tab\tand\x7f":  "tab%09and%7F",
		" padded ":      "%20padded%20",
		"50%":           "50%25",
		"a%0Ab":         "a%250Ab",
		"plain id/1-ok": "plain id/1-ok",
	}
	var ids []string
	for id := range want {
		ids = append(ids, id)
	}
	insertJobs(t, e, ids...)
	for _, id := range ids {
		waitJob(t, e, id, step, "done", 60*time.Second)
	}
	mu.Lock()
	for _, id := range ids {
		calls := got[id]
		if len(calls) != 1 {
			t.Errorf("job %q was POSTed %d times, want once: %q", id, len(calls), calls)
			continue
		}
		c := calls[0]
		if c.id != want[id] || c.key != want[id]+"/"+step+"/1" {
			t.Errorf("job %q: X-Jobstream-Job-Id %q, Idempotency-Key %q; want %q and %q", id, c.id, c.key, want[id], want[id]+"/"+step+"/1")
		}
		if dec, err := url.PathUnescape(c.id); err != nil || dec != id {
			t.Errorf("job %q: url.PathUnescape(%q) = %q, %v; want the id", id, c.id, dec, err)
		}
	}
	mu.Unlock()
	checkOneCompletion(t, e, ids...)
}
