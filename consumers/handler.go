package consumers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"
)

// Job is what a step's handler is given: the job's identity, its input and
// the results of the steps before it.
type Job struct {
	JobID   string          `json:"job_id"`
	Step    string          `json:"step"`
	Attempt int             `json:"attempt"`
	Payload json.RawMessage `json:"payload"`
	Results json.RawMessage `json:"results"`
	// GPU is the device this member runs on ("" when not GPU-bound).
	GPU string `json:"gpu,omitempty"`
}

// Handler runs one step of one job and returns its result, a JSON value that
// is stored under the step's name in the job's results. An error wrapped by
// Permanent fails the job at once; any other error is retried.
type Handler func(ctx context.Context, job Job) (json.RawMessage, error)

type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent marks err as a failure that retrying cannot fix.
func Permanent(err error) error { return permanentError{err} }

// IsPermanent reports whether err was marked by Permanent.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

// ExitPermanent is the exit code with which an exec step says "do not retry".
const ExitPermanent = 65

// maxStdout bounds the result an exec step may print.
const maxStdout = 16 << 20

// Exec returns a Handler that runs argv (no shell) with the job as JSON on
// stdin, and takes its stdout, which must be JSON, as the result. The step
// sees JOBSTREAM_JOB_ID, JOBSTREAM_STEP, JOBSTREAM_ATTEMPT and, on a GPU
// member, CUDA_VISIBLE_DEVICES. Exit code 0 is success, ExitPermanent a
// permanent failure, anything else a retriable one; the tail of stderr is
// the error. When ctx ends, the step's whole process group is killed.
func Exec(argv ...string) Handler {
	return func(ctx context.Context, job Job) (json.RawMessage, error) {
		in, err := json.Marshal(job)
		if err != nil {
			return nil, Permanent(fmt.Errorf("encode job: %w", err))
		}
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		cmd.WaitDelay = 2 * time.Second
		cmd.Env = append(os.Environ(),
			"JOBSTREAM_JOB_ID="+job.JobID,
			"JOBSTREAM_STEP="+job.Step,
			"JOBSTREAM_ATTEMPT="+strconv.Itoa(job.Attempt),
		)
		if job.GPU != "" {
			cmd.Env = append(cmd.Env, "CUDA_VISIBLE_DEVICES="+job.GPU)
		}
		cmd.Stdin = bytes.NewReader(in)
		stdout := &capped{max: maxStdout}
		stderr := &tail{max: 4096}
		cmd.Stdout, cmd.Stderr = stdout, stderr
		err = cmd.Run()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("step stopped: %w", context.Cause(ctx))
		}
		if err != nil {
			msg := fmt.Sprintf("%s: %v", argv[0], err)
			if t := bytes.TrimSpace(stderr.buf); len(t) > 0 {
				msg += ": " + string(t)
			}
			var ee *exec.ExitError
			if errors.As(err, &ee) && ee.ExitCode() == ExitPermanent {
				return nil, Permanent(errors.New(msg))
			}
			return nil, errors.New(msg)
		}
		if stdout.over {
			return nil, fmt.Errorf("%s printed over %d bytes on stdout; a result must be smaller", argv[0], maxStdout)
		}
		out := bytes.TrimSpace(stdout.buf)
		if len(out) == 0 {
			return json.RawMessage("null"), nil
		}
		if !json.Valid(out) {
			return nil, fmt.Errorf("%s printed no JSON on stdout (starts %.80q)", argv[0], out)
		}
		return json.RawMessage(out), nil
	}
}

// capped keeps at most max bytes and remembers whether more came.
type capped struct {
	buf  []byte
	max  int
	over bool
}

func (c *capped) Write(p []byte) (int, error) {
	n := len(p)
	if room := c.max - len(c.buf); room < len(p) {
		c.over = true
		p = p[:max(room, 0)]
	}
	c.buf = append(c.buf, p...)
	return n, nil
}

// tail keeps the last max bytes written.
type tail struct {
	buf []byte
	max int
}

func (t *tail) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
	return len(p), nil
}
