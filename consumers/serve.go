package consumers

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// StartTimeoutDefault is how long a serve process may take to say it is
// ready (load its model) by default.
const StartTimeoutDefault = 5 * time.Minute

// serveCancelGrace is how long a serve process has to answer a job it was
// told to stop (cancelled or timed out) before it is restarted.
const serveCancelGrace = 2 * time.Second

// crashLoopAfter is how many failed starts or exits in a row make a lane's
// process count as crash-looping.
const crashLoopAfter = 3

// Serve returns a BatchHandler that runs argv (no shell) as one long-lived
// process per lane — per GPU with CUDA_VISIBLE_DEVICES set, or one of
// Concurrency — started once, so that a model loads its weights once and
// not for every job. The protocol, in JSON lines:
//
//   - the process loads, then prints {"ready": true} on stdout; until then
//     (at most Config.StartTimeout) its member claims nothing, and lines
//     that are not that are logged and ignored;
//   - the worker writes each job as one line on stdin: the Job object, or
//     with Config.Batch above 1 a JSON array of Job objects;
//   - the process answers each job with one line (or one array of such
//     objects per line): {"job_id": …, "result": <JSON>} or {"job_id": …,
//     "error": "…", "permanent": true|false}, in any order;
//   - a job that ends early (cancelled, timed out, lost lease) is told as
//     {"cancel": "<job_id>"}; a process that has not answered it 2 s later
//     is restarted;
//   - stderr is the process's log: each line goes to the worker's log with
//     the job ids in flight.
//
// A process that exits fails only the jobs it had in flight (retried as
// usual) and is started again, at once after a run that answered jobs and
// with growing backoff (1 s up to 1 min) after one that did not; three
// failures in a row count as a crash loop (Stats.ServeCrashLooping, the
// worker's /readyz). A member none of whose processes is ready leaves its
// consumer groups, so the other members take its work. The process sees
// JOBSTREAM_STEP, JOBSTREAM_LANE, JOBSTREAM_BATCH and, on a GPU member,
// CUDA_VISIBLE_DEVICES; it is killed with its process group when the
// worker stops or dies.
//
// An empty argv, or an argv[0] that cannot be found, gives a BatchHandler
// that New refuses with the reason.
func Serve(argv ...string) BatchHandler {
	path, err := lookCommand(argv)
	if err != nil {
		return invalidBatch{err}
	}
	return &serveHandler{path: path, argv: append([]string(nil), argv...)}
}

type serveHandler struct {
	path string
	argv []string
}

// HandleBatch is not called: a worker runs Serve's processes in its lanes.
func (s *serveHandler) HandleBatch(_ context.Context, jobs []Job) []Result {
	return invalidBatch{errors.New("a Serve handler runs only inside a Worker")}.HandleBatch(nil, jobs)
}

func (s *serveHandler) openLane(spec laneSpec) laneExec {
	return &serveLane{h: s, spec: spec, changed: make(chan struct{})}
}

// serveLane is one lane's process, started again whenever it exits.
type serveLane struct {
	h    *serveHandler
	spec laneSpec

	mu       sync.Mutex
	proc     *serveProc // the running process, once ready; nil otherwise
	changed  chan struct{}
	failures int // failed starts or exits in a row
}

func (l *serveLane) ready() (bool, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.proc != nil, l.changed
}

