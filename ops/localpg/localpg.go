// Package localpg starts a throwaway PostgreSQL server from the machine's own
// binaries, configured for logical replication, on a free loopback port. It
// backs ops/devstack, the stack of `jobstream dev`, the test harness and the
// bench.
//
// When the process runs as root (initdb refuses to), the server runs as the
// "postgres" OS user in a data folder that user owns. If that user cannot
// enter the folder asked for (a clone under /root, any parent of mode 0700),
// the cluster lives in a private folder under the temp folder instead, and
// the folder asked for is a symbolic link to it.
package localpg

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
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
	log  string // the server log's path, if Start opened it
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
// wal_level=logical. It returns once the server accepts connections. If ctx
// ends first, it stops what it started and returns an error wrapping ctx.Err().
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
	asked, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	dir = asked
	if cred == nil {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
	} else if dir, err = place(dir, bin, cred); err != nil {
		return nil, err
	}
	logw, logPath := opts.Log, ""
	if logw == nil {
		logPath = asked + ".log"
		f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		logw = f
	}
	if err := initdb(ctx, bin, dir, cred); err != nil {
		return nil, err
	}
	port := opts.Port
	if port == 0 {
		if port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	cmd := exec.Command(filepath.Join(bin, "postgres"), serverArgs(dir, port, opts.Settings)...)
	// Its own process group, so a terminal's Ctrl-C reaches us first and we
	// stop the server in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true}
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logw, logw
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	p := &Postgres{Dir: dir, Port: port, log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	if err := p.waitReady(ctx, 60*time.Second); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

// initdb makes a cluster in dir, unless it holds one already.
func initdb(ctx context.Context, bin, dir string, cred *syscall.Credential) error {
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); err == nil {
		return nil
	}
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "initdb"), "-D", dir, "-U", "postgres",
		"--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync")
	// Its own process group: a terminal's Ctrl-C reaches us, and we
	// stop it through ctx. Run from the data folder: initdb returns to
	// its working folder, which the postgres user may not enter.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true}
	cmd.Dir = dir
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if out, err := cmd.CombinedOutput(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("initdb %s: %w", dir, ctx.Err())
		}
		return fmt.Errorf("initdb %s: %w: %s", dir, err, lastLines(out))
	}
	return nil
}

// serverArgs are the postgres arguments: wal_level=logical and the rest a
// throwaway server wants, then settings (later ones win).
func serverArgs(dir string, port int, settings map[string]string) []string {
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
	for k, v := range settings {
		args = append(args, "-c", k+"="+v)
	}
	return args
}

// UnreachableError reports that, running as root, no data folder could be
// found that the postgres OS user may enter.
type UnreachableError struct {
	// Dir is the data folder asked for.
	Dir string
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("the postgres OS user (PostgreSQL will not run as root) cannot enter %s nor a private folder under %s: put the data folder where that user can reach it (such as under /var/tmp), or run as a non-root user",
		e.Dir, strings.Join(sharedDirs(), " or "))
}

// sharedDirs are the folders tried, in order, for a cluster the postgres
// user cannot keep where it was asked for.
var sharedDirs = func() []string {
	var dirs []string
	for _, d := range []string{os.TempDir(), "/var/tmp", "/tmp"} {
		if !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// place returns the data folder to use for dir when the server runs with
// cred: dir itself if that user can enter it, else a private folder under a
// shared temp folder, linked from dir. A link left by an earlier Start is
// followed, so a restarted server finds its cluster.
func place(dir, bin string, cred *syscall.Credential) (string, error) {
	if fi, err := os.Lstat(dir); err == nil && fi.Mode()&os.ModeSymlink != 0 {
		target, err := os.Readlink(dir)
		if err != nil {
			return "", err
		}
		if owned(target, cred) && canEnter(target, bin, cred) {
			return target, nil
		}
		if err := os.Remove(dir); err != nil {
			return "", err
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
		return "", err
	}
	if canEnter(dir, bin, cred) {
		return dir, nil
	}
	if os.Remove(dir) != nil { // not empty: a cluster nobody can start here
		return "", &UnreachableError{Dir: dir}
	}
	sum := sha256.Sum256([]byte(dir))
	name := "jobstream-pg-" + hex.EncodeToString(sum[:6])
	for _, base := range sharedDirs() {
		if !canEnter(base, bin, cred) {
			continue
		}
		target := filepath.Join(base, name)
		// A folder of that name without our link is stale (its link was
		// removed with its parent): start clean. One owned by someone else
		// is not ours to remove; try the next base.
		if fi, err := os.Lstat(target); err == nil {
			if !fi.IsDir() || !owned(target, cred) {
				continue
			}
			if err := os.RemoveAll(target); err != nil {
				continue
			}
		}
		if err := os.Mkdir(target, 0o700); err != nil {
			continue
		}
		if err := os.Chown(target, int(cred.Uid), int(cred.Gid)); err != nil {
			os.Remove(target)
			continue
		}
		if err := os.Symlink(target, dir); err != nil {
			os.Remove(target)
			return "", err
		}
		return target, nil
	}
	return "", &UnreachableError{Dir: dir}
}

// owned reports whether path is a folder (not a link) owned by cred's user.
func owned(path string, cred *syscall.Credential) bool {
	fi, err := os.Lstat(path)
	if err != nil || !fi.IsDir() {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && st.Uid == cred.Uid
}

// canEnter reports whether cred's user can enter dir: the same check the
// server makes, by starting `postgres --version` there as that user.
func canEnter(dir, bin string, cred *syscall.Credential) bool {
	probe := exec.Command(filepath.Join(bin, "postgres"), "--version")
	probe.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	probe.Dir = dir
	return probe.Run() == nil
}

// Remove deletes the data folder dir of a stopped server, and the private
// folder it links to if Start placed the cluster elsewhere.
func Remove(dir string) error {
	if target, err := os.Readlink(dir); err == nil {
		if err := os.RemoveAll(target); err != nil {
			return err
		}
	}
	return os.RemoveAll(dir)
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
			if p.log != "" {
				return fmt.Errorf("postgres exited at start (%v); see %s", p.err, p.log)
			}
			return fmt.Errorf("postgres exited at start (%v); see its log", p.err)
		default:
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		conn, err := pgx.Connect(cctx, p.URL("postgres"))
		cancel()
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("start postgres: %w", ctx.Err())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres did not accept connections within %s: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
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
	}
	// A fast shutdown waits for walsenders to hand their last WAL to the
	// replication clients, which may be slow to answer. An immediate
	// shutdown stops every backend first; killing the postmaster alone
	// would leave them (each in a session of its own) holding the shared
	// memory, and the next start would fail until they noticed.
	_ = p.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-p.done:
		return fmt.Errorf("postgres did not stop within 15s; stopped it in immediate mode")
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		return errors.New("postgres did not stop within 30s; killed")
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
