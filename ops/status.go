package ops

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	adm "github.com/jobstream/jobstream/ops/admin"
	"github.com/jobstream/jobstream/schema"
	"github.com/jobstream/jobstream/schema/kafkaconn"
)

// The names dev's live view (dev.go) uses; it may call the admin package
// directly instead.
type (
	admin        = adm.Kafka
	statusReport = adm.StatusReport
)

func newAdmin(b kafkaconn.Broker) *admin { return adm.NewKafka(b) }

func collectStatus(ctx context.Context, pool *pgxpool.Pool, a *admin, p schema.Pipeline, prefix, slot string) (*statusReport, error) {
	return adm.Status(ctx, pool, a, adm.StatusOptions{Deployment: adm.Deployment{Pipeline: p, TopicPrefix: prefix}, Slot: slot})
}

type statusConfig struct {
	common
	slot     string
	json     bool
	watch    bool
	interval time.Duration
}

func runStatus(ctx context.Context, args []string, out io.Writer) error {
	var c statusConfig
	f := newFlags("status", "status [flags]\n\nPrints the slot, each step's consumer group (members, committed offsets, lag per partition),\njobs per (current_step, status), runs with expired leases and dead letters.")
	c.register(f, true, true)
	f.str(&c.slot, "slot", "JOBSTREAM_SLOT", adm.SlotDefault, "logical replication slot")
	f.BoolVar(&c.json, "json", false, "print JSON")
	f.BoolVar(&c.watch, "watch", false, "redraw in place every --interval until Ctrl-C")
	f.dur(&c.interval, "interval", "JOBSTREAM_STATUS_REFRESH", time.Second, "refresh interval of --watch")
	if err := f.parse(args); err != nil {
		return err
	}
	p, err := c.needs(true, true)
	if err != nil {
		return err
	}
	pool, err := connectPool(ctx, c.databaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	broker, err := c.reachBroker(ctx)
	if err != nil {
		return err
	}
	k, o := adm.NewKafka(broker), adm.StatusOptions{Deployment: adm.Deployment{Pipeline: p, TopicPrefix: c.prefix}, Slot: c.slot}
	var prev *adm.StatusReport
	for {
		rep, err := adm.Status(ctx, pool, k, o)
		if err != nil {
			if ctx.Err() != nil && c.watch {
				return nil
			}
			return err
		}
		switch {
		case c.json:
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			if err := enc.Encode(rep); err != nil {
				return err
			}
		default:
			if c.watch {
				fmt.Fprint(out, "\033[H\033[2J")
			}
			printStatus(out, rep, prev)
		}
		if !c.watch {
			return nil
		}
		prev = rep
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(c.interval):
		}
	}
}

// printStatus writes rep as a text report; prev (nil: none) gives the rates.
func printStatus(out io.Writer, rep, prev *adm.StatusReport) {
	s := rep.Slot
	switch {
	case !s.Exists:
		fmt.Fprintf(out, "slot %s: does not exist yet (the reader creates it)\n", s.Name)
	default:
		active := "inactive (no reader connected)"
		if s.Active && s.ActivePID != nil {
			active = fmt.Sprintf("active (walsender pid %d)", *s.ActivePID)
		}
		fmt.Fprintf(out, "slot %s: %s, confirmed %s, retained WAL %s, wal_status %s\n", s.Name, active, s.ConfirmedLSN, bytesIEC(s.RetainedBytes), s.WALStatus)
	}
	if g := s.Gap; g != nil {
		fmt.Fprintf(out, "slot %s: GAP recorded %s: the slot was lost and created again; changes committed between %s and %s were never streamed (the snapshot re-read every row's current state; intermediate transitions are missing from the topics)\n",
			s.Name, g.At.Local().Format(time.DateTime), g.From, g.To)
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tGROUP\tMEMBERS\tLAG\tDONE\tRUNNING\tFAILED\tRATE\tCOMMIT→CLAIM p50/p99")
	for i, st := range rep.Steps {
		rate, lat := rateAndLatency(rep, prev, i)
		fmt.Fprintf(tw, "%s\t%s (%s)\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", st.Step, st.Group, strings.ToLower(st.State), len(st.Members), st.Lag, st.Done, st.Running, st.Failed, rate, lat)
	}
	tw.Flush()
	for _, st := range rep.Steps {
		if len(st.Members) == 0 && st.Lag > 0 {
			fmt.Fprintf(out, "\n%s: %d events wait and no worker is in the group: its workers are down, or not ready (a --serve process still loading or crash-looping: see the worker's /readyz and log)", st.Step, st.Lag)
		}
	}
	fmt.Fprintln(out, "\n(runs: last hour; lag: events in the trigger topic not yet committed by the group)")
	fmt.Fprintln(out, "\nJOBS")
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	for _, j := range rep.Jobs {
		fmt.Fprintf(tw, "  %s\t%s\t%d\n", j.Step, j.Status, j.Count)
	}
	tw.Flush()
	fmt.Fprintf(out, "\nexpired leases: %d   dead letters: %d", rep.ExpiredLeases, rep.DeadLetters)
	if rep.LettersOwed > 0 {
		fmt.Fprintf(out, " (%d owed by failed runs, written by the step's workers)", rep.LettersOwed)
	}
	fmt.Fprintln(out)
}

func bytesIEC(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// rateAndLatency renders step i's completions per second since prev and its
// commit→claim p50/p99, "-" where unknown.
func rateAndLatency(rep, prev *adm.StatusReport, i int) (rate, lat string) {
	rate, lat = "-", "-"
	st := rep.Steps[i]
	if prev != nil && i < len(prev.Steps) {
		if dt := rep.At.Sub(prev.At).Seconds(); dt > 0 {
			rate = fmt.Sprintf("%.0f/s", float64(st.Done-prev.Steps[i].Done)/dt)
		}
	}
	if st.P50ms != nil && st.P99ms != nil {
		lat = fmt.Sprintf("%.1f / %.1f ms", *st.P50ms, *st.P99ms)
	}
	return rate, lat
}
