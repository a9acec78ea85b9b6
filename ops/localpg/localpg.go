// Package localpg starts a throwaway PostgreSQL server from the machine's own
// binaries, configured for logical replication, on a free loopback port. It
// backs `jobstream dev` and the test harness.
//
// When the process runs as root (initdb refuses to), the server runs as the
// "postgres" OS user in a data folder that user owns.
package localpg

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Postgres is a running throwaway server.
type Postgres struct {
	// Dir is the data folder.
	Dir string
	// Port is the loopback TCP port.
	Port int
	cmd  *exec.Cmd
	done chan struct{} // closed when the server process has exited
	err  error         // its exit status, once done is closed
}

// Options tune Start. Zero fields take their defaults.
type Options struct {
	// BinDir holds initdb and postgres (default: $JOBSTREAM_PG_BIN, then the
	// newest /usr/lib/postgresql/*/bin, then the folder of postgres on PATH).
	BinDir string
	// Port to listen on (default: a free one).
	Port int
	// Log receives the server's output (default: Dir/../postgres.log).
	Log io.Writer
	// Settings are extra -c name=value settings.
	Settings map[string]string
}

// BinDir finds the folder holding initdb and postgres.
func BinDir() (string, error) {
	if d := os.Getenv("JOBSTREAM_PG_BIN"); d != "" {
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return vi > vj
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("no PostgreSQL server binaries found (initdb, postgres); install the postgresql package or set JOBSTREAM_PG_BIN to their folder")
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// credential returns how to run Postgres: as the postgres OS user when we are root.
func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, errors.New("running as root, but there is no 'postgres' OS user to run PostgreSQL as (initdb refuses root); create one with useradd postgres")
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// Start initialises dir if it holds no cluster yet and starts the server with
// wal_level=logical. It returns once the server accepts connections.
func Start(ctx context.Context, dir string, opts Options) (*Postgres, error) {
	bin := opts.BinDir
	if bin == "" {
		var err error
		if bin, err = BinDir(); err != nil {
			return nil, err
		}
	}
	cred, err := credential()
	if err != nil {
		return nil, err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, err
		}
	}
	logw := opts.Log
	if logw == nil {
		f, err := os.OpenFile(filepath.Join(filepath.Dir(dir), filepath.Base(dir)+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		logw = f
	}
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); err != nil {
		initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", dir, "-U", "postgres",
			"--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")
		initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		if out, err := initdb.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("initdb %s: %w: %s", dir, err, lastLines(out))
		}
	}
	port := opts.Port
	if port == 0 {
		if port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	args := []string{"-D", dir, "-p", strconv.Itoa(port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=" + dir,
		"-c", "wal_level=logical",
		"-c", "max_replication_slots=100",
		"-c", "max_wal_senders=100",
		"-c", "max_connections=300",
		"-c", "fsync=off", // a throwaway server: process crashes keep data, power cuts need not
		"-c", "full_page_writes=off",
		"-c", "wal_sender_timeout=60s",
	}
	for k, v := range opts.Settings {
		args = append(args, "-c", k+"="+v)
	}
	cmd := exec.Command(filepath.Join(bin, "postgres"), args...)
	// Its own process group, so a terminal's Ctrl-C reaches us first and we
	// stop the server in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true}
	cmd.Stdout, cmd.Stderr = logw, logw
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	p := &Postgres{Dir: dir, Port: port, cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	if err := p.waitReady(ctx, 60*time.Second); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

// URL returns a connection URL for database db as the superuser.
func (p *Postgres) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", p.Port, db)
}

func (p *Postgres) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-p.done:
			return fmt.Errorf("postgres exited at start (%v); see %s.log", p.err, p.Dir)
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		conn, err := pgx.Connect(cctx, p.URL("postgres"))
		cancel()
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("postgres did not accept connections within %s: %w", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop shuts the server down (fast mode), waiting up to 15s before killing it.
func (p *Postgres) Stop() error { return p.stop(syscall.SIGINT) }

// Crash stops the server in immediate mode, as a crash would.
func (p *Postgres) Crash() error { return p.stop(syscall.SIGQUIT) }

func (p *Postgres) stop(sig syscall.Signal) error {
	select {
	case <-p.done:
		return nil // already stopped
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return nil
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		return errors.New("postgres did not stop within 15s; killed")
	}
}

// StopStale stops a server left running in dir by an earlier process that
// died without stopping it, as found in dir/postmaster.pid.
func StopStale(dir string) {
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return
	}
	var pid int
	if _, err := fmt.Sscan(string(b), &pid); err != nil || pid <= 0 {
		return
	}
	if syscall.Kill(pid, syscall.SIGQUIT) != nil {
		return
	}
	for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(50 * time.Millisecond)
	}
}

func lastLines(b []byte) string {
	if len(b) > 600 {
		b = b[len(b)-600:]
	}
	return string(b)
}
