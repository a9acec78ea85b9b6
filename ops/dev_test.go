package ops_test

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/ops/localpg"
)

// runDevProcess starts `jobstream dev` as a real process with its output in
// a buffer.
func runDevProcess(t *testing.T, args ...string) (*exec.Cmd, *harness.Buffer, chan error) {
	t.Helper()
	cmd := exec.Command(harness.Binary(t), append([]string{"dev"}, args...)...)
	var out harness.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	exited := make(chan struct{})
	go func() { done <- cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	})
	return cmd, &out, done
}

// interruptAndWait sends Ctrl-C and checks the clean stop: exit 0, the
// message, and no Postgres left running in dir.
func interruptAndWait(t *testing.T, cmd *exec.Cmd, out *harness.Buffer, done chan error, dir string) {
	t.Helper()
	cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("dev after Ctrl-C: %v (want exit 0)\n%s", err, out.String())
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("dev did not stop within 60s of Ctrl-C\n%s", out.String())
	}
	if !strings.Contains(out.String(), "shut down cleanly") || strings.Contains(out.String(), "did not accept") {
		t.Fatalf("not a clean stop:\n%s", out.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "pg", "postmaster.pid")); err == nil {
		t.Fatalf("Postgres still running after Ctrl-C (postmaster.pid remains)\n%s", out.String())
	}
}

// TestDevCtrlCWhileStartingPostgres: an interrupt while dev starts Postgres
// is a clean stop (exit 0), not "postgres did not accept connections".
func TestDevCtrlCWhileStartingPostgres(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	dir := filepath.Join(e.Dir, "dev")
	cmd, out, done := runDevProcess(t, "--jobs", "5", "--dir", dir)
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		return strings.Contains(out.String(), "starting Postgres"), "dev has not begun starting Postgres"
	})
	interruptAndWait(t, cmd, out, done, dir)
	if strings.Contains(out.String(), "inserted") {
		t.Logf("Postgres was up before the interrupt arrived; still a clean stop:\n%s", out.String())
	}
}

// TestDevKeep: `dev --keep` under a folder of mode 0700 (as root, the
// cluster lives where the postgres user can reach it) finishes the demo,
// then keeps Postgres, the broker and the reader running and prints their
// exports; a job inserted through them reaches the topics; Ctrl-C stops
// everything and exits 0.
func TestDevKeep(t *testing.T) {
	t.Parallel()
	harness.New(t) // the shared servers, so Binary and the environment are ready
	dir := filepath.Join(t.TempDir(), "clone", ".jobstream")
	t.Cleanup(func() { localpg.Remove(filepath.Join(dir, "pg")) })
	cmd, out, done := runDevProcess(t, "--keep", "--jobs", "5", "--dir", dir)
	harness.Eventually(t, 90*time.Second, func() (bool, string) {
		return strings.Contains(out.String(), "Ctrl-C here stops everything"), "dev --keep has not printed its exports:\n" + out.String()
	})
	text := out.String()
	if !strings.Contains(text, "all 5 jobs reached (overlay, done)") {
		t.Fatalf("the demo did not finish before --keep:\n%s", text)
	}
	exports := map[string]string{}
	for _, m := range regexp.MustCompile(`export (\w+)='([^']*)'`).FindAllStringSubmatch(text, -1) {
		exports[m[1]] = m[2]
	}
	url, brokers := exports["DATABASE_URL"], exports["KAFKA_BROKERS"]
	if url == "" || brokers == "" {
		t.Fatalf("no DATABASE_URL or KAFKA_BROKERS export:\n%s", text)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect to the kept Postgres: %v", err)
	}
	_, err = conn.Exec(ctx, `INSERT INTO jobs (job_id, current_step, status) VALUES ('mine-1', 'img_gen', 'done')`)
	conn.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The reader still runs: the job's event reaches the kept broker.
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		code, stdout, stderr := runMain(t, "audit", "mine-1", "--json", "--database-url", url, "--brokers", brokers)
		var a struct{ History []json.RawMessage }
		json.Unmarshal([]byte(stdout), &a)
		return code == 0 && len(a.History) > 0, "audit of mine-1: " + stdout + stderr
	})
	interruptAndWait(t, cmd, out, done, dir)
}
