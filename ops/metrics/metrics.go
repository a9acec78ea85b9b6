// Package metrics turns the counters (Stats) and hooks of cdc and consumers
// into Prometheus metrics, named jobstream_*, and serves them with
// /healthz and /readyz; cdc and consumers do not import Prometheus.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/consumers"
)

// The hooks this package implements.
var (
	_ cdc.HookProduced        = (*ReaderHooks)(nil)
	_ cdc.HookCommitAcked     = (*ReaderHooks)(nil)
	_ consumers.HookClaimed   = (*WorkerHooks)(nil)
	_ consumers.HookAttempted = (*WorkerHooks)(nil)
)

// NewRegistry returns a registry with the Go runtime's and the process's
// collectors.
func NewRegistry() *prometheus.Registry {
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

// RegisterReader exports a reader's counters.
func RegisterReader(reg *prometheus.Registry, r *cdc.Reader) {
	s := r.Stats()
	events := func(op string, v *atomic.Int64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "jobstream_reader_events_total",
			Help: "Change events acknowledged by the broker, by op.", ConstLabels: prometheus.Labels{"op": op}},
			func() float64 { return float64(v.Load()) })
	}
	reg.MustRegister(events("c", &s.Inserts), events("u", &s.Updates), events("d", &s.Deletes), events("r", &s.SnapshotReads), events("t", &s.Truncates))
	counterFunc(reg, "jobstream_reader_tombstones_total", "Tombstones (null values after deletes) acknowledged by the broker.", func() float64 { return float64(s.Tombstones.Load()) })
	counterFunc(reg, "jobstream_reader_dead_letters_total", "Rows sent to the dead-letter topic.", func() float64 { return float64(s.DeadLetters.Load()) })
	counterFunc(reg, "jobstream_reader_unroutable_total", "Rows no step can take (current_step null, empty, reserved or not in the pipeline), sent to the dead-letter topic.", func() float64 { return float64(s.Unroutable.Load()) })
	counterFunc(reg, "jobstream_reader_slot_gaps_total", "Slots found missing and created again: the changes between the old slot's position and the new one's were never streamed.", func() float64 { return float64(s.SlotGaps.Load()) })
	counterFunc(reg, "jobstream_reader_transactions_total", "Transactions decoded.", func() float64 { return float64(s.Transactions.Load()) })
	counterFunc(reg, "jobstream_reader_reconnects_total", "Replication sessions restarted after a failure.", func() float64 { return float64(s.Reconnects.Load()) })
	counterFunc(reg, "jobstream_reader_keepalive_replies_total", "Server keepalives answered at once.", func() float64 { return float64(s.KeepaliveReplies.Load()) })
	gaugeFunc(reg, "jobstream_reader_acked_lsn", "WAL position up to which every event is acknowledged (reported as flushed).", func() float64 { return float64(s.AckedLSN.Load()) })
	gaugeFunc(reg, "jobstream_reader_received_lsn", "Last WAL position received from Postgres.", func() float64 { return float64(s.ReceivedLSN.Load()) })
	gaugeFunc(reg, "jobstream_replication_lag_bytes", "WAL the slot retains because of this reader: server end minus acknowledged position.", func() float64 { return float64(s.LagBytes()) })
	gaugeFunc(reg, "jobstream_replication_lag_seconds", "Commit in Postgres to broker acknowledgement, for the last transaction.", s.LagSeconds)
	gaugeFunc(reg, "jobstream_reader_active", "1 while this reader holds its slot, 0 while it waits as standby.", func() float64 {
		if s.Active.Load() {
			return 1
		}
		return 0
	})
}

// ReaderHooks records a reader's hooks (cdc.HookProduced,
// cdc.HookCommitAcked) into histograms.
type ReaderHooks struct {
	produce     prometheus.Histogram
	batch       prometheus.Histogram
	commitToAck prometheus.Histogram
}

// NewReaderHooks registers the reader's histograms in reg; pass the result
// in cdc.Config.Hooks.
func NewReaderHooks(reg *prometheus.Registry) *ReaderHooks {
	m := &ReaderHooks{
		produce: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "jobstream_produce_seconds",
			Help: "How long the broker took to acknowledge one batch.", Buckets: latencyBuckets}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "jobstream_produce_batch_events",
			Help: "Events per produced batch.", Buckets: prometheus.ExponentialBuckets(1, 4, 8)}),
		commitToAck: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "jobstream_commit_to_ack_seconds",
			Help: "Commit in Postgres to the broker's acknowledgement of the transaction's last event.", Buckets: latencyBuckets}),
	}
	reg.MustRegister(m.produce, m.batch, m.commitToAck)
	return m
}

