package console_test

import (
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/ops/admin"
	"github.com/jobstream/jobstream/ops/console"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
	"github.com/jobstream/jobstream/schema/kafkaconn"
)

func TestMain(m *testing.M) { harness.Main(m) }

const token = "s3cret-token"

// stack is a pipeline with the console in front of it.
type stack struct {
	e      *harness.Env
	url    string
	images string
}

// startStack runs a reader, one worker for every step (yolo_detect fails
// "flaky-*" jobs permanently on their first chain; overlay writes a PNG
// into the images folder and names it) and the console with the token.
func startStack(t *testing.T) *stack {
	e := harness.New(t)
	ctx := context.Background()
	harness.StartReader(t, ctx, cdc.Config{DatabaseURL: e.DatabaseURL, Brokers: e.Brokers, Slot: e.Slot, TopicPrefix: e.Prefix})
	images := filepath.Join(e.Dir, "images")
	os.MkdirAll(images, 0o755)
	var failedOnce sync.Map
	handler := func(_ context.Context, job consumers.Job) (json.RawMessage, error) {
		switch job.Step {
		case "yolo_detect":
			if strings.HasPrefix(job.JobID, "flaky-") {
				if _, again := failedOnce.LoadOrStore(job.JobID, true); !again {
					return nil, consumers.Permanent(fmt.Errorf("the detector refused %s", job.JobID))
				}
			}
		case "overlay":
			path := filepath.Join(images, strings.Map(func(r rune) rune {
				if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
					return r
				}
				return '_'
			}, job.JobID)+".png")
			if err := writePNG(path); err != nil {
				return nil, err
			}
			return json.Marshal(map[string]string{"png": path})
		}
		return json.Marshal(map[string]string{"by": job.Step})
	}
	steps := map[string]consumers.Handler{}
	for _, s := range schema.DefaultSteps[1:] {
		steps[s] = handler
	}
	w, err := consumers.New(consumers.Config{Pool: e.Pool(t), Brokers: e.Brokers, TopicPrefix: e.Prefix, Steps: steps,
		Concurrency: 4, Grace: time.Second, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	harness.Go(t, ctx, "worker", w.Run).WaitReady(t, w.Ready())
	con, err := console.New(console.Config{Pool: e.Pool(t), Kafka: admin.NewKafka(kafkaconn.Broker{Addrs: e.Brokers}),
		Deployment: admin.Deployment{TopicPrefix: e.Prefix}, Slot: e.Slot, Token: token, Images: images, Sample: 300 * time.Millisecond,
		Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	harness.Go(t, ctx, "console", con.Run)
	srv := httptest.NewServer(con.Handler())
	t.Cleanup(srv.Close)
	return &stack{e: e, url: srv.URL, images: images}
}

func writePNG(path string) error {
	img := image.NewRGBA(image.Rect(0, 0, 64, 40))
	for x := 8; x < 56; x++ {
		img.Set(x, 8, color.RGBA{255, 0, 0, 255})
		img.Set(x, 32, color.RGBA{255, 0, 0, 255})
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return png.Encode(f, img)
}

// browser starts headless Chromium for the test.
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is needed for the console's browser tests (.ci/run installs Debian's chromium): ", err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1400, 900))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	ctx, cancel2 := chromedp.NewContext(actx)
	t.Cleanup(cancel2)
	// The first call starts the browser for ctx's lifetime: without a
	// timeout, which would stop the browser with it.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// do runs browser actions with a bound on the whole call.
func do(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	if err := chromedp.Do(c, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// eval evaluates js in the page and returns its value.
func eval[T any](t *testing.T, ctx context.Context, what, js string) T {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	v, err := chromedp.Run(c, chromedp.Evaluate[T](js))
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// eventually evaluates js in the page until it returns true.
func eventually(t *testing.T, ctx context.Context, what, js string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !eval[bool](t, ctx, what, js) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not so within 60s (%s)", what, js)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestConsoleInABrowser drives the console in headless Chromium: the
// overview's counts move while jobs flow; searching a job opens its
// timeline; a failed job's retry without the token is refused and with it
// completes the job; a job id and payload holding markup render inert; the
// overlay's PNG shows inline. It writes screenshots of the overview and a
// job page (into docs/ with JOBSTREAM_UPDATE_DOCS=1).
func TestConsoleInABrowser(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	ctx := browser(t)
	do(t, ctx, "open the overview", chromedp.Navigate(s.url+"/"), chromedp.WaitVisible(chromedp.CSS(`[data-step="overlay"]`)))

	// The overview moves while jobs flow.
	doneAtOverlay := `(() => { const b = document.querySelector('[data-step="overlay"] .s-done b'); return b ? Number(b.textContent.replace(/,/g, "")) : 0 })()`
	insert := func(prefix string, n int) {
		s.e.Exec(t, `INSERT INTO jobs (job_id, current_step, status, payload) SELECT $1 || i, 'img_gen', 'done', '{"prompt": "a cat"}' FROM generate_series(1, $2) i`, prefix, n)
	}
	insert("a-", 30)
	eventually(t, ctx, "the overview shows the first jobs done", doneAtOverlay+` >= 1`)
	first := eval[int](t, ctx, "read the count", doneAtOverlay)
	insert("b-", 30)
	eventually(t, ctx, "the overview's count moves without a reload", fmt.Sprintf(`%s > %d`, doneAtOverlay, first))
	eventually(t, ctx, "all 60 done on the overview", doneAtOverlay+` == 60`)
	eventually(t, ctx, "the throughput chart has a line", `document.querySelectorAll('#charts polyline').length == 3`)
	shot(t, ctx, "console-overview.png")

	// The overview's count links to the jobs it counts, a page at a time.
	// The overview redraws its boxes at every sample: a click on a box
	// just replaced does nothing, so click until the jobs page is there.
	eventually(t, ctx, "open the done jobs of overlay", `(() => {
		if (document.querySelector('#jobs tbody tr td a')) return true;
		const box = document.querySelector('[data-step="overlay"] .s-done');
		if (box && !location.hash.startsWith('#/jobs')) box.click();
		return false })()`)
	eventually(t, ctx, "the first page holds 50 jobs and offers the next", `document.querySelectorAll('#jobs tbody tr').length == 50 && !document.getElementById('more').disabled`)
	do(t, ctx, "next page", chromedp.Click(chromedp.CSS(`#more`)))
	eventually(t, ctx, "the next page adds the other 10", `document.querySelectorAll('#jobs tbody tr').length == 60 && document.getElementById('more').disabled`)

	// Markup in a job id and its payload stays text.
	evil := `<script>window.pwned=1</script><img src=x onerror="window.pwned=2">`
	s.e.Exec(t, `INSERT INTO jobs (job_id, current_step, status, payload) VALUES ($1, 'img_gen', 'done', $2)`, evil,
		`{"note": "<img src=x onerror=\"window.pwned=3\">"}`)
	do(t, ctx, "open the job with markup in its id", chromedp.Navigate(s.url+"/#/job/"+url.PathEscape(evil)), chromedp.WaitVisible(chromedp.CSS(`#payload`)))
	shown := eval[string](t, ctx, "read the id", `document.getElementById('job-id').textContent`)
	inert := eval[bool](t, ctx, "look for markup", `window.pwned === undefined && document.querySelectorAll('main script, main img[src="x"]').length === 0`)
	if shown != evil || !inert {
		t.Errorf("a job id holding markup: shown %q, inert %v", shown, inert)
	}

	// Search opens the failed job's timeline; retry needs the token.
	insert("flaky-", 1)
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		n := s.e.Count(t, `SELECT count(*) FROM jobs WHERE job_id = 'flaky-1' AND status = 'failed'`)
		return n == 1, "flaky-1 has not failed yet"
	})
	do(t, ctx, "search the job", chromedp.Navigate(s.url+"/"), chromedp.WaitVisible(chromedp.CSS(`#search-q`)),
		chromedp.SendKeys(chromedp.CSS(`#search-q`), "flaky-1"), chromedp.Click(chromedp.CSS(`#search button`)), chromedp.WaitVisible(chromedp.CSS(`#timeline tbody tr`)))
	eventually(t, ctx, "the timeline shows the failed attempt", `[...document.querySelectorAll('#timeline td')].some(td => td.textContent === 'failed')`)
	do(t, ctx, "retry without the token", chromedp.Click(chromedp.CSS(`#a-retry`)))
	eventually(t, ctx, "the refusal is shown", `document.getElementById('toast').textContent.includes('wrong or missing token')`)
	if n := s.e.Count(t, `SELECT count(*) FROM jobs WHERE job_id = 'flaky-1' AND status = 'failed'`); n != 1 {
		t.Fatal("a retry without the token changed the job")
	}
	do(t, ctx, "enter the token", chromedp.SendKeys(chromedp.CSS(`#token`), token))
	eval[bool](t, ctx, "save the token", `document.getElementById('token').dispatchEvent(new Event('change'))`)
	do(t, ctx, "retry with the token", chromedp.Click(chromedp.CSS(`#a-retry`)))
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		n := s.e.Count(t, `SELECT count(*) FROM jobs WHERE job_id = 'flaky-1' AND current_step = 'overlay' AND status = 'done'`)
		return n == 1, "flaky-1 has not completed after the retry: " + s.e.Dump(t, `SELECT current_step, status, error FROM jobs WHERE job_id = 'flaky-1'`)
	})
	do(t, ctx, "open the finished job", chromedp.Navigate(s.url+"/#/job/flaky-1"), chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS(`.images img`)))
	eventually(t, ctx, "the overlay's PNG shows inline", `[...document.querySelectorAll('.images img')].every(i => i.complete && i.naturalWidth == 64)`)
	// The retry's rewind reaches the topic with the reader's next batch: reload until it shows.
	deadline := time.Now().Add(60 * time.Second)
	for !eval[bool](t, ctx, "look for the replay", `[...document.querySelectorAll('#timeline tr')].some(tr => ['rewind', 'replay'].includes(tr.dataset.kind))`) {
		if time.Now().After(deadline) {
			t.Fatal("the job's timeline shows no replay")
		}
		time.Sleep(500 * time.Millisecond)
		do(t, ctx, "reload the job", chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS(`#timeline`)))
	}
	shot(t, ctx, "console-job.png")
}

// shot writes a full-page screenshot: into docs/ with
// JOBSTREAM_UPDATE_DOCS=1, else into the test's folder.
func shot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	b, err := chromedp.Run(c, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if len(b) < 10_000 {
		t.Fatalf("screenshot %s is %d bytes", name, len(b))
	}
	dir := t.TempDir()
	if os.Getenv("JOBSTREAM_UPDATE_DOCS") != "" {
		dir = filepath.Join("..", "..", "docs")
	}
	if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestConsoleActionGuards: an action needs the page's CSRF value, a JSON
// body, no foreign Origin and the token; a console without a token is
// read-only; images outside the folder are refused; the database URL's
// password appears on no page.
func TestConsoleActionGuards(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	k := admin.NewKafka(kafkaconn.Broker{Addrs: e.Brokers})
	newServer := func(tok string) (*httptest.Server, string) {
		con, err := console.New(console.Config{Pool: e.Pool(t), Kafka: k, Deployment: admin.Deployment{TopicPrefix: e.Prefix}, Token: tok,
			Images: e.Dir, Log: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(con.Handler())
		t.Cleanup(srv.Close)
		return srv, pageCSRF(t, srv.URL)
	}
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('j1', 'img_gen', 'done')`)
	srv, csrf := newServer(token)
	ro, roCSRF := newServer("")
	post := func(base, path string, h map[string]string, body string) int {
		req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
		for k, v := range h {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	good := map[string]string{"Content-Type": "application/json", "X-CSRF-Token": csrf, "X-Jobstream-Token": token}
	with := func(k, v string) map[string]string {
		h := map[string]string{}
		for a, b := range good {
			h[a] = b
		}
		if v == "" {
			delete(h, k)
		} else {
			h[k] = v
		}
		return h
	}
	for _, c := range []struct {
		name string
		base string
		h    map[string]string
		want int
	}{
		{"no CSRF value", srv.URL, with("X-CSRF-Token", ""), http.StatusForbidden},
		{"wrong CSRF value", srv.URL, with("X-CSRF-Token", "0000"), http.StatusForbidden},
		{"no token", srv.URL, with("X-Jobstream-Token", ""), http.StatusUnauthorized},
		{"wrong token", srv.URL, with("X-Jobstream-Token", "guess"), http.StatusUnauthorized},
		{"form post", srv.URL, with("Content-Type", "application/x-www-form-urlencoded"), http.StatusUnsupportedMediaType},
		{"other site", srv.URL, with("Origin", "https://evil.example"), http.StatusForbidden},
		{"cross-site fetch", srv.URL, with("Sec-Fetch-Site", "cross-site"), http.StatusForbidden},
		{"read-only console", ro.URL, map[string]string{"Content-Type": "application/json", "X-CSRF-Token": roCSRF, "X-Jobstream-Token": token}, http.StatusForbidden},
		{"all there", srv.URL, good, http.StatusOK},
	} {
		if got := post(c.base, "/api/cancel", c.h, `{"job_id": "j1"}`); got != c.want {
			t.Errorf("%s: %d, want %d", c.name, got, c.want)
		}
	}
	if n := e.Count(t, `SELECT count(*) FROM jobs WHERE job_id = 'j1' AND status = 'cancelled'`); n != 1 {
		t.Error("the allowed cancel did not cancel j1")
	}
	for _, p := range []string{"/etc/passwd", e.Dir + "/../x.png", "/api/image?path=" + url.QueryEscape(e.Dir)} {
		resp, err := http.Get(srv.URL + "/api/image?path=" + url.QueryEscape(p))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("image %s: %d, want 404", p, resp.StatusCode)
		}
	}
	pw := "hunter2"
	for _, path := range []string{"/", "/api/info", "/api/jobs", "/api/job?id=j1", "/api/history"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		if b := readBody(t, resp); strings.Contains(b, pw) || strings.Contains(b, "postgres://") {
			t.Errorf("%s shows a database URL or password", path)
		}
	}
}

// readBody reads and closes an answer's body.
// pageCSRF loads the console's page at url and returns the CSRF value its
// actions must send.
func pageCSRF(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url + "/")
	if err != nil {
		t.Fatal(err)
	}
	page := readBody(t, resp)
	const meta = `name="csrf" content="`
	i := strings.Index(page, meta)
	if i < 0 {
		t.Fatalf("the page has no CSRF value:\n%s", page)
	}
	csrf := page[i+len(meta):]
	return csrf[:strings.IndexByte(csrf, '"')]
}

func readBody(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
