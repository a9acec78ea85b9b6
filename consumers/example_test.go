package consumers_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jobstream/jobstream/consumers"
)

// A step written in Go: register a Handler per step and build the worker of
// one of them. The handler reads the results of the steps before it from
// job.Results and returns its own result as JSON; an error marked Permanent
// fails the job at once, any other error is retried.
func Example_handler() {
	handlers := map[string]consumers.Handler{
		"vlm_analyze": func(ctx context.Context, job consumers.Job) (json.RawMessage, error) {
			var before struct {
				ImgGen struct {
					URL string `json:"url"`
				} `json:"img_gen"`
			}
			if err := json.Unmarshal(job.Results, &before); err != nil {
				return nil, consumers.Permanent(fmt.Errorf("results: %w", err))
			}
			if before.ImgGen.URL == "" {
				return nil, consumers.Permanent(errors.New("img_gen left no image"))
			}
			// A real step would call its model here, honouring ctx.
			return json.Marshal(map[string]any{"caption": "a cat", "image": before.ImgGen.URL, "attempt": job.Attempt})
		},
	}

	cfg := consumers.Config{
		DatabaseURL: "postgres://jobstream@localhost:5432/jobstream",
		Brokers:     []string{"localhost:9092"},
		Step:        "vlm_analyze", // consumes jobs.img_gen, the step before it
		Handler:     handlers["vlm_analyze"],
		Concurrency: 4,
		Lease:       time.Minute,
	}
	w, err := consumers.New(cfg) // checks cfg; connects nothing
	fmt.Println("worker:", w != nil, err)
	// Then: err = w.Run(ctx) until ctx is cancelled.

	// The first step has no worker: jobs enter the pipeline done with it.
	bad := cfg
	bad.Step = "img_gen"
	_, err = consumers.New(bad)
	fmt.Println("img_gen:", err != nil)

	// A handler is a plain function, so it is tested without Postgres or Kafka.
	h := handlers["vlm_analyze"]
	out, err := h(context.Background(), consumers.Job{JobID: "j1", Step: "vlm_analyze", Attempt: 1,
		Payload: json.RawMessage(`{}`), Results: json.RawMessage(`{"img_gen": {"url": "s3://img/j1.png"}}`)})
	fmt.Println(string(out), err)
	_, err = h(context.Background(), consumers.Job{JobID: "j2", Step: "vlm_analyze", Attempt: 1,
		Payload: json.RawMessage(`{}`), Results: json.RawMessage(`{}`)})
	fmt.Println("permanent:", consumers.IsPermanent(err), err)

	// Output:
	// worker: true <nil>
	// img_gen: true
	// {"attempt":1,"caption":"a cat","image":"s3://img/j1.png"} <nil>
	// permanent: true img_gen left no image
}

// The defaults a zero Config field takes.
func ExampleConfig_WithDefaults() {
	c := consumers.Config{Step: "yolo_detect"}.WithDefaults()
	fmt.Println(c.Pipeline, "|", c.TopicPrefix, c.Partitions, c.Concurrency, c.Lease, c.MaxAttempts, c.Grace, c.Timeout)
	// Output: img_gen → vlm_analyze → yolo_detect → planner → overlay | jobs 12 1 30s 3 30s 0s
}

// The executors: Exec runs a program per job (the job as JSON on stdin, the
// result as JSON on stdout), HTTP POSTs each job to a URL. New refuses one
// that cannot run, with the reason, before any job is taken.
func Example_executors() {
	cfg := consumers.Config{
		DatabaseURL: "postgres://jobstream@localhost:5432/jobstream",
		Brokers:     []string{"localhost:9092"},
		Step:        "yolo_detect",
		GPUs:        []string{"0", "1"}, // one member per GPU; the step sees CUDA_VISIBLE_DEVICES
	}
	for _, h := range []consumers.Handler{
		consumers.Exec("/bin/sh", "-c", "cat >/dev/null; echo '{\"boxes\": []}'"),
		consumers.HTTP("http://detector.internal:8080/detect"),
		consumers.Exec(),
		consumers.Exec("./no-such-step.sh"),
		consumers.HTTP("detector.internal:8080"),
	} {
		cfg.Handler = h
		_, err := consumers.New(cfg)
		fmt.Println(err)
	}
	// Output:
	// <nil>
	// <nil>
	// no step command given: pass the command and its arguments, e.g. ./step.sh
	// step command "./no-such-step.sh" cannot be run: no such file or directory
	// step URL "detector.internal:8080" is not an absolute http:// or https:// URL
}