func (l *serveLane) setProc(p *serveProc) {
	l.mu.Lock()
	l.proc = p
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

func (l *serveLane) current() *serveProc {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.proc
}

// supervise starts the process, waits for it to say ready, and starts it
// again after it exits, until ctx ends.
func (l *serveLane) supervise(ctx context.Context) {
	log := l.spec.log
	for ctx.Err() == nil {
		answered, err := l.once(ctx)
		if ctx.Err() != nil {
			return
		}
		l.spec.stats.ServeRestarts.Add(1)
		wait := l.backoff(answered)
		if l.failures >= crashLoopAfter {
			log.Error(fmt.Sprintf("serve process keeps failing (%d times in a row); starting it again in %s", l.failures, wait), "err", err)
		} else {
			log.Warn("serve process stopped; starting it again", "err", err, "in", wait)
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// once runs the process from its start to its exit; answered is true when
// it answered a job, err says how it ended.
func (l *serveLane) once(ctx context.Context) (answered bool, err error) {
	p, err := l.start(ctx)
	if err != nil {
		return false, err
	}
	stop := context.AfterFunc(ctx, p.shutdown)
	defer stop()
	if err := p.waitReady(ctx, l.spec.startTimeout); err != nil {
		p.kill()
		<-p.exited
		return false, err
	}
	l.spec.log.Info("serve process ready", "pid", p.cmd.Process.Pid, "took", time.Since(p.started).Round(time.Millisecond))
	l.setProc(p)
	<-p.exited
	l.setProc(nil)
	return p.answered.Load() > 0, p.exitErr()
}

// backoff counts a failure (a run that answered no job) and returns how
// long to wait before the next start; it keeps Stats.ServeCrashLooping.
func (l *serveLane) backoff(answered bool) time.Duration {
	was := l.failures >= crashLoopAfter
	if answered {
		l.failures = 0
	} else {
		l.failures++
	}
	now := l.failures >= crashLoopAfter
	switch {
	case now && !was:
		l.spec.stats.ServeCrashLooping.Add(1)
	case was && !now:
		l.spec.stats.ServeCrashLooping.Add(-1)
	}
	if l.failures == 0 {
		return 0
	}
	return min(time.Second<<min(l.failures-1, 6), time.Minute)
}

// start starts the lane's process.
func (l *serveLane) start(ctx context.Context) (*serveProc, error) {
	h, spec := l.h, l.spec
	cmd := exec.Command(h.path, h.argv[1:]...)
	cmd.Args[0] = h.argv[0]
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Env = append(os.Environ(),
		"JOBSTREAM_STEP="+spec.step,
		"JOBSTREAM_LANE="+strconv.Itoa(spec.index),
		"JOBSTREAM_BATCH="+strconv.Itoa(max(spec.batch, 1)),
	)
	if spec.gpu != "" {
		cmd.Env = append(cmd.Env, "CUDA_VISIBLE_DEVICES="+spec.gpu)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	p := &serveProc{lane: l, cmd: cmd, stdin: stdin, started: time.Now(), readyCh: make(chan struct{}),
		exited: make(chan struct{}), pending: map[string]*call{}, told: map[string]*time.Timer{}}
	// Pdeathsig fires when the thread that forked the process exits: fork
	// from a thread that lives as long as the process.
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); p.readStdout(stdout) }()
		go func() { defer wg.Done(); p.readStderr(stderr) }()
		wg.Wait()
		p.waitErr = cmd.Wait()
		p.fail(p.exitErr())
		close(p.exited)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start serve process %s: %w", h.argv[0], err)
	}
	spec.log.Info("serve process started; waiting for it to say ready", "pid", cmd.Process.Pid, "start_timeout", spec.startTimeout)
	return p, nil
}

// serveProc is one run of a lane's process.
type serveProc struct {
	lane    *serveLane
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	started time.Time
	readyCh chan struct{}
	exited  chan struct{}
	waitErr error

	answered atomic.Int64
	stderr   tail
	wmu      sync.Mutex // one writer of stdin at a time, so lines never interleave

	mu      sync.Mutex
	pending map[string]*call       // jobs given and not yet answered, by job id
	told    map[string]*time.Timer // pending jobs told to stop, with their restart timers
	idle    chan struct{}          // closed when pending empties
	killed  string                 // why the worker killed it, if it did
}

// write writes one line to the process's stdin; a failed write restarts it.
func (p *serveProc) write(line []byte) {
	p.wmu.Lock()
	_, err := p.stdin.Write(append(line, '\n'))
	p.wmu.Unlock()
	if err != nil {
		p.restart(fmt.Sprintf("writing to its stdin failed: %v", err))
	}
}

// shutdown stops the process at the worker's stop: stdin closed and
// SIGTERM to its group, SIGKILL 5 s later if it is still there.
func (p *serveProc) shutdown() {
	p.wmu.Lock()
	p.stdin.Close()
	p.wmu.Unlock()
	if p.cmd.Process != nil {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	}
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		p.kill()
	}
}

// waitReady waits for the ready line, the process's exit or the timeout.
func (p *serveProc) waitReady(ctx context.Context, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.readyCh:
		return nil
	case <-p.exited:
		return fmt.Errorf("serve process exited before it said ready: %w", p.exitErr())
	case <-t.C:
		err := fmt.Errorf("serve process did not print {\"ready\": true} within the start timeout (%s); it was stopped — load the model, then print that line on stdout, or raise the start timeout", timeout)
		p.lane.spec.log.Error(err.Error())
		return err
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// exitErr describes how the process ended, with the tail of its stderr.
func (p *serveProc) exitErr() error {
	p.mu.Lock()
	killed := p.killed
	p.mu.Unlock()
	msg := "serve process " + p.lane.h.argv[0] + " exited"
	if p.waitErr != nil {
		msg += " (" + p.waitErr.Error() + ")"
	}
	if killed != "" {
		msg = "serve process restarted: " + killed
	}
	if t := bytes.TrimSpace(p.stderr.buf); len(t) > 0 && killed == "" {
		msg += ": " + lastLine(t)
	}
	return errors.New(msg)
}

func lastLine(b []byte) string {
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[i+1:]
	}
	return string(b)
}

// kill stops the whole process group.
func (p *serveProc) kill() {
	if p.cmd.Process != nil {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
}

// restart kills the process for reason; its pending jobs fail with it.
func (p *serveProc) restart(reason string) {
	p.mu.Lock()
	if p.killed == "" {
		p.killed = reason
	}
	p.mu.Unlock()
	p.kill()
}

// answer is a serve process's answer line.
type serveAnswer struct {
	Ready     *bool           `json:"ready"`
	JobID     *string         `json:"job_id"`
	Result    json.RawMessage `json:"result"`
	Error     *string         `json:"error"`
	Permanent bool            `json:"permanent"`
}

// maxServeLine bounds one line of a serve process's stdout.
const maxServeLine = maxStdout

func (p *serveProc) readStdout(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxServeLine)
	log := p.lane.spec.log
	ready := false
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		if !ready {
			var a serveAnswer
			if json.Unmarshal(line, &a) == nil && a.Ready != nil && *a.Ready {
				ready = true
				close(p.readyCh)
				continue
			}
			log.Warn("serve process printed on stdout before it said ready; ignored (stdout is for the protocol, logs belong on stderr)", "line", fmt.Sprintf("%.200s", line))
			continue
		}
		p.take(line)
	}
	if err := sc.Err(); err != nil {
		p.restart(fmt.Sprintf("its stdout could not be read: %v", err))
	}
}

