// Command jobstream streams a Postgres jobs table's changes into Kafka and
// runs the step workers that act on them. Run 'jobstream help'.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/jobstream/jobstream/ops"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := ops.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
