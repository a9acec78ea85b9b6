// Command modelstep is the step that TestModel's workers run (exec
// executor). Its behaviour is a pure function of the job's payload and
// attempt number, so the test's reference model can predict every attempt:
//
//	{"fail": {"yolo_detect": 2}}   attempts 1 and 2 of each attempt chain of yolo_detect fail (exit 1)
//	{"perm": {"planner": true}}    planner fails permanently (exit 65)
//	{"sleep_ms": {"overlay": 3000}} overlay sleeps 3 s first (long enough to cancel or to outlive a lease)
//
// It appends one line when it starts and one when it ends to the file named
// by MODEL_STEP_LOG ("start|end UNIX_NANOS JOB STEP ATTEMPT CHAIN PID
// [done|fail|perm]"), so the test can count executions and see when a
// stopped step really stopped.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"time"
)

func main() {
	var job struct {
		JobID   string          `json:"job_id"`
		Step    string          `json:"step"`
		Attempt int             `json:"attempt"`
		Chain   int             `json:"chain"`
		Payload json.RawMessage `json:"payload"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&job); err != nil {
		fmt.Fprintln(os.Stderr, "modelstep: read job:", err)
		os.Exit(2)
	}
	// The environment names the attempt too; they must agree.
	if a, err := strconv.Atoi(os.Getenv("JOBSTREAM_ATTEMPT")); err != nil || a != job.Attempt {
		fmt.Fprintf(os.Stderr, "modelstep: JOBSTREAM_ATTEMPT=%q but the job says attempt %d\n", os.Getenv("JOBSTREAM_ATTEMPT"), job.Attempt)
		os.Exit(2)
	}
	var p struct {
		Fail  map[string]int  `json:"fail"`
		Perm  map[string]bool `json:"perm"`
		Sleep map[string]int  `json:"sleep_ms"`
	}
	if len(job.Payload) > 0 {
		_ = json.Unmarshal(job.Payload, &p) // a payload the test did not write behaves as {}
	}
	logLine := func(kind, how string) {
		path := os.Getenv("MODEL_STEP_LOG")
		if path == "" {
			return
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return
		}
		// One write of a short line: appends from concurrent steps do not interleave.
		f.WriteString(fmt.Sprintf("%s %d %s %s %d %d %d %s\n", kind, time.Now().UnixNano(), job.JobID, job.Step, job.Attempt, job.Chain, os.Getpid(), how))
		f.Close()
	}
	logLine("start", "-")
	if ms := p.Sleep[job.Step]; ms > 0 {
		time.Sleep(time.Duration(ms) * time.Millisecond)
	}
	switch {
	case p.Perm[job.Step]:
		logLine("end", "perm")
		fmt.Fprintf(os.Stderr, "planned permanent failure of %s\n", job.Step)
		os.Exit(65)
	case job.Attempt <= p.Fail[job.Step]:
		logLine("end", "fail")
		fmt.Fprintf(os.Stderr, "planned failure of %s attempt %d\n", job.Step, job.Attempt)
		os.Exit(1)
	}
	logLine("end", "done")
	fmt.Printf("{\"step\":%q,\"attempt\":%d}\n", job.Step, job.Attempt)
}
