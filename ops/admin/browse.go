package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/schema"
)

// JobsOptions says which jobs Jobs lists: a page of them in job_id order.
type JobsOptions struct {
	// Step and Status filter on current_step and status ("": any).
	Step, Status string
	// Search finds the job whose id is Search, or else the ids that start
	// with it ("": no search).
	Search string
	// After is the last job id of the previous page ("": the first page).
	After string
	// Limit is the page size (default 50, at most 500).
	Limit int
}

// JobRow is one job in a list.
type JobRow struct {
	JobID     string    `json:"job_id"`
	Step      string    `json:"current_step"`
	Status    string    `json:"status"`
	Error     string    `json:"error,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// JobsPage is one page of Jobs; Next is the After of the next page ("" at
// the last).
type JobsPage struct {
	Jobs []JobRow `json:"jobs"`
	Next string   `json:"next,omitempty"`
}

// Jobs lists a page of jobs in job_id order, filtered by step and status,
// by keyset (After), so that every page of a table of millions is read from
// the index jobs_current_step_status (schema's migration) or the primary
// key. It only reads.
func Jobs(ctx context.Context, pool *pgxpool.Pool, o JobsOptions) (*JobsPage, error) {
	limit := o.Limit
	if limit <= 0 {
		limit = 50
	}
	limit = min(limit, 500)
	idType, err := jobIDType(ctx, pool)
	if err != nil {
		return nil, err
	}
	var where []string
	var args []any
	arg := func(v any) string { args = append(args, v); return fmt.Sprintf("$%d", len(args)) }
	if o.Step != "" {
		where = append(where, "current_step = "+arg(o.Step))
	}
	if o.Status != "" {
		where = append(where, "status = "+arg(o.Status))
	}
	if o.After != "" {
		where = append(where, "job_id > "+arg(o.After)+"::"+idType)
	}
	page := &JobsPage{Jobs: []JobRow{}}
	if o.Search != "" {
		// The exact id first, from the primary key; then ids it starts.
		exact := append(where[:len(where):len(where)], "job_id = "+arg(o.Search)+"::"+idType)
		if err := listJobs(ctx, pool, exact, args, 1, page); err != nil && !isBadText(err) {
			return nil, err
		}
		if len(page.Jobs) > 0 {
			return page, nil
		}
		args = args[:len(args)-1]
		where = append(where, "job_id::text LIKE "+arg(escapeLike(o.Search)+"%"))
	}
	if err := listJobs(ctx, pool, where, args, limit+1, page); err != nil {
		if isBadText(err) { // After is no id of this type
			return nil, invalid{ErrBadJobID, fmt.Sprintf("%q is no job id of type %s", o.After, idType)}
		}
		return nil, err
	}
	if len(page.Jobs) > limit {
		page.Jobs = page.Jobs[:limit]
		page.Next = page.Jobs[limit-1].JobID
	}
	return page, nil
}

// ErrBadJobID is returned by Jobs for an After that is no job id.
var ErrBadJobID = errors.New("not a job id of the table's type")

func listJobs(ctx context.Context, pool *pgxpool.Pool, where []string, args []any, limit int, page *JobsPage) error {
	sql := `SELECT job_id::text, coalesce(current_step, ''), coalesce(status, ''), coalesce(error, ''), updated_at FROM jobs`
	if len(where) > 0 {
		sql += " WHERE " + strings.Join(where, " AND ")
	}
	sql += fmt.Sprintf(" ORDER BY job_id LIMIT %d", limit)
	rows, err := pool.Query(ctx, sql, args...)
	if err != nil {
		if isBadText(err) {
			return err
		}
		return fromPostgres("the jobs", err)
	}
	defer rows.Close()
	for rows.Next() {
		var j JobRow
		if err := rows.Scan(&j.JobID, &j.Step, &j.Status, &j.Error, &j.UpdatedAt); err != nil {
			return err
		}
		page.Jobs = append(page.Jobs, j)
	}
	if err := rows.Err(); err != nil && !isBadText(err) {
		return fromPostgres("the jobs", err)
	}
	return rows.Err()
}

// isBadText reports a value Postgres could not read as the job id's type.
func isBadText(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "22P02" || pe.Code == "22003")
}

func escapeLike(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}

// JobDetail is one job's row as it is now.
type JobDetail struct {
	JobRow
	Payload json.RawMessage `json:"payload"`
	Results json.RawMessage `json:"results"`
}

// ErrNoSuchJob is returned by Job for a job id the table does not hold.
var ErrNoSuchJob = errors.New("no such job")

// Job reads one job's row. It only reads.
func Job(ctx context.Context, pool *pgxpool.Pool, id string) (*JobDetail, error) {
	idType, err := jobIDType(ctx, pool)
	if err != nil {
		return nil, err
	}
	var j JobDetail
	var payload, results []byte
	err = pool.QueryRow(ctx, `SELECT job_id::text, coalesce(current_step, ''), coalesce(status, ''), coalesce(error, ''), updated_at,
		coalesce(payload, 'null'::jsonb)::text, coalesce(results, 'null'::jsonb)::text FROM jobs WHERE job_id = $1::`+idType, id).
		Scan(&j.JobID, &j.Step, &j.Status, &j.Error, &j.UpdatedAt, &payload, &results)
	if errors.Is(err, pgx.ErrNoRows) || isBadText(err) {
		return nil, ErrNoSuchJob
	}
	if err != nil {
		return nil, fromPostgres("job "+id, err)
	}
	j.Payload, j.Results = payload, results
	return &j, nil
}

// DeadLettersOptions says which dead letters DeadLetters reads.
type DeadLettersOptions struct {
	Deployment
	// Limit is how many of the newest letters to return (default 100).
	Limit int
}

// DeadLetterEntry is one record of the dead-letter topic.
type DeadLetterEntry struct {
	Time      time.Time         `json:"time"`
	Partition int               `json:"partition"`
	Offset    int64             `json:"offset"`
	Key       string            `json:"key"`
	Letter    schema.DeadLetter `json:"letter"`
}

// DeadLetters returns the newest letters of the dead-letter topic, newest
// first: up to Limit from the end of each partition. It only reads.
func DeadLetters(ctx context.Context, k *Kafka, o DeadLettersOptions) ([]DeadLetterEntry, error) {
	limit := o.Limit
	if limit <= 0 {
		limit = 100
	}
	_, topics := o.resolve()
	parts, err := k.Offsets(ctx, topics.DLQ())
	if errors.Is(err, kafka.UnknownTopicOrPartition) {
		return []DeadLetterEntry{}, nil // no letter was ever written
	}
	if err != nil {
		return nil, err
	}
	out := []DeadLetterEntry{}
	for _, p := range parts {
		from := max(p.First, p.End-int64(limit))
		err := k.Read(ctx, topics.DLQ(), p.Partition, from, p.End, func(m kafka.Message) error {
			e := DeadLetterEntry{Time: m.Time, Partition: m.Partition, Offset: m.Offset, Key: schema.JobIDFromKey(m.Key)}
			if err := json.Unmarshal(m.Value, &e.Letter); err != nil {
				e.Letter.Reason = "unreadable letter: " + err.Error()
			}
			out = append(out, e)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Time.After(out[j].Time) })
	return out[:min(len(out), limit)], nil
}

// fromPostgres says which read of Postgres failed, in one sentence an
// operator can act on: a connection that could not be made is said as
// schema.PostgresUnreachable says it; one lost mid-read names Postgres.
func fromPostgres(what string, err error) error {
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		return schema.PostgresUnreachable(err)
	}
	return fmt.Errorf("cannot read %s from Postgres: %w", what, err)
}

// jobIDType is consumers.JobIDType, its failure to reach Postgres said as
// fromPostgres says it.
func jobIDType(ctx context.Context, pool *pgxpool.Pool) (string, error) {
	t, err := consumers.JobIDType(ctx, pool)
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.As(err, new(*pgconn.ConnectError)) {
		return "", fromPostgres("the type of jobs.job_id", err)
	}
	return t, err
}
