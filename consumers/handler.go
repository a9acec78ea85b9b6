package consumers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"reflect"
	"runtime"
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

	ctx context.Context // this job's own end, in a batch
}

// Context returns the job's own context in a batch: it ends when this job
// is cancelled, times out or loses its lease, while the batch's context
// ends only once every job of the batch has. Outside a batch it is
// context.Background().
func (j Job) Context() context.Context {
	if j.ctx == nil {
		return context.Background()
	}
	return j.ctx
}

// Handler runs one step of one job and returns its result, a JSON value that
// is stored under the step's name in the job's results; an empty result is
// stored as null. An error wrapped by Permanent fails the job at once; any
// other error is retried. A Handler must return soon after ctx ends (step
// timeout, lost lease, shutdown past the grace period): until it does, its
// member starts no other step.
type Handler func(ctx context.Context, job Job) (json.RawMessage, error)

type permanentError struct{ err error }

func (e permanentError) Error() string {
	if e.err == nil {
		return "permanent failure"
	}
	return e.err.Error()
}

func (e permanentError) Unwrap() error { return e.err }

// Permanent marks err as a failure that retrying cannot fix. Permanent(nil)
// is still a failure, reported as "permanent failure".
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
// the error. The step runs in its own process group: when ctx ends (timeout,
// lost lease, shutdown) the whole group is killed, and when the worker
// process dies, even by SIGKILL, the step is killed with it.
//
// An empty argv, or an argv[0] that cannot be found, gives a Handler that
// New refuses with the reason (and that fails every job permanently if
// called directly).
func Exec(argv ...string) Handler {
	path, err := lookCommand(argv)
	if err != nil {
		return invalid(err)
	}
	argv = append([]string(nil), argv...)
	return func(ctx context.Context, job Job) (json.RawMessage, error) {
		return runExec(ctx, path, argv, job)
	}
}

// invalid returns the Handler of a constructor given something it cannot
// run: every call fails permanently with err, and New refuses it. (Not
// inlined: every Handler it returns must share its code, see isInvalid.)
//
//go:noinline
func invalid(err error) Handler {
	return func(context.Context, Job) (json.RawMessage, error) { return nil, Permanent(err) }
}

// invalidPC is the code of every Handler invalid returns.
var invalidPC = reflect.ValueOf(invalid(nil)).Pointer()

// isInvalid reports whether h was made by invalid; calling it has no effect
// but returning its error.
func isInvalid(h Handler) bool { return reflect.ValueOf(h).Pointer() == invalidPC }

// lookCommand finds argv[0], or says why it cannot be run.
func lookCommand(argv []string) (string, error) {
	if len(argv) == 0 || argv[0] == "" {
		return "", errors.New("no step command given: pass the command and its arguments, e.g. ./step.sh")
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		if inner := errors.Unwrap(err); inner != nil {
			err = inner
		}
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return "", fmt.Errorf("step command %q cannot be run: %w", argv[0], err)
	}
	return path, nil
}

func runExec(ctx context.Context, path string, argv []string, job Job) (json.RawMessage, error) {
	in, err := json.Marshal(job)
	if err != nil {
		return nil, Permanent(fmt.Errorf("encode job: %w", err))
	}
	cmd := exec.CommandContext(ctx, path, argv[1:]...)
	cmd.Args[0] = argv[0]
	// Its own process group, so a stop kills the step's children too; and
	// SIGKILL when this thread dies, so a crashed worker leaves no step
	// holding a GPU while another member runs the job again.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
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
	// A step that prints past the bound is killed there: its output is not
	// drained, so gigabytes cost neither memory nor time.
	stdout := &capped{max: maxStdout, over: func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }}
	stderr := &tail{max: 4096}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	// Pdeathsig fires when the thread that forked the step exits; keep this
	// goroutine on its thread until the step is reaped.
	runtime.LockOSThread()
	err = cmd.Run()
	runtime.UnlockOSThread()
	if ctx.Err() != nil {
		return nil, fmt.Errorf("step stopped: %w", context.Cause(ctx))
	}
	if stdout.exceeded {
		return nil, fmt.Errorf("%s printed over %d bytes on stdout and was stopped; a result must be smaller", argv[0], maxStdout)
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
	out := bytes.TrimSpace(stdout.buf)
	if len(out) == 0 {
		return json.RawMessage("null"), nil
	}
	if !json.Valid(out) {
		return nil, noJSON(argv[0], out)
	}
	return json.RawMessage(out), nil
}

// noJSON explains a step's stdout that is not JSON, quoting its first bytes:
// the usual cause is a log line printed on stdout, where only the result
// belongs.
func noJSON(name string, out []byte) error {
	const fix = "stdout is for the JSON result alone; write logs to stderr"
	if i := bytes.LastIndexByte(out, '\n'); i >= 0 && json.Valid(out[i+1:]) {
		return fmt.Errorf("%s printed text before its JSON result on stdout (starts %.80q); %s", name, out, fix)
	}
	return fmt.Errorf("%s printed no JSON on stdout (starts %.80q); %s", name, out, fix)
}

// capped keeps at most max bytes; when more come it calls over, once.
type capped struct {
	buf      []byte
	max      int
	over     func()
	exceeded bool
}

func (c *capped) Write(p []byte) (int, error) {
	n := len(p)
	if room := c.max - len(c.buf); room < len(p) {
		if !c.exceeded && c.over != nil {
			c.over()
		}
		c.exceeded = true
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
