// Package console is jobstream's web console: the pipeline drawn with its
// live counts and an hour of charts, jobs by step and status, each job's
// timeline, the dead letters, and the operator's actions (retry, replay,
// cancel) behind a token. It reads and acts only through ops/admin, the
// functions the command line calls, and its pages, styles and scripts are
// embedded in the binary.
package console

import (
	"context"
	"crypto/rand"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jobstream/jobstream/ops/admin"
	"github.com/jobstream/jobstream/schema"
)

//go:embed static
var static embed.FS

// Config configures a Console.
type Config struct {
	// Pool and Kafka reach the deployment (required).
	Pool  *pgxpool.Pool
	Kafka *admin.Kafka
	admin.Deployment
	// Slot is the reader's replication slot (default admin.SlotDefault).
	Slot string
	// Token, when set, allows actions to requests that carry it (header
	// X-Jobstream-Token); without it the console is read-only.
	Token string
	// Images is a folder of images the pipeline writes (the demo's overlay
	// PNGs): a result that names a PNG in it is shown inline. "" shows none.
	Images string
	// Sample is how often the overview samples the status (default 2s); an
	// hour of samples is kept for the charts.
	Sample time.Duration
	// Log receives one line per action (default slog.Default()).
	Log *slog.Logger
}

// Console serves the web console. Run samples the status for the overview
// and its charts; Handler serves the pages and the API.
type Console struct {
	cfg  Config
	csrf string // per process, in the page; every action must echo it

	mu      sync.Mutex
	last    *sample
	history []point
	subs    map[chan []byte]struct{}
}

// sample is one status sample as the pages receive it.
type sample struct {
	Report   *admin.StatusReport `json:"report"`
	Point    point               `json:"point"`
	ReadOnly bool                `json:"read_only"`
	Error    string              `json:"error,omitempty"`
}

// point is one sample of the charts.
type point struct {
	At         time.Time `json:"at"`
	Throughput float64   `json:"throughput"` // runs done per second, all steps
	LatencyMs  float64   `json:"latency_ms"` // the slowest step's commit→claim p50
	Lag        int64     `json:"lag"`        // events not yet committed, all steps
	done       int64
}

// historyLen is an hour of samples at the default interval.
const historyLen = 1800

// New returns a console for cfg.
func New(cfg Config) (*Console, error) {
	if cfg.Pool == nil || cfg.Kafka == nil {
		return nil, errors.New("console: Pool and Kafka are required")
	}
	if cfg.Sample <= 0 {
		cfg.Sample = 2 * time.Second
	}
	if cfg.Slot == "" {
		cfg.Slot = admin.SlotDefault
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	return &Console{cfg: cfg, csrf: hex.EncodeToString(b), subs: map[chan []byte]struct{}{}}, nil
}

// Run samples the status every Config.Sample until ctx ends, keeping an
// hour of points and sending each sample to the open overviews.
func (c *Console) Run(ctx context.Context) error {
	t := time.NewTicker(c.cfg.Sample)
	defer t.Stop()
	for {
		c.sampleOnce(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (c *Console) sampleOnce(ctx context.Context) {
	sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	rep, err := admin.Status(sctx, c.cfg.Pool, c.cfg.Kafka, admin.StatusOptions{Deployment: c.cfg.Deployment, Slot: c.cfg.Slot})
	s := &sample{ReadOnly: c.cfg.Token == ""}
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		s.Error = err.Error()
	} else {
		s.Report = rep
		s.Point = c.record(rep)
	}
	msg, _ := json.Marshal(s)
	c.mu.Lock()
	c.last = s
	for ch := range c.subs {
		select {
		case ch <- msg:
		default: // a slow page skips a sample
		}
	}
	c.mu.Unlock()
}

// record adds rep to the history and returns its point.
func (c *Console) record(rep *admin.StatusReport) point {
	p := point{At: rep.At}
	for _, s := range rep.Steps {
		p.done += s.Done
		p.Lag += s.Lag
		if s.P50ms != nil && *s.P50ms > p.LatencyMs {
			p.LatencyMs = *s.P50ms
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := len(c.history); n > 0 {
		prev := c.history[n-1]
		if dt := p.At.Sub(prev.At).Seconds(); dt > 0 && p.done >= prev.done {
			p.Throughput = float64(p.done-prev.done) / dt
		}
	}
	c.history = append(c.history, p)
	if len(c.history) > historyLen {
		c.history = c.history[len(c.history)-historyLen:]
	}
	return p
}

// Handler serves the console's pages and API.
func (c *Console) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", c.page)
	mux.Handle("GET /static/", http.FileServerFS(static))
	mux.HandleFunc("GET /api/events", c.events)
	mux.HandleFunc("GET /api/history", c.getHistory)
	mux.HandleFunc("GET /api/info", c.info)
	mux.HandleFunc("GET /api/jobs", c.jobs)
	mux.HandleFunc("GET /api/job", c.job)
	mux.HandleFunc("GET /api/letters", c.letters)
	mux.HandleFunc("GET /api/image", c.image)
	mux.HandleFunc("POST /api/cancel", c.action(c.cancel))
	mux.HandleFunc("POST /api/retry", c.action(c.retry))
	mux.HandleFunc("POST /api/replay", c.action(c.replay))
	return headers(mux)
}

// headers sets the security headers of every answer: no framing, no
// sniffing, and scripts and styles from this origin only.
func headers(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "no-referrer")
		h.ServeHTTP(w, r)
	})
}

// page serves the single page, with the CSRF value it must send back.
func (c *Console) page(w http.ResponseWriter, _ *http.Request) {
	b, err := static.ReadFile("static/index.html")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	html := strings.Replace(string(b), "{{csrf}}", c.csrf, 1)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	io.WriteString(w, html)
}

// events streams the status samples as server-sent events, the last one at once.
func (c *Console) events(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	ch := make(chan []byte, 4)
	c.mu.Lock()
	c.subs[ch] = struct{}{}
	var first []byte
	if c.last != nil {
		first, _ = json.Marshal(c.last)
	}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.subs, ch)
		c.mu.Unlock()
	}()
	send := func(msg []byte) bool {
		_, err := fmt.Fprintf(w, "event: status\ndata: %s\n\n", msg)
		fl.Flush()
		return err == nil
	}
	if first != nil && !send(first) {
		return
	}
	keep := time.NewTicker(15 * time.Second)
	defer keep.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case msg := <-ch:
			if !send(msg) {
				return
			}
		case <-keep.C:
			if _, err := io.WriteString(w, ": keep-alive\n\n"); err != nil {
				return
			}
			fl.Flush()
		}
	}
}

