package admin

import (
	"cmp"
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// StatusOptions says which deployment Status reports on.
type StatusOptions struct {
	Deployment
	// Slot is the reader's logical replication slot (default SlotDefault).
	Slot string
}

// SlotStatus is the reader's replication slot as Postgres sees it.
type SlotStatus struct {
	Name          string `json:"name"`
	Exists        bool   `json:"exists"`
	Active        bool   `json:"active"`
	ActivePID     *int   `json:"active_pid"`
	ConfirmedLSN  string `json:"confirmed_flush_lsn"`
	RetainedBytes int64  `json:"retained_wal_bytes"`
	WALStatus     string `json:"wal_status"`
	// Gap is the last gap the reader recorded in jobstream_slots: changes
	// it never streamed because the slot was lost or re-created.
	Gap *SlotGap `json:"gap,omitempty"`
}

// SlotGap is a stretch of WAL no slot streamed.
type SlotGap struct {
	From string    `json:"from_lsn"`
	To   string    `json:"to_lsn"`
	At   time.Time `json:"recorded_at"`
}

// PartitionLag is how far a step's group is behind in one partition of its
// trigger topic.
type PartitionLag struct {
	Partition int   `json:"partition"`
	Committed int64 `json:"committed"`
	End       int64 `json:"end"`
	Lag       int64 `json:"lag"`
}

// StepStatus is one step's consumer group, its lag and its runs of the last
// hour (and those still open).
type StepStatus struct {
	Step       string         `json:"step"`
	Topic      string         `json:"topic"`
	Group      string         `json:"group"`
	State      string         `json:"group_state"`
	Members    []GroupMember  `json:"members"`
	Partitions []PartitionLag `json:"partitions"`
	Lag        int64          `json:"lag"`
	Done       int64          `json:"runs_done"`
	Running    int64          `json:"runs_running"`
	Failed     int64          `json:"runs_failed"`
	P50ms      *float64       `json:"commit_to_claim_p50_ms"`
	P99ms      *float64       `json:"commit_to_claim_p99_ms"`
}

// JobCount is how many jobs are at one (current_step, status).
type JobCount struct {
	Step   string `json:"current_step"`
	Status string `json:"status"`
	Count  int64  `json:"count"`
}

// StatusReport is what `jobstream status` shows: the slot, each step's
// group and lag, jobs per state, expired leases and dead letters.
type StatusReport struct {
	At            time.Time    `json:"at"`
	Slot          SlotStatus   `json:"slot"`
	Steps         []StepStatus `json:"steps"`
	Jobs          []JobCount   `json:"jobs"`
	ExpiredLeases int64        `json:"expired_leases"`
	DeadLetters   int64        `json:"dead_letters"`
	LettersOwed   int64        `json:"dead_letters_owed"`
}

// Status reads the whole report from Postgres and the brokers. It only
// reads: it changes nothing, and can be called as often as a view redraws.
func Status(ctx context.Context, pool *pgxpool.Pool, k *Kafka, o StatusOptions) (*StatusReport, error) {
	p, topics := o.resolve()
	rep := &StatusReport{At: time.Now().UTC(), Slot: SlotStatus{Name: cmp.Or(o.Slot, SlotDefault)}}
	if err := readSlot(ctx, pool, &rep.Slot); err != nil {
		return nil, err
	}
	runs, err := readRuns(ctx, pool)
	if err != nil {
		return nil, err
	}
	if err := pool.QueryRow(ctx, `SELECT
			(SELECT count(*) FROM jobstream_runs WHERE finished_at IS NULL AND lease_expires_at < now()),
			(SELECT count(*) FROM jobstream_runs WHERE dead_letter IS NOT NULL AND dead_lettered_at IS NULL)`).Scan(&rep.ExpiredLeases, &rep.LettersOwed); err != nil {
		return nil, fromPostgres("the leases", err)
	}
	if rep.Jobs, err = readJobs(ctx, pool); err != nil {
		return nil, err
	}
	for _, step := range p.Steps[1:] {
		trigger, _ := p.Trigger(step)
		s := runs[step]
		s.Step, s.Topic, s.Group = step, topics.Step(trigger), topics.Group(step)
		if err := groupLag(ctx, k, &s); err != nil {
			return nil, err
		}
		rep.Steps = append(rep.Steps, s)
	}
	dlq, err := k.Offsets(ctx, topics.DLQ())
	if err != nil {
		return nil, err
	}
	for _, o := range dlq {
		rep.DeadLetters += o.End - o.First
	}
	return rep, nil
}

// readSlot fills s from pg_replication_slots and the last gap recorded.
func readSlot(ctx context.Context, pool *pgxpool.Pool, s *SlotStatus) error {
	err := pool.QueryRow(ctx, `SELECT active, active_pid, coalesce(confirmed_flush_lsn::text, ''),
		coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint, coalesce(wal_status, '')
		FROM pg_replication_slots WHERE slot_name = $1`, s.Name).
		Scan(&s.Active, &s.ActivePID, &s.ConfirmedLSN, &s.RetainedBytes, &s.WALStatus)
	switch {
	case err == nil:
		s.Exists = true
	case !errors.Is(err, pgx.ErrNoRows):
		return fromPostgres("the slot", err)
	}
	// Older schemas lack the gap columns: then there is no gap to show.
	var gap SlotGap
	if err := pool.QueryRow(ctx, `SELECT gap_from_lsn::text, gap_to_lsn::text, gap_at FROM jobstream_slots
		WHERE slot_name = $1 AND gap_at IS NOT NULL`, s.Name).Scan(&gap.From, &gap.To, &gap.At); err == nil {
		s.Gap = &gap
	}
	return nil
}

// readRuns counts each step's runs of the last hour and those still open.
func readRuns(ctx context.Context, pool *pgxpool.Pool) (map[string]StepStatus, error) {
	runs := map[string]StepStatus{}
	rows, err := pool.Query(ctx, `SELECT step, count(*) FILTER (WHERE outcome = 'done'), count(*) FILTER (WHERE finished_at IS NULL),
		count(*) FILTER (WHERE outcome = 'failed'),
		percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - trigger_commit_at) * 1000),
		percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - trigger_commit_at) * 1000)
		FROM jobstream_runs WHERE started_at > now() - interval '1 hour' OR finished_at IS NULL GROUP BY step`)
	if err != nil {
		return nil, fromPostgres("the runs", err)
	}
	var st StepStatus
	if _, err := pgx.ForEachRow(rows, []any{&st.Step, &st.Done, &st.Running, &st.Failed, &st.P50ms, &st.P99ms}, func() error {
		runs[st.Step] = st
		return nil
	}); err != nil {
		return nil, fromPostgres("the runs", err)
	}
	return runs, nil
}

// readJobs counts the jobs per (current_step, status).
func readJobs(ctx context.Context, pool *pgxpool.Pool) ([]JobCount, error) {
	rows, err := pool.Query(ctx, `SELECT coalesce(current_step, ''), coalesce(status, ''), count(*) FROM jobs GROUP BY 1, 2 ORDER BY 1, 2`)
	if err != nil {
		return nil, fromPostgres("the jobs", err)
	}
	var jobs []JobCount
	var jc JobCount
	if _, err := pgx.ForEachRow(rows, []any{&jc.Step, &jc.Status, &jc.Count}, func() error {
		jobs = append(jobs, jc)
		return nil
	}); err != nil {
		return nil, fromPostgres("the jobs", err)
	}
	return jobs, nil
}

// groupLag fills the group's state, members and lag per partition of s.Topic.
func groupLag(ctx context.Context, k *Kafka, s *StepStatus) error {
	var err error
	if s.State, s.Members, err = k.Members(ctx, s.Group); err != nil {
		return err
	}
	offs, err := k.Offsets(ctx, s.Topic)
	if err != nil {
		return err
	}
	var parts []int
	for _, o := range offs {
		parts = append(parts, o.Partition)
	}
	committed := map[int]int64{}
	if len(parts) > 0 {
		if committed, err = k.Committed(ctx, s.Group, s.Topic, parts); err != nil {
			return err
		}
	}
	for _, o := range offs {
		c, ok := committed[o.Partition]
		if !ok || c < 0 {
			c = o.First // never committed: a new group starts at the first offset
		}
		pl := PartitionLag{Partition: o.Partition, Committed: c, End: o.End, Lag: max(o.End-c, 0)}
		s.Partitions = append(s.Partitions, pl)
		s.Lag += pl.Lag
	}
	return nil
}
