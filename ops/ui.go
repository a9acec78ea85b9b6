package ops

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	adm "github.com/jobstream/jobstream/ops/admin"
	"github.com/jobstream/jobstream/ops/console"
)

// UIListenDefault is where the console listens by default: loopback only.
const UIListenDefault = "127.0.0.1:8080"

func runUI(ctx context.Context, args []string, out io.Writer) error {
	var c common
	var listen, token, images, slot string
	f := newFlags("ui", "ui [flags]\n\nServes the web console: the pipeline with live counts and an hour of charts, jobs by step and status,\n"+
		"each job's timeline, the dead letters; retry, replay and cancel with --ui-token (read-only without it).")
	c.register(f, true, true)
	f.str(&listen, "listen", "JOBSTREAM_UI_LISTEN", UIListenDefault, "address the console listens on (loopback by default)")
	f.str(&token, "ui-token", "JOBSTREAM_UI_TOKEN", "", "token that allows actions (retry, replay, cancel); without it the console is read-only (prefer the environment variable: flags show in ps)")
	f.str(&images, "images", "JOBSTREAM_UI_IMAGES", "", "folder of images the pipeline writes; a result naming a PNG in it is shown on the job's page")
	f.str(&slot, "slot", "JOBSTREAM_SLOT", adm.SlotDefault, "the reader's logical replication slot")
	if err := f.parse(args); err != nil {
		return err
	}
	p, log, b, err := c.process()
	if err != nil {
		return err
	}
	// The address first: a bad --listen is bad usage, said before connecting.
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return usagef("--listen %s: %v", listen, err)
	}
	defer l.Close()
	pool, err := c.openPool(ctx)
	if err != nil {
		return err
	}
	defer pool.Close()
	if host, _, _ := net.SplitHostPort(listen); !isLoopback(host) {
		log.Warn("the console listens beyond this machine; anyone who reaches it sees the jobs (actions still need the token)", "listen", listen)
	}
	con, err := console.New(console.Config{Pool: pool, Kafka: adm.NewKafka(b), Deployment: adm.Deployment{Pipeline: p, TopicPrefix: c.prefix},
		Slot: slot, Token: token, Images: images, Log: log})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "console on http://%s/ (%s)\n", l.Addr(), map[bool]string{true: "read-only: set --ui-token to allow actions", false: "actions need the token"}[token == ""])
	return serveConsole(ctx, con, l, log)
}

// serveConsole samples and serves con on l until ctx ends.
func serveConsole(ctx context.Context, con *console.Console, l net.Listener, log *slog.Logger) error {
	srv := &http.Server{Handler: con.Handler(), ReadHeaderTimeout: 5 * time.Second}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return con.Run(gctx) })
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		return nil
	})
	g.Go(func() error {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("console stopped", "err", err)
			return err
		}
		return nil
	})
	return g.Wait()
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// devConsole starts the console of the dev stack on addr (or, if it is
// taken, a free loopback port) with a fresh token, and returns its URL.
func devConsole(ctx context.Context, g *errgroup.Group, pool *pgxpool.Pool, b adm.Deployment, k *adm.Kafka, images, addr string, log *slog.Logger) (url, token string, err error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		if l, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return "", "", err
		}
	}
	token = randomToken()
	con, err := console.New(console.Config{Pool: pool, Kafka: k, Deployment: b, Token: token, Images: images, Log: log})
	if err != nil {
		l.Close()
		return "", "", err
	}
	g.Go(func() error { return serveConsole(ctx, con, l, log) })
	return "http://" + l.Addr().String() + "/", token, nil
}

// randomToken returns 16 random bytes in hex.
func randomToken() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}
