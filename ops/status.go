package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jobstream/jobstream/schema"
)

type slotStatus struct {
	Name          string `json:"name"`
	Exists        bool   `json:"exists"`
	Active        bool   `json:"active"`
	ActivePID     *int   `json:"active_pid"`
	ConfirmedLSN  string `json:"confirmed_flush_lsn"`
	RetainedBytes int64  `json:"retained_wal_bytes"`
	WALStatus     string `json:"wal_status"`
	// Gap is the last gap the reader recorded in jobstream_slots: changes
	// it never streamed because the slot was lost or re-created.
	Gap *slotGap `json:"gap,omitempty"`
}

// slotGap is a stretch of WAL no slot streamed.
type slotGap struct {
	From string    `json:"from_lsn"`
	To   string    `json:"to_lsn"`
	At   time.Time `json:"recorded_at"`
}

type partitionLag struct {
	Partition int   `json:"partition"`
	Committed int64 `json:"committed"`
	End       int64 `json:"end"`
	Lag       int64 `json:"lag"`
}

type stepStatus struct {
	Step       string         `json:"step"`
	Topic      string         `json:"topic"`
	Group      string         `json:"group"`
	State      string         `json:"group_state"`
	Members    []groupMember  `json:"members"`
	Partitions []partitionLag `json:"partitions"`
	Lag        int64          `json:"lag"`
	Done       int64          `json:"runs_done"`
	Running    int64          `json:"runs_running"`
	Failed     int64          `json:"runs_failed"`
	P50ms      *float64       `json:"commit_to_claim_p50_ms"`
	P99ms      *float64       `json:"commit_to_claim_p99_ms"`
}

type jobCount struct {
	Step   string `json:"current_step"`
	Status string `json:"status"`
	Count  int64  `json:"count"`
}

