package ops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/consumers"
)

// Metric names are prefixed jobstream_. cdc and consumers expose counters
// (Stats) and hooks (Observer); this file turns them into Prometheus metrics,
// so neither package imports Prometheus.

func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

func counterFunc(reg *prometheus.Registry, name, help string, f func() float64) {
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
}

func gaugeFunc(reg *prometheus.Registry, name, help string, f func() float64) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
}

// registerReader exports a reader's counters.
func registerReader(reg *prometheus.Registry, r *cdc.Reader) {
	s := r.Stats()
	counterFunc(reg, "jobstream_reader_events_total", "Change events acknowledged by the broker.", func() float64 { return float64(s.Events.Load()) })
	counterFunc(reg, "jobstream_reader_dead_letters_total", "Rows sent to the dead-letter topic.", func() float64 { return float64(s.DeadLetters.Load()) })
	counterFunc(reg, "jobstream_reader_transactions_total", "Transactions decoded.", func() float64 { return float64(s.Transactions.Load()) })
	counterFunc(reg, "jobstream_reader_reconnects_total", "Replication stream restarts.", func() float64 { return float64(s.Reconnects.Load()) })
	gaugeFunc(reg, "jobstream_reader_acked_lsn", "WAL position up to which every event is acknowledged (reported as flushed).", func() float64 { return float64(s.AckedLSN.Load()) })
	gaugeFunc(reg, "jobstream_reader_received_lsn", "Last WAL position received from Postgres.", func() float64 { return float64(s.ReceivedLSN.Load()) })
	gaugeFunc(reg, "jobstream_replication_lag_bytes", "Received minus acknowledged WAL position, in bytes.", func() float64 {
		rec, ack := s.ReceivedLSN.Load(), s.AckedLSN.Load()
		if rec < ack {
			return 0
		}
		return float64(rec - ack)
	})
}

// workerMetrics is a consumers.Observer that records into Prometheus.
type workerMetrics struct {
	commitToClaim *prometheus.HistogramVec
	stepDuration  *prometheus.HistogramVec
	attempts      *prometheus.CounterVec
}

var latencyBuckets = []float64{.0005, .001, .002, .003, .005, .0075, .01, .015, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

func newWorkerMetrics(reg *prometheus.Registry) *workerMetrics {
	m := &workerMetrics{
		commitToClaim: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "jobstream_commit_to_claim_seconds",
			Help: "Time from the trigger's commit in Postgres to the claim of the next step.", Buckets: latencyBuckets}, []string{"step"}),
		stepDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "jobstream_step_duration_seconds",
			Help: "How long one attempt of a step ran.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 12)}, []string{"step", "outcome"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "jobstream_attempts_total",
			Help: "Attempts by outcome: done, retried, failed, fenced, released."}, []string{"step", "outcome"}),
	}
	reg.MustRegister(m.commitToClaim, m.stepDuration, m.attempts)
	return m
}

// registerWorker exports a worker's counters.
func registerWorker(reg *prometheus.Registry, w *consumers.Worker, step string) {
	s := w.Stats()
	lbl := prometheus.Labels{"step": step}
	for _, c := range []struct {
		name, help string
		f          func() float64
	}{
		{"jobstream_claims_total", "Runs claimed.", func() float64 { return float64(s.Claims.Load()) }},
		{"jobstream_completions_total", "Runs completed (job moved to done).", func() float64 { return float64(s.Completions.Load()) }},
		{"jobstream_failures_total", "Jobs moved to failed.", func() float64 { return float64(s.Failures.Load()) }},
		{"jobstream_retries_total", "Attempts retried.", func() float64 { return float64(s.Retries.Load()) }},
		{"jobstream_fenced_results_total", "Results discarded because their attempt lost its run.", func() float64 { return float64(s.Fenced.Load()) }},
		{"jobstream_skipped_events_total", "Events that were no trigger or found nothing to claim.", func() float64 { return float64(s.Skipped.Load()) }},
	} {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: c.name, Help: c.help, ConstLabels: lbl}, c.f))
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "jobstream_runs_in_flight", Help: "Runs executing now.", ConstLabels: lbl},
		func() float64 { return float64(s.InFlight.Load()) }))
}

func (m *workerMetrics) Claimed(step string, d time.Duration) {
	m.commitToClaim.WithLabelValues(step).Observe(d.Seconds())
}

func (m *workerMetrics) Attempted(step, outcome string, d time.Duration) {
	m.stepDuration.WithLabelValues(step, outcome).Observe(d.Seconds())
	m.attempts.WithLabelValues(step, outcome).Inc()
}

// serveHTTP serves /metrics, /healthz (the process answers) and /readyz
// (ready() is nil) on addr until ctx ends. An empty addr serves nothing.
func serveHTTP(ctx context.Context, addr string, reg *prometheus.Registry, ready func() error, log *slog.Logger) error {
	if addr == "" {
		return nil
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--http-addr %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	log.Info("serving /metrics, /healthz, /readyz", "addr", l.Addr().String())
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// readyWhen returns a readiness check that passes once ch is closed.
func readyWhen(ch <-chan struct{}, what string) func() error {
	return func() error {
		select {
		case <-ch:
			return nil
		default:
			return errors.New(what + " is still starting")
		}
	}
}
