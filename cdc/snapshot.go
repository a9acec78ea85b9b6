package cdc

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/jobstream/jobstream/schema"
)

// snapshot reads every table of the publication in a REPEATABLE READ
// transaction that imports the snapshot the slot exported (name), so it sees
// exactly the transactions committed before the slot's consistent point at:
// every later one is streamed from the slot. Each row becomes a read event
// (op "r"), source.snapshot "first" for the first, "last" for the last and
// "true" for the others, as Debezium marks them. It returns once the broker
// acknowledged them all. The replication connection stays open and idle
// meanwhile, which keeps the exported snapshot valid.
func (r *Reader) snapshot(ctx context.Context, s *stream, name string, at pglogrepl.LSN) (int64, error) {
	pc, err := r.pool.Acquire(ctx)
	if err != nil {
		return 0, fmt.Errorf("connect: %w", err)
	}
	defer pc.Release()
	tx, xmin, tables, err := importSnapshot(ctx, pc.Conn(), name, r.cfg.Publication)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // read-only
	r.log.Info("initial snapshot started", "slot", r.cfg.Slot, "tables", len(tables), "consistent_point", at)

	// One row is held back until the next is read, to know which is last.
	var held *change
	var n int64
	emit := func(c *change, marker string) error {
		c.src.snapshot = marker
		now := time.Now()
		c.src.tsMs, c.src.tsUs = now.UnixMilli(), now.UnixMicro()
		return s.routeChange(ctx, c)
	}
	for _, t := range tables {
		if skipTable(t.Table) {
			continue
		}
		facts, err := lookupColumns(ctx, tx, t.Schema, t.Table) // for the form of the rows' events
		if err != nil {
			return 0, err
		}
		rows, err := tx.Query(ctx, "SELECT * FROM "+pgx.Identifier{t.Schema, t.Table}.Sanitize(), pgx.QueryResultFormats{pgx.TextFormatCode})
		if err != nil {
			return 0, fmt.Errorf("read %s.%s: %w", t.Schema, t.Table, err)
		}
		rel := relationOf(t, rows.FieldDescriptions())
		s.route.describe(rel, facts)
		for rows.Next() {
			if held != nil {
				if err := emit(held, heldMarker(n)); err != nil {
					rows.Close()
					return 0, err
				}
			}
			n++
			held = &change{op: schema.OpRead, rel: rel, after: tupleOf(rows.RawValues()),
				src: source{txID: uint64(xmin), lsn: at, schema: t.Schema, table: t.Table}}
		}
		if err := rows.Err(); err != nil {
			return 0, fmt.Errorf("read %s.%s: %w", t.Schema, t.Table, err)
		}
	}
	if held != nil {
		if err := emit(held, "last"); err != nil {
			return 0, err
		}
	}
	if err := s.pl.drain(); err != nil {
		return 0, err
	}
	return n, nil
}

// heldMarker is source.snapshot of a row held back when n rows were read
// and another follows: "first" for the first row, "true" for the others.
func heldMarker(n int64) string {
	if n == 1 {
		return "first"
	}
	return "true"
}

// importSnapshot opens a read-only REPEATABLE READ transaction on conn that
// imports the exported snapshot name, and returns it with the snapshot's
// xmin and the tables of publication pub.
func importSnapshot(ctx context.Context, conn *pgx.Conn, name, pub string) (tx pgx.Tx, xmin int64, tables []publishedTable, err error) {
	tx, err = conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, 0, nil, fmt.Errorf("begin: %w", err)
	}
	fail := func(err error) (pgx.Tx, int64, []publishedTable, error) {
		tx.Rollback(context.Background()) //nolint:errcheck // read-only
		return nil, 0, nil, err
	}
	if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT "+quoteLiteral(name)); err != nil {
		return fail(fmt.Errorf("import snapshot %s: %w", name, err))
	}
	if err := tx.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint`).Scan(&xmin); err != nil {
		return fail(fmt.Errorf("read snapshot: %w", err))
	}
	rows, err := tx.Query(ctx, `SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2`, pub)
	if err != nil {
		return fail(fmt.Errorf("list published tables: %w", err))
	}
	if tables, err = pgx.CollectRows(rows, pgx.RowToStructByPos[publishedTable]); err != nil {
		return fail(fmt.Errorf("list published tables: %w", err))
	}
	return tx, xmin, tables, nil
}

// publishedTable is a table a publication covers.
type publishedTable struct{ Schema, Table string }

// relationOf describes the rows of t read with fields fds as a pgoutput
// relation message would.
func relationOf(t publishedTable, fds []pgconn.FieldDescription) *pglogrepl.RelationMessage {
	rel := &pglogrepl.RelationMessage{Namespace: t.Schema, RelationName: t.Table}
	for _, fd := range fds {
		rel.Columns = append(rel.Columns, &pglogrepl.RelationMessageColumn{Name: fd.Name, DataType: fd.DataTypeOID, TypeModifier: fd.TypeModifier})
	}
	return rel
}

// tupleOf turns a row's raw text values into the tuple a pgoutput message
// would carry (nil: SQL NULL), copying them out of the row's buffer.
func tupleOf(raw [][]byte) *pglogrepl.TupleData {
	tuple := &pglogrepl.TupleData{Columns: make([]*pglogrepl.TupleDataColumn, len(raw))}
	for i, v := range raw {
		col := &pglogrepl.TupleDataColumn{DataType: 'n'}
		if v != nil {
			col.DataType, col.Data = 't', append([]byte(nil), v...)
		}
		tuple.Columns[i] = col
	}
	return tuple
}

// skipTable reports whether changes of table are jobstream's own
// bookkeeping, never streamed even when a publication covers all tables.
func skipTable(table string) bool {
	return table == "jobstream_runs" || table == "jobstream_slots"
}

// quoteLiteral quotes s as an SQL string literal.
func quoteLiteral(s string) string {
	out := make([]byte, 0, len(s)+2)
	out = append(out, '\'')
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' {
			out = append(out, '\'')
		}
		out = append(out, s[i])
	}
	return string(append(out, '\''))
}
