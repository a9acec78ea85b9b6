package ops

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/jackc/pgx/v5/pgxpool"

	adm "github.com/jobstream/jobstream/ops/admin"
)

func runAudit(ctx context.Context, args []string, out io.Writer) error {
	var c common
	var asJSON bool
	f := newFlags("audit", "audit JOB_ID [flags]\n\nPrints a job's whole history from the topics (only the partition its key hashes to), in LSN order:\n"+
		"time, step, status, op, attempt, worker, duration, replay marks and dead letters.")
	c.register(f, true, true)
	f.BoolVar(&asJSON, "json", false, "print JSON")
	// Accept the job id before or after the flags.
	var jobID string
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		jobID, args = args[0], args[1:]
	}
	if err := f.parse(args); err != nil {
		return err
	}
	if jobID == "" && f.NArg() == 1 {
		jobID = f.Arg(0)
	}
	if jobID == "" || f.NArg() > 1 {
		return usagef("give exactly one JOB_ID: jobstream audit j42")
	}
	p, err := c.needs(false, true)
	if err != nil {
		return err
	}
	broker, err := c.reachBroker(ctx)
	if err != nil {
		return err
	}
	var pool *pgxpool.Pool // the runs are added only with a database
	if c.databaseURL != "" {
		if pool, err = connectPool(ctx, c.databaseURL); err != nil {
			return err
		}
		defer pool.Close()
	}
	entries, err := adm.Audit(ctx, adm.NewKafka(broker), pool, adm.AuditOptions{JobID: jobID, Deployment: adm.Deployment{Pipeline: p, TopicPrefix: c.prefix}})
	if err != nil {
		return redactErr(err)
	}
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"job_id": jobID, "history": entries})
	}
	if len(entries) == 0 {
		fmt.Fprintf(out, "no events for job %s in the %s.* topics\n", jobID, c.prefix)
		return nil
	}
	return printAudit(out, jobID, entries)
}

// printAudit writes a job's history as a table.
func printAudit(out io.Writer, jobID string, entries []adm.AuditEntry) error {
	fmt.Fprintf(out, "history of job %s (%d entries)\n\n", jobID, len(entries))
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tSTEP\tSTATUS\tOP\tCHAIN.ATTEMPT\tWORKER\tDURATION\tWHERE\tNOTE")
	for _, e := range entries {
		attempt := ""
		if e.Attempt > 0 {
			attempt = fmt.Sprintf("%d.%d", e.Chain, e.Attempt)
		}
		note := e.Error
		switch e.Kind {
		case "rewind":
			note = rewindNote(e.Detail)
		case "replay", "dead-letter":
			note = e.Kind + ": " + string(e.Detail)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s/%d@%d\t%s\n", e.Time.Format("2006-01-02 15:04:05.000"), e.Step, e.Status, e.Op,
			attempt, e.Worker, e.Duration, e.Topic, e.Partition, e.Offset, note)
	}
	return tw.Flush()
}

// rewindNote is the audit table's note for a rewind.
func rewindNote(detail json.RawMessage) string {
	var m adm.ReplayMark
	if json.Unmarshal(detail, &m) != nil || len(m.FromState) != 2 {
		return "rewound by replay: " + string(detail)
	}
	note := fmt.Sprintf("rewound by replay of %s from (%s, %s)", m.Step, m.FromState[0], m.FromState[1])
	if m.By != "" {
		note += " by " + m.By
	}
	if m.Forced {
		note += ", forced"
	}
	return note
}
