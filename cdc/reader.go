package cdc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/jobstream/jobstream/schema"
	"github.com/jobstream/jobstream/schema/kafkaconn"
)

// lockClass is the first key of the advisory lock a reader holds on its
// slot (the second is hashtext of the slot name).
const lockClass = 7428092

// Reader streams the jobs table's changes into Kafka.
type Reader struct {
	cfg    Config
	log    *slog.Logger
	broker kafkaconn.Broker
	prod   *producer
	stats  Stats

	// Postgres: the pool of ordinary queries, and the configurations of
	// the lock connection and the replication connection, set by Run.
	pool    *pgxpool.Pool
	connCfg *pgx.ConnConfig
	replCfg *pgconn.Config

	db         string
	maxMessage int

	// The chain a session wires: the router (set once the broker's message
	// limit is known) and the checkpoint (the positions, which outlive
	// sessions); each session has its own stream and pipeline.
	route *router
	cp    checkpoint

	// recreated says RecreateSlot has been done: once per Reader, not at
	// every reconnect.
	recreated bool

	ready     chan struct{}
	readyOnce sync.Once
}

// New checks cfg and returns a Reader; it connects nothing.
func New(cfg Config) (*Reader, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Reader{
		cfg:    cfg,
		log:    cfg.Logger,
		broker: kafkaconn.Broker{Addrs: cfg.Brokers, SASL: cfg.SASL, TLS: cfg.TLS},
		ready:  make(chan struct{}),
	}
	r.cp = checkpoint{stats: &r.stats, hooks: cfg.Hooks}
	return r, nil
}

// Ready is closed once this reader holds its slot and the slot exists: every
// change committed after that moment will be streamed. A standby's Ready
// closes when it takes over.
func (r *Reader) Ready() <-chan struct{} { return r.ready }

func (r *Reader) markReady() { r.readyOnce.Do(func() { close(r.ready) }) }

// Stats returns the reader's live counters.
func (r *Reader) Stats() *Stats { return &r.stats }

// fatalError is a problem retrying cannot fix: Run returns it.
type fatalError struct{ err error }

func (e *fatalError) Error() string { return e.err.Error() }
func (e *fatalError) Unwrap() error { return e.err }

func fatal(err error) error { return &fatalError{err} }