type statusReport struct {
	At            time.Time    `json:"at"`
	Slot          slotStatus   `json:"slot"`
	Steps         []stepStatus `json:"steps"`
	Jobs          []jobCount   `json:"jobs"`
	ExpiredLeases int64        `json:"expired_leases"`
	DeadLetters   int64        `json:"dead_letters"`
	LettersOwed   int64        `json:"dead_letters_owed"`
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
	f.str(&c.slot, "slot", "JOBSTREAM_SLOT", "jobstream", "logical replication slot")
	f.BoolVar(&c.json, "json", false, "print JSON")
	f.BoolVar(&c.watch, "watch", false, "redraw in place every --interval until Ctrl-C")
	f.dur(&c.interval, "interval", "JOBSTREAM_STATUS_REFRESH", time.Second, "refresh interval of --watch")
	if err := f.parse(args); err != nil {
		return err
	}
	if err := c.needDB(); err != nil {
		return err
	}
	if err := c.needBrokers(); err != nil {
		return err
	}
	p, err := c.loadPipeline()
	if err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, c.databaseURL)
	if err != nil {
		return redactErr(schema.PostgresUnreachable(err))
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil {
		return redactErr(schema.PostgresUnreachable(err))
	}
	broker, err := c.reachBroker(ctx)
	if err != nil {
		return err
	}
	a := newAdmin(broker)
	var prev *statusReport
	for {
		rep, err := collectStatus(ctx, pool, a, p, c.prefix, c.slot)
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

// collectStatus reads the whole report from Postgres and the broker.
func collectStatus(ctx context.Context, pool *pgxpool.Pool, a *admin, p schema.Pipeline, prefix, slot string) (*statusReport, error) {
	rep := &statusReport{At: time.Now().UTC(), Slot: slotStatus{Name: slot}}
	err := pool.QueryRow(ctx, `SELECT active, active_pid, coalesce(confirmed_flush_lsn::text, ''),
		coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint, coalesce(wal_status, '')
		FROM pg_replication_slots WHERE slot_name = $1`, slot).
		Scan(&rep.Slot.Active, &rep.Slot.ActivePID, &rep.Slot.ConfirmedLSN, &rep.Slot.RetainedBytes, &rep.Slot.WALStatus)
	switch {
	case err == nil:
		rep.Slot.Exists = true
	case !errors.Is(err, pgx.ErrNoRows):
		return nil, fmt.Errorf("read slot: %w", err)
	}

	// Older schemas lack the gap columns: then there is no gap to show.
	var gap slotGap
	if err := pool.QueryRow(ctx, `SELECT gap_from_lsn::text, gap_to_lsn::text, gap_at FROM jobstream_slots
		WHERE slot_name = $1 AND gap_at IS NOT NULL`, slot).Scan(&gap.From, &gap.To, &gap.At); err == nil {
		rep.Slot.Gap = &gap
	}

	runs := map[string]stepStatus{}
	rows, err := pool.Query(ctx, `SELECT step, count(*) FILTER (WHERE outcome = 'done'), count(*) FILTER (WHERE finished_at IS NULL),
		count(*) FILTER (WHERE outcome = 'failed'),
		percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - trigger_commit_at) * 1000),
		percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - trigger_commit_at) * 1000)
		FROM jobstream_runs WHERE started_at > now() - interval '1 hour' OR finished_at IS NULL GROUP BY step`)
	if err != nil {
		return nil, fmt.Errorf("read runs: %w", err)
	}
	var st stepStatus
	if _, err := pgx.ForEachRow(rows, []any{&st.Step, &st.Done, &st.Running, &st.Failed, &st.P50ms, &st.P99ms}, func() error {
		runs[st.Step] = st
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read runs: %w", err)
	}
	if err := pool.QueryRow(ctx, `SELECT
			(SELECT count(*) FROM jobstream_runs WHERE finished_at IS NULL AND lease_expires_at < now()),
			(SELECT count(*) FROM jobstream_runs WHERE dead_letter IS NOT NULL AND dead_lettered_at IS NULL)`).Scan(&rep.ExpiredLeases, &rep.LettersOwed); err != nil {
		return nil, fmt.Errorf("read leases: %w", err)
	}
	rows, err = pool.Query(ctx, `SELECT coalesce(current_step, ''), coalesce(status, ''), count(*) FROM jobs GROUP BY 1, 2 ORDER BY 1, 2`)
	if err != nil {
		return nil, fmt.Errorf("read jobs: %w", err)
	}
	var jc jobCount
	if _, err := pgx.ForEachRow(rows, []any{&jc.Step, &jc.Status, &jc.Count}, func() error {
		rep.Jobs = append(rep.Jobs, jc)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read jobs: %w", err)
	}

	for _, step := range p.Steps[1:] {
		trigger, _ := p.Trigger(step)
		s := runs[step]
		s.Step, s.Topic, s.Group = step, schema.Topic(prefix, trigger), schema.GroupID(prefix, step)
		var err error
		if s.State, s.Members, err = a.members(ctx, s.Group); err != nil {
			return nil, err
		}
		offs, err := a.offsets(ctx, s.Topic)
		if err != nil {
			return nil, err
		}
		var parts []int
		for _, o := range offs {
			parts = append(parts, o.Partition)
		}
		committed := map[int]int64{}
		if len(parts) > 0 {
			if committed, err = a.committed(ctx, s.Group, s.Topic, parts); err != nil {
				return nil, err
			}
		}
		for _, o := range offs {
			c, ok := committed[o.Partition]
			if !ok || c < 0 {
				c = o.First // never committed: a new group starts at the first offset
			}
			pl := partitionLag{Partition: o.Partition, Committed: c, End: o.End, Lag: max(o.End-c, 0)}
			s.Partitions = append(s.Partitions, pl)
			s.Lag += pl.Lag
		}
		rep.Steps = append(rep.Steps, s)
	}
	dlq, err := a.offsets(ctx, schema.DLQTopic(prefix))
	if err != nil {
		return nil, err
	}
	for _, o := range dlq {
		rep.DeadLetters += o.End - o.First
	}
	return rep, nil
}

func printStatus(out io.Writer, rep *statusReport, prev *statusReport) {
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
func rateAndLatency(rep, prev *statusReport, i int) (rate, lat string) {
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
