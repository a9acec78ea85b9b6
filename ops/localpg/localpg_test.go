package localpg

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestStartUnderClosedParent starts the dev stack's Postgres, as root, from
// inside a clone under a folder of mode 0700 that the postgres OS user cannot
// enter (a clone in /root): the server starts, its cluster in a private
// folder the link points at, and Remove deletes both. With no shared folder
// usable either, Start fails with one sentence naming the fix.
func TestStartUnderClosedParent(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: only root runs PostgreSQL as another OS user")
	}
	if _, err := BinDir(); err != nil {
		t.Skip(err)
	}
	closed := t.TempDir()
	if err := os.Chmod(closed, 0o700); err != nil {
		t.Fatal(err)
	}
	clone := filepath.Join(closed, "clone")
	if err := os.MkdirAll(clone, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Chdir(clone)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	dir := filepath.Join(clone, ".jobstream", "pg")
	pg, err := Start(ctx, dir, Options{})
	if err != nil {
		t.Fatalf("start under a 0700 parent: %v", err)
	}
	conn, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		pg.Stop()
		t.Fatalf("connect: %v", err)
	}
	var level string
	err = conn.QueryRow(ctx, "SHOW wal_level").Scan(&level)
	conn.Close(ctx)
	if err != nil || level != "logical" {
		t.Errorf("wal_level %q, %v", level, err)
	}
	if strings.HasPrefix(pg.Dir, closed) {
		t.Errorf("cluster in %s, under the closed folder", pg.Dir)
	}
	if target, err := os.Readlink(dir); err != nil || target != pg.Dir {
		t.Errorf("%s links to %q (%v), want %s", dir, target, err, pg.Dir)
	}
	// A restart in the same folder finds its cluster through the link.
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	pg2, err := Start(ctx, dir, Options{Port: pg.Port})
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	if pg2.Dir != pg.Dir {
		t.Errorf("restart used %s, first start %s", pg2.Dir, pg.Dir)
	}
	if err := pg2.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := Remove(dir); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, pg.Dir} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is still there after Remove (%v)", p, err)
		}
	}

	// Nowhere to go: the sentence names the fix.
	orig := sharedDirs
	t.Cleanup(func() { sharedDirs = orig })
	sharedDirs = func() []string { return []string{closed} }
	_, err = Start(ctx, filepath.Join(clone, "other", "pg"), Options{})
	var ue *UnreachableError
	if !errors.As(err, &ue) {
		t.Fatalf("start with no reachable folder: %v, want an UnreachableError", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "cannot enter") || !strings.Contains(msg, "/var/tmp") || strings.Count(msg, ". ") > 0 {
		t.Errorf("not one sentence naming the fix: %s", msg)
	}
}

// TestStartCanceled: a context that ends while the server starts is reported
// as such (the caller's clean stop), not as a server that did not answer.
func TestStartCanceled(t *testing.T) {
	if _, err := BinDir(); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// t.TempDir's parent has mode 0700: as root, the cluster goes elsewhere.
	t.Cleanup(func() { Remove(filepath.Join(dir, "pg")) })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	pg, err := Start(ctx, filepath.Join(dir, "pg"), Options{})
	if err == nil {
		pg.Stop()
		t.Skip("the server started within 300ms")
	}
	if !errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "did not accept") {
		t.Fatalf("start with an ending context: %v", err)
	}
}