// Run checks Postgres and the broker, then streams until ctx is done. A
// deliberate stop returns nil. A second reader of the same slot waits as a
// standby until the first is gone. Lost connections to Postgres or the
// broker are retried with capped exponential backoff; a configuration
// problem, or a slot Postgres invalidated, is returned as one sentence.
func (r *Reader) Run(ctx context.Context) error {
	closePool, err := r.openPool(ctx)
	if err != nil {
		return err
	}
	defer closePool()
	r.prod = newProducer(r.broker, r.cfg.Partitions, r.log)
	defer r.prod.close()
	if err := r.preflight(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	r.route = newRouter(&r.cfg, r.db, r.maxMessage, r.log)
	r.prod.deadLetter = r.route.deadLetter

	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 200 * time.Millisecond
	bo.MaxInterval = 5 * time.Second
	bo.MaxElapsedTime = 0
	for {
		started := time.Now()
		err := r.session(ctx)
		r.stats.Active.Store(false)
		r.stats.Standby.Store(false)
		if ctx.Err() != nil {
			return nil
		}
		var fe *fatalError
		if errors.As(err, &fe) {
			return fe.err
		}
		if time.Since(started) > time.Minute {
			bo.Reset()
		}
		wait := bo.NextBackOff()
		if isSlotBusy(err) {
			r.log.Info("the slot is still held by a reader that is going away; retrying", "slot", r.cfg.Slot, "retry_in", wait)
		} else {
			r.log.Warn("replication stream interrupted; reconnecting", "err", err, "retry_in", wait)
		}
		r.stats.Reconnects.Add(1)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// openPool sets the reader's pool (Config.Pool, or one of its own opened
// from DatabaseURL) and the configurations of its two connections of its
// own; closePool closes only a pool the reader opened.
func (r *Reader) openPool(ctx context.Context) (closePool func(), err error) {
	closePool = func() {}
	if r.cfg.Pool != nil {
		r.pool = r.cfg.Pool
	} else {
		pcfg, err := pgxpool.ParseConfig(r.cfg.DatabaseURL)
		if err != nil {
			return nil, fmt.Errorf("parse DATABASE_URL: %w", err)
		}
		if r.pool, err = pgxpool.NewWithConfig(ctx, pcfg); err != nil {
			return nil, fmt.Errorf("connect to Postgres: %w", err)
		}
		closePool = r.pool.Close
	}
	r.connCfg = r.pool.Config().ConnConfig
	r.replCfg = r.cfg.Replication
	if r.replCfg == nil {
		r.replCfg = &r.connCfg.Config
	}
	return closePool, nil
}

// session holds the slot's lock (waiting as a standby while another reader
// holds it), makes sure the slot exists (taking the initial snapshot when
// due) and streams until something fails.
func (r *Reader) session(ctx context.Context) error {
	lock, err := r.acquire(ctx)
	if err != nil {
		return err
	}
	defer lock.Close(context.Background())
	r.stats.Active.Store(true)
	// The publication may have changed while no reader ran, or since the
	// last session.
	if err := r.checkPublication(ctx, lock); err != nil {
		return err
	}

	conn, err := r.connectReplication(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())

	s := r.newStream(ctx, conn, lock)
	start, err := r.prepare(ctx, s)
	if err != nil {
		s.pl.stop(0)
		return err
	}
	r.markReady()
	err = s.run(ctx, start)
	if ctx.Err() == nil {
		s.pl.stop(0)
		if isPublicationMissing(err) {
			return r.publicationGone(ctx, lock, err)
		}
		return err
	}
	// A deliberate stop: let the batch in flight land and tell Postgres, so
	// that the next start sends little again.
	s.pl.stop(5 * time.Second)
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := pglogrepl.SendStandbyStatusUpdate(sctx, conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: max(r.cp.received, r.cp.acked), WALFlushPosition: r.cp.acked, WALApplyPosition: r.cp.acked,
	}); err != nil {
		r.log.Debug("cannot report the last position at stop", "err", err)
	}
	r.log.Info("stopped", "slot", r.cfg.Slot, "acknowledged", r.cp.acked)
	return err
}

// newStream wires one session's chain: the stream reads the replication
// connection and hands each change to the router, whose events go to a
// pipeline that produces them and hands acknowledged batches to the
// checkpoint; lock is the connection that holds the slot's lock.
func (r *Reader) newStream(ctx context.Context, conn *pgconn.PgConn, lock *pgx.Conn) *stream {
	return &stream{
		cfg: &r.cfg, log: r.log, stats: &r.stats, conn: conn, lock: lock,
		route: r.route, topics: r.prod, cp: &r.cp,
		pl:    newPipeline(ctx, r.prod, r.cp.acknowledge, &visibility{connect: r.connect}, r.cfg.MaxBatch, r.cfg.MaxBatchBytes),
		check: func(ctx context.Context) error { return r.checkPublication(ctx, lock) },
		rels:  map[uint32]*pglogrepl.RelationMessage{},
	}
}

// acquire connects and takes the slot's advisory lock, polling every
// StandbyPoll while another reader holds it. The lock is held for as long
// as the returned connection lives; Postgres releases it when that
// connection ends, also when its process was killed.
func (r *Reader) acquire(ctx context.Context) (*pgx.Conn, error) {
	cfg := r.connCfg.Copy()
	cfg.RuntimeParams["application_name"] = "jobstream-reader"
	// Let the server notice a vanished reader within about 30s, so that a
	// standby takes over from a host that went off the network too.
	cfg.RuntimeParams["tcp_keepalives_idle"] = "10"
	cfg.RuntimeParams["tcp_keepalives_interval"] = "5"
	cfg.RuntimeParams["tcp_keepalives_count"] = "4"
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	conn, err := pgx.ConnectConfig(cctx, cfg)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	standby := false
	for {
		var ok bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, hashtext($2))`, int32(lockClass), r.cfg.Slot).Scan(&ok); err != nil {
			conn.Close(context.Background())
			return nil, fmt.Errorf("take the slot's lock: %w", err)
		}
		if ok {
			if standby {
				r.log.Info("the active reader is gone; taking over", "slot", r.cfg.Slot)
			}
			r.stats.Standby.Store(false)
			return conn, nil
		}
		if !standby {
			r.log.Info("another reader holds the slot; waiting as standby", "slot", r.cfg.Slot)
			standby = true
			r.stats.Standby.Store(true)
		}
		select {
		case <-ctx.Done():
			conn.Close(context.Background())
			return nil, ctx.Err()
		case <-time.After(r.cfg.StandbyPoll):
		}
	}
}

func (r *Reader) connectReplication(ctx context.Context) (*pgconn.PgConn, error) {
	cfg := r.replCfg.Copy()
	cfg.RuntimeParams["replication"] = "database"
	cfg.RuntimeParams["application_name"] = "jobstream-reader"
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, err := pgconn.ConnectConfig(cctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect for replication: %w", err)
	}
	return conn, nil
}

// preflight turns the usual setup mistakes into one clear sentence each.
func (r *Reader) preflight(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn := r.pool
	if err := conn.Ping(cctx); err != nil {
		return schema.PostgresUnreachable(err)
	}

	var walLevel, db string
	var canReplicate bool
	if err := conn.QueryRow(cctx, `SELECT current_setting('wal_level'), current_database(),
		(SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)`).Scan(&walLevel, &db, &canReplicate); err != nil {
		return fmt.Errorf("read server settings: %w", err)
	}
	if walLevel != "logical" {
		return fmt.Errorf("Postgres has wal_level=%s; logical replication needs wal_level=logical in postgresql.conf (then restart Postgres)", walLevel)
	}
	if !canReplicate {
		return errors.New("the database user lacks the REPLICATION privilege; run ALTER ROLE <user> REPLICATION as a superuser")
	}
	r.db = db

	if err := r.checkPublication(cctx, conn); err != nil {
		return err
	}

	slot, err := lookupSlot(cctx, conn, r.cfg.Slot)
	if err != nil {
		return err
	}
	if slot != nil {
		if err := slot.usable(r.cfg.Slot, db); err != nil {
			return err
		}
	}

	if err := r.broker.Ping(ctx, 10*time.Second); err != nil {
		return err
	}
	limit := r.prod.messageLimit(ctx)
	switch {
	case r.cfg.MaxMessageBytes > 0 && limit > 0:
		r.maxMessage = min(r.cfg.MaxMessageBytes, limit)
	case r.cfg.MaxMessageBytes > 0:
		r.maxMessage = r.cfg.MaxMessageBytes
	case limit > 0:
		r.maxMessage = limit
	default:
		r.maxMessage = 1_000_000
	}
	r.prod.maxMessage = r.maxMessage
	return r.prod.ensureTopic(ctx, schema.Topics{Prefix: r.cfg.TopicPrefix}.DLQ())
}

// checkPublication says, in one sentence naming the fix (a fatalError), why the
// publication cannot carry every change of the jobs table: it does not
// exist, does not include the table, or does not publish one of insert,
// update, delete and truncate (changes Postgres then filters out for good).
// A table Postgres cannot replicate updates and deletes of is reported too.
// The reader checks at start, at every reconnect and at every periodic
// status update.
func (r *Reader) checkPublication(ctx context.Context, conn querier) error {
	pub := r.cfg.Publication
	var ops []string
	var all bool
	err := conn.QueryRow(ctx, `SELECT array_remove(ARRAY[
			CASE WHEN NOT pubinsert THEN 'insert' END, CASE WHEN NOT pubupdate THEN 'update' END,
			CASE WHEN NOT pubdelete THEN 'delete' END, CASE WHEN NOT pubtruncate THEN 'truncate' END], NULL),
		puballtables FROM pg_publication WHERE pubname = $1`, pub).Scan(&ops, &all)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return fatal(fmt.Errorf("publication %q does not exist, so the reader has nothing to stream; run jobstream migrate, which creates it for table jobs", pub))
	case err != nil:
		return fmt.Errorf("look up publication: %w", err)
	}
	rows, err := conn.Query(ctx, `SELECT t.schemaname, t.tablename, c.relreplident::text,
		EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
		FROM pg_publication_tables t
		JOIN pg_namespace n ON n.nspname = t.schemaname
		JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename
		WHERE t.pubname = $1 ORDER BY 1, 2`, pub)
	if err != nil {
		return fmt.Errorf("look up publication: %w", err)
	}
	var schemaName, table, ident string
	var hasPK, hasJobs bool
	var identProblem error
	_, err = pgx.ForEachRow(rows, []any{&schemaName, &table, &ident, &hasPK}, func() error {
		if table == "jobs" {
			hasJobs = true
		}
		switch {
		case identProblem != nil:
		case ident == "n" || ident == "d" && !hasPK:
			identProblem = fmt.Errorf("table %s has no primary key and no REPLICA IDENTITY, so Postgres cannot replicate its updates and deletes; run ALTER TABLE %s ADD PRIMARY KEY (job_id), or ALTER TABLE %s REPLICA IDENTITY FULL", table, table, table)
		case ident == "d":
			r.log.Debug("table has REPLICA IDENTITY DEFAULT: events of updates carry no before image, and deletes go to every step topic; ALTER TABLE ... REPLICA IDENTITY FULL gives both", "table", table)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("look up publication: %w", err)
	}
	switch {
	case !hasJobs && all:
		return fatal(fmt.Errorf("publication %q is FOR ALL TABLES but there is no table jobs to publish; run jobstream migrate first", pub))
	case !hasJobs:
		return fatal(fmt.Errorf("publication %q does not include table jobs, so the reader would stream none of its changes; run jobstream migrate (or ALTER PUBLICATION %s ADD TABLE jobs)", pub, pub))
	case len(ops) > 0:
		return fatal(fmt.Errorf("publication %q does not publish %s, so Postgres would drop those changes of table jobs for good; run ALTER PUBLICATION %s SET (publish = 'insert, update, delete, truncate'), or jobstream migrate",
			pub, strings.Join(ops, ", "), pub))
	}
	if identProblem != nil {
		return fatal(identProblem)
	}
	return nil
}

// connect opens a connection of the reader's own with its pool's
// configuration (TLS, tracer), within 15 seconds.
func (r *Reader) connect(ctx context.Context) (*pgx.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	return pgx.ConnectConfig(cctx, r.connCfg.Copy())
}

// querier is what the reader's checks need of a connection or a pool.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// publicationGone turns pgoutput's "publication does not exist", which
// retrying would only repeat, into one sentence: the publication is missing
// now (run jobstream migrate), or it exists again but the slot's WAL cannot
// be decoded past the moment it was gone (recreate the slot).
func (r *Reader) publicationGone(ctx context.Context, lock *pgx.Conn, err error) error {
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if perr := r.checkPublication(cctx, lock); perr != nil {
		var fe *fatalError
		if errors.As(perr, &fe) {
			return perr
		}
		return err // cannot tell; the next session checks again
	}
	return fatal(cannotDecode(r.cfg.Slot, r.cfg.Publication, r.cp.acked, err))
}

// isPublicationMissing reports whether err is pgoutput failing to find the
// publication it was asked to decode with.
func isPublicationMissing(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42704" && strings.HasPrefix(pgErr.Message, "publication ")
}

// cannotDecode is the error for a slot whose WAL refers to a publication
// that no longer exists as it was: pgoutput reads the publication as of each
// change it decodes, so once the publication was dropped (and perhaps
// created again), the changes in between can never be decoded.
func cannotDecode(slot, pub string, at pglogrepl.LSN, err error) error {
	return &schema.ConfigError{Fields: []string{"RecreateSlot"}, Msg: fmt.Sprintf("replication slot %s can no longer decode its WAL after %s (%v): publication %q was dropped after that point, and Postgres decodes each change with the publication as it was then; restart the reader once with RecreateSlot to drop the slot and take a fresh snapshot (changes since %s are then re-read from the table as snapshot events, op r)",
		slot, at, err, pub, at)}
}

// slotInfo is a row of pg_replication_slots.
type slotInfo struct {
	plugin, database, walStatus string
	confirmed                   pglogrepl.LSN
}

// lookupSlot returns the slot named name, or nil when it does not exist.
func lookupSlot(ctx context.Context, conn querier, name string) (*slotInfo, error) {
	var s slotInfo
	var confirmed *string
	err := conn.QueryRow(ctx, `SELECT coalesce(plugin, ''), coalesce(database, ''), coalesce(wal_status, ''), confirmed_flush_lsn::text
		FROM pg_replication_slots WHERE slot_name = $1`, name).Scan(&s.plugin, &s.database, &s.walStatus, &confirmed)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("look up replication slot: %w", err)
	}
	if confirmed != nil {
		if s.confirmed, err = pglogrepl.ParseLSN(*confirmed); err != nil {
			return nil, fmt.Errorf("parse slot position: %w", err)
		}
	}
	return &s, nil
}

// usable says, in one sentence, why the reader cannot stream from s.
func (s *slotInfo) usable(name, db string) error {
	switch {
	case s.walStatus == "lost":
		return slotLost(name)
	case s.plugin != "pgoutput":
		return &schema.ConfigError{Fields: []string{"Slot"}, Msg: fmt.Sprintf("replication slot %s is not a pgoutput logical slot (plugin %q); drop it or choose another Slot", name, s.plugin)}
	case s.database != db:
		return &schema.ConfigError{Fields: []string{"Slot"}, Msg: fmt.Sprintf("replication slot %s belongs to database %s, not %s; choose another Slot", name, s.database, db)}
	}
	return nil
}

// slotLost is the error for a slot Postgres invalidated.
func slotLost(name string) error {
	return &schema.ConfigError{Fields: []string{"Snapshot"}, Msg: fmt.Sprintf("replication slot %s was invalidated by Postgres (wal_status=lost: it fell further behind than max_slot_wal_keep_size allows), so changes it had not streamed are gone; to re-snapshot, drop it with SELECT pg_drop_replication_slot('%s') and start the reader with Snapshot initial", name, name)}
}

// isSlotLost reports whether err is Postgres refusing to stream from an invalidated slot.
func isSlotLost(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "55000" &&
		(strings.Contains(pgErr.Message, "invalidated") || strings.Contains(pgErr.Detail, "invalidated"))
}