// take applies one answer line: an object or an array of objects.
func (p *serveProc) take(line []byte) {
	var answers []serveAnswer
	var err error
	if line[0] == '[' {
		err = json.Unmarshal(line, &answers)
	} else {
		var a serveAnswer
		err = json.Unmarshal(line, &a)
		answers = []serveAnswer{a}
	}
	if err != nil {
		p.failPending(fmt.Sprintf("serve process printed a line that is not a JSON answer (%.80q); answer each job with {\"job_id\": …, \"result\": …} or {\"job_id\": …, \"error\": …} on one line, logs on stderr", line))
		return
	}
	for _, a := range answers {
		p.apply(a)
	}
}

func (p *serveProc) apply(a serveAnswer) {
	if a.JobID == nil {
		p.failPending("serve process answered without a job_id; every answer line names the job it answers")
		return
	}
	p.mu.Lock()
	c, ok := p.pending[*a.JobID]
	if ok {
		p.settle(*a.JobID)
	}
	p.mu.Unlock()
	if !ok {
		p.failPending(fmt.Sprintf("serve process answered job %q, which it was not given (or had answered already)", *a.JobID))
		return
	}
	p.answered.Add(1)
	c.answer(a.outcome())
}

// outcome is the result or the error an answer gives its job.
func (a serveAnswer) outcome() outcome {
	switch {
	case a.Error != nil && a.Permanent:
		return outcome{err: Permanent(errors.New(*a.Error))}
	case a.Error != nil:
		return outcome{err: errors.New(*a.Error)}
	}
	return outcome{result: a.Result}
}