// info tells the page the pipeline's steps and whether it may act.
func (c *Console) info(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"steps": c.steps(), "read_only": c.cfg.Token == ""})
}

func (c *Console) steps() []string {
	if p := c.cfg.Pipeline; len(p.Steps) > 0 {
		return p.Steps
	}
	return schema.DefaultPipeline().Steps
}

func (c *Console) getHistory(w http.ResponseWriter, _ *http.Request) {
	c.mu.Lock()
	h := append([]point(nil), c.history...)
	c.mu.Unlock()
	writeJSON(w, http.StatusOK, h)
}

func (c *Console) jobs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	page, err := admin.Jobs(r.Context(), c.cfg.Pool, admin.JobsOptions{Step: q.Get("step"), Status: q.Get("status"),
		Search: strings.TrimSpace(q.Get("q")), After: q.Get("after")})
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

// jobView is a job page: the row, its timeline from the topics and runs.
type jobView struct {
	Job      *admin.JobDetail   `json:"job"`
	Timeline []admin.AuditEntry `json:"timeline"`
	// TimelineError says why the timeline could not be read (the brokers
	// are down, say); the job's row, from Postgres, is shown all the same.
	TimelineError string   `json:"timeline_error,omitempty"`
	Steps         []string `json:"steps"`
	Images        []string `json:"images"`
}

func (c *Console) job(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	j, err := admin.Job(r.Context(), c.cfg.Pool, id)
	if err != nil {
		writeError(w, err)
		return
	}
	v := jobView{Job: j, Timeline: []admin.AuditEntry{}, Steps: c.steps(), Images: c.imagesIn(j.Results)}
	if tl, err := admin.Audit(r.Context(), c.cfg.Kafka, c.cfg.Pool, admin.AuditOptions{JobID: id, Deployment: c.cfg.Deployment}); err != nil {
		v.TimelineError = err.Error()
	} else {
		v.Timeline = tl
	}
	writeJSON(w, http.StatusOK, v)
}

func (c *Console) letters(w http.ResponseWriter, r *http.Request) {
	ls, err := admin.DeadLetters(r.Context(), c.cfg.Kafka, admin.DeadLettersOptions{Deployment: c.cfg.Deployment, Limit: 200})
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ls)
}

// imagesIn returns the strings of results that name a PNG in the images
// folder, as /api/image serves them.
func (c *Console) imagesIn(results json.RawMessage) []string {
	out := []string{}
	if c.cfg.Images == "" {
		return out
	}
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case string:
			if _, ok := c.imagePath(v); ok {
				out = append(out, v)
			}
		case map[string]any:
			for _, x := range v {
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	var v any
	if json.Unmarshal(results, &v) == nil {
		walk(v)
	}
	return out
}

// imagePath returns the file p names if it is a PNG inside the images
// folder; anything else (another folder, "..", another type) is refused.
func (c *Console) imagePath(p string) (string, bool) {
	if c.cfg.Images == "" || !strings.HasSuffix(strings.ToLower(p), ".png") {
		return "", false
	}
	root, err := filepath.Abs(c.cfg.Images)
	if err != nil {
		return "", false
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", false
	}
	rel, err := filepath.Rel(root, abs)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return "", false
	}
	st, err := os.Stat(abs)
	if err != nil || !st.Mode().IsRegular() {
		return "", false
	}
	return abs, true
}

func (c *Console) image(w http.ResponseWriter, r *http.Request) {
	p, ok := c.imagePath(r.URL.Query().Get("path"))
	if !ok {
		http.Error(w, "no such image", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "image/png")
	http.ServeFile(w, r, p)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// writeError answers err: the caller's mistake is 400, a missing job 404,
// anything else 502 (Postgres or the brokers failed).
func writeError(w http.ResponseWriter, err error) {
	code := http.StatusBadGateway
	switch {
	case admin.IsInvalid(err):
		code = http.StatusBadRequest
	case errors.Is(err, admin.ErrNoSuchJob):
		code = http.StatusNotFound
	}
	writeJSON(w, code, map[string]string{"error": err.Error()})
}
