package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/schema"
)

// childEnv, when set, makes this program a worker process of scenario 4:
// its value is a workerSpec in JSON.
const childEnv = "JOBSTREAM_BENCH_WORKER"

// workerSpec is what a worker process runs.
type workerSpec struct {
	DatabaseURL string
	Brokers     []string
	Step        string
	Prefix      string
	Members     int
	// CPUProfile, when set, is where the process writes its CPU profile.
	CPUProfile string
}

// childMain runs one step's worker with a no-op in-process handler until
// SIGTERM, and returns the exit code.
func childMain() int {
	var spec workerSpec
	if err := json.Unmarshal([]byte(os.Getenv(childEnv)), &spec); err != nil {
		fmt.Fprintln(os.Stderr, "bench worker:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if spec.CPUProfile != "" {
		stopProfile, err := startCPUProfile(spec.CPUProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench worker:", err)
			return 1
		}
		defer stopProfile()
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	w, err := consumers.New(consumers.Config{
		DatabaseURL: spec.DatabaseURL, Brokers: spec.Brokers, Step: spec.Step, TopicPrefix: spec.Prefix,
		Pipeline: schema.DefaultPipeline(), Concurrency: spec.Members, Lease: 30 * time.Second, Grace: 5 * time.Second,
		Logger: log,
		Handler: func(context.Context, consumers.Job) (json.RawMessage, error) {
			return json.RawMessage(`{"ok":true}`), nil
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench worker:", err)
		return 2
	}
	if err := w.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "bench worker:", err)
		return 1
	}
	return 0
}