// settle removes a pending job; p.mu is held.
func (p *serveProc) settle(id string) {
	delete(p.pending, id)
	if t, ok := p.told[id]; ok {
		t.Stop()
		delete(p.told, id)
	}
	if len(p.pending) == 0 && p.idle != nil {
		close(p.idle)
		p.idle = nil
	}
}

// failPending fails every job in flight with reason; the process goes on.
func (p *serveProc) failPending(reason string) {
	p.lane.spec.log.Warn(reason)
	p.fail(errors.New(reason))
}

// fail fails every pending job with err.
func (p *serveProc) fail(err error) {
	p.mu.Lock()
	var calls []*call
	for id, c := range p.pending {
		calls = append(calls, c)
		p.settle(id)
	}
	p.mu.Unlock()
	for _, c := range calls {
		c.answer(outcome{err: err})
	}
}

func (p *serveProc) readStderr(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	log := p.lane.spec.log
	for sc.Scan() {
		line := sc.Bytes()
		p.stderr.Write(append(line, '\n'))
		p.mu.Lock()
		ids := make([]string, 0, len(p.pending))
		for id := range p.pending {
			ids = append(ids, id)
		}
		p.mu.Unlock()
		attrs := []any{"line", string(line)}
		switch len(ids) {
		case 0:
		case 1:
			attrs = append(attrs, "job_id", ids[0])
		default:
			attrs = append(attrs, "job_ids", strings.Join(ids, ","))
		}
		log.Info("serve process", attrs...)
	}
}

// run writes the batch to the current process and waits until each of
// its jobs is answered, or told to stop and given up on (the process is
// then restarted), or the process exits.
func (l *serveLane) run(ctx context.Context, calls []*call) {
	p := l.current()
	if p == nil {
		for _, c := range calls {
			c.answer(outcome{err: errLanesDown})
		}
		return
	}
	jobs := make([]Job, len(calls))
	for i, c := range calls {
		jobs[i] = c.job
	}
	var line []byte
	var err error
	if l.spec.batch > 1 {
		line, err = json.Marshal(jobs)
	} else {
		line, err = json.Marshal(jobs[0])
	}
	if err != nil {
		for _, c := range calls {
			c.answer(outcome{err: Permanent(fmt.Errorf("encode job: %w", err))})
		}
		return
	}
	idle := make(chan struct{})
	p.mu.Lock()
	p.idle = idle
	for _, c := range calls {
		p.pending[c.job.JobID] = c
	}
	p.mu.Unlock()
	p.write(line)
	select {
	case <-idle:
	case <-p.exited:
	}
}

// abandon tells the process that c ended and restarts it if c is still
// unanswered serveCancelGrace later.
func (l *serveLane) abandon(c *call, cause error) {
	p := l.current()
	if p == nil {
		return
	}
	id := c.job.JobID
	p.mu.Lock()
	if p.pending[id] != c {
		p.mu.Unlock()
		return
	}
	p.told[id] = time.AfterFunc(serveCancelGrace, func() {
		p.restart(fmt.Sprintf("job %s did not stop within %s of being told (%v)", id, serveCancelGrace, cause))
	})
	p.mu.Unlock()
	msg, _ := json.Marshal(map[string]string{"cancel": id})
	p.write(msg)
}