// OnProduced records a batch's produce latency and size.
func (m *ReaderHooks) OnProduced(events int, d time.Duration) {
	m.produce.Observe(d.Seconds())
	m.batch.Observe(float64(events))
}

// OnCommitAcked records a transaction's commit-to-acknowledgement latency.
func (m *ReaderHooks) OnCommitAcked(d time.Duration) { m.commitToAck.Observe(d.Seconds()) }

// WorkerHooks records a worker's hooks (consumers.HookClaimed,
// consumers.HookAttempted) into Prometheus.
type WorkerHooks struct {
	commitToClaim *prometheus.HistogramVec
	stepDuration  *prometheus.HistogramVec
	attempts      *prometheus.CounterVec
}

var latencyBuckets = []float64{.0005, .001, .002, .003, .005, .0075, .01, .015, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// NewWorkerHooks registers the worker's histograms and attempt counter in
// reg; pass the result in consumers.Config.Hooks.
func NewWorkerHooks(reg *prometheus.Registry) *WorkerHooks {
	m := &WorkerHooks{
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

// RegisterWorker exports the counters of a worker of step.
func RegisterWorker(reg *prometheus.Registry, w *consumers.Worker, step string) {
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
		{"jobstream_expired_leases_total", "Runs whose lease expired (their worker died or hung), closed by this worker's sweeper.", func() float64 { return float64(s.Expired.Load()) }},
		{"jobstream_released_runs_total", "Runs given back to other workers at a stop past the grace period.", func() float64 { return float64(s.Released.Load()) }},
		{"jobstream_worker_dead_letters_total", "Messages this worker wrote to the dead-letter topic.", func() float64 { return float64(s.DeadLetters.Load()) }},
		{"jobstream_group_rejoins_total", "Times the stall watchdog made the members rejoin the group.", func() float64 { return float64(s.Rejoins.Load()) }},
		{"jobstream_cancelled_runs_total", "Runs stopped or closed because the user cancelled their job (no retry, no dead letter).", func() float64 { return float64(s.Cancelled.Load()) }},
		{"jobstream_discarded_runs_total", "Runs stopped or closed because their job was moved or deleted under them (no retry, no dead letter).", func() float64 { return float64(s.Discarded.Load()) }},
		{"jobstream_pruned_runs_total", "Finished runs deleted from jobstream_runs by this worker's sweeper (--runs-retention).", func() float64 { return float64(s.Pruned.Load()) }},
		{"jobstream_serve_restarts_total", "Times a --serve process was started again after it exited, never said ready, or was stopped.", func() float64 { return float64(s.ServeRestarts.Load()) }},
	} {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: c.name, Help: c.help, ConstLabels: lbl}, c.f))
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "jobstream_runs_in_flight", Help: "Runs executing now.", ConstLabels: lbl},
		func() float64 { return float64(s.InFlight.Load()) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "jobstream_serve_crash_looping",
		Help: "Slots whose --serve process failed 3 or more times in a row, now (0 when all is well).", ConstLabels: lbl},
		func() float64 { return float64(s.ServeCrashLooping.Load()) }))
}

// WorkerReady is the readiness of a worker: every member joined its group,
// and no --serve process is crash-looping.
func WorkerReady(w *consumers.Worker) func() error {
	joined := ReadyWhen(w.Ready(), "worker")
	return func() error {
		if n := w.Stats().ServeCrashLooping.Load(); n > 0 {
			return fmt.Errorf("%d serve process(es) keep failing to start or keep exiting; see the worker's log", n)
		}
		return joined()
	}
}

// OnClaimed records a claim's commit-to-claim latency.
func (m *WorkerHooks) OnClaimed(step string, d time.Duration) {
	m.commitToClaim.WithLabelValues(step).Observe(d.Seconds())
}

// OnAttempted records an attempt's duration and outcome.
func (m *WorkerHooks) OnAttempted(step, outcome string, d time.Duration) {
	m.stepDuration.WithLabelValues(step, outcome).Observe(d.Seconds())
	m.attempts.WithLabelValues(step, outcome).Inc()
}

// Serve serves /metrics, /healthz (the process answers) and /readyz
// (ready() is nil) on l until ctx ends.
func Serve(ctx context.Context, l net.Listener, reg *prometheus.Registry, ready func() error, log *slog.Logger) error {
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

// ReadyWhen returns a readiness check that passes once ch is closed.
func ReadyWhen(ch <-chan struct{}, what string) func() error {
	return func() error {
		select {
		case <-ch:
			return nil
		default:
			return errors.New(what + " is still starting")
		}
	}
}
