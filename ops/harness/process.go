package harness

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Process is a jobstream process a test started with Env.StartProcess.
type Process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed once the process exited
	err  error         // its Wait error, once done
}

// StartProcess runs the jobstream binary (see Binary) with args. Its
// environment points it at e's database, broker, topic prefix, slot and
// publication, with debug logs, and env adds to it; its output goes to a
// file in e.Dir named after name. When t ends the process is stopped
// (SIGCONT, SIGTERM, then SIGKILL after 30s) and the tail of its log shown
// if t failed or JOBSTREAM_TEST_LOGS is set.
func (e *Env) StartProcess(t testing.TB, name string, env []string, args ...string) *Process {
	t.Helper()
	f, err := os.CreateTemp(e.Dir, name+"-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(Binary(t), args...)
	cmd.Env = append(os.Environ(),
		"DATABASE_URL="+e.DatabaseURL,
		"KAFKA_BROKERS="+strings.Join(e.Brokers, ","),
		"JOBSTREAM_TOPIC_PREFIX="+e.Prefix,
		"JOBSTREAM_SLOT="+e.Slot,
		"JOBSTREAM_PUBLICATION="+e.Publication,
		"JOBSTREAM_LOG_LEVEL=debug",
	)
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &Process{name: name, cmd: cmd, log: f.Name(), done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		if !p.Exited() {
			cmd.Process.Signal(syscall.SIGCONT) // the test may have stopped it
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-p.done
			}
		}
		if t.Failed() || os.Getenv("JOBSTREAM_TEST_LOGS") != "" {
			out := p.Log()
			if len(out) > 12000 {
				out = out[len(out)-12000:]
			}
			t.Logf("--- %s (pid %d) log (tail) ---\n%s", name, p.Pid(), out)
		}
	})
	return p
}

// Pid returns the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Cmd returns the command that runs the process; the Process waits for it.
func (p *Process) Cmd() *exec.Cmd { return p.cmd }

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal sends sig to the process, failing t if it cannot.
func (p *Process) Signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %s to %s: %v", sig, p.name, err)
	}
}

// Kill kills the process as a crash would (SIGKILL) and waits until it is
// gone.
func (p *Process) Kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Wait waits up to timeout for the process to exit and returns its exit
// code (-1 if a signal ended it); it fails t if the process does not exit
// in time or could not be waited for.
func (p *Process) Wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("%s did not exit within %s", p.name, timeout)
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatalf("%s: %v", p.name, p.err)
	}
	return 0
}

// Log returns what the process has written so far.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// Buffer is a bytes.Buffer that a process's or a logger's writers and the
// test may use at once.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends b to the buffer.
func (w *Buffer) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(b)
}

// String returns what was written so far.
func (w *Buffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}
