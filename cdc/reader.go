package cdc

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/schema"
)

// Config configures a Reader. Zero fields take the defaults documented on them.
type Config struct {
	// DatabaseURL is the Postgres connection URL (postgres://...). Required.
	DatabaseURL string
	// Brokers are the Kafka bootstrap brokers (host:port). Required.
	Brokers []string
	// Slot is the logical replication slot (default "jobstream").
	Slot string
	// Publication is the publication of the jobs table (default "jobstream").
	Publication string
	// TopicPrefix prefixes every topic name (default "jobs").
	TopicPrefix string
	// Partitions is the partition count of topics the reader creates (default 12).
	Partitions int
	// StatusInterval is the longest time between two standby status updates
	// sent to Postgres (default 10s).
	StatusInterval time.Duration
	// MaxBatch is the most events held before they are produced (default 4096).
	MaxBatch int
	// MaxMessageBytes is the largest event value the broker accepts; a larger
	// event goes to the dead-letter topic (default 1,000,000, Kafka's default).
	MaxMessageBytes int
	// Linger is how long a partial batch waits for more WAL (default 1ms).
	Linger time.Duration
	// Logger receives the reader's logs (default slog.Default()).
	Logger *slog.Logger
}

// WithDefaults returns a copy of c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	c.Slot = cmp.Or(c.Slot, "jobstream")
	c.Publication = cmp.Or(c.Publication, schema.DefaultPublication)
	c.TopicPrefix = cmp.Or(c.TopicPrefix, schema.DefaultTopicPrefix)
	c.Partitions = cmp.Or(c.Partitions, schema.DefaultPartitions)
	c.StatusInterval = cmp.Or(c.StatusInterval, 10*time.Second)
	c.MaxBatch = cmp.Or(c.MaxBatch, 4096)
	c.MaxMessageBytes = cmp.Or(c.MaxMessageBytes, 1_000_000)
	c.Linger = cmp.Or(c.Linger, time.Millisecond)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) validate() error {
	switch {
	case c.DatabaseURL == "":
		return errors.New("no database given: set DATABASE_URL or --database-url (postgres://user:pass@host:port/db)")
	case len(c.Brokers) == 0:
		return errors.New("no Kafka broker given: set KAFKA_BROKERS or --brokers (host:port, comma-separated)")
	case !schema.ValidIdent(c.Slot):
		return fmt.Errorf("slot name %q is not valid: use lower-case letters, digits and _", c.Slot)
	case !schema.ValidIdent(c.Publication):
		return fmt.Errorf("publication name %q is not valid: use lower-case letters, digits and _", c.Publication)
	}
	return schema.ValidTopic(schema.DLQTopic(c.TopicPrefix))
}

// Stats are the reader's counters, safe to read while it runs.
type Stats struct {
	Events       atomic.Int64 // events acknowledged by the broker
	DeadLetters  atomic.Int64 // rows sent to the dead-letter topic
	AckedLSN     atomic.Uint64
	ReceivedLSN  atomic.Uint64
	Reconnects   atomic.Int64
	Transactions atomic.Int64
}

// Reader streams the jobs table's changes into Kafka.
type Reader struct {
	cfg    Config
	log    *slog.Logger
	writer *kafka.Writer
	broker schema.Broker
	stats  Stats

	db     string
	topics map[string]bool
	rels   map[uint32]*pglogrepl.RelationMessage

	// Positions. received: the last WAL position seen. acked: the end of the
	// last transaction whose every event the broker acknowledged; the only
	// position ever reported as flushed.
	received pglogrepl.LSN
	acked    pglogrepl.LSN

	// The open batch and the commit it completes up to.
	batch       []kafka.Message
	batchCommit pglogrepl.LSN

	// The open transaction.
	inTx       bool
	txID       uint32
	commitTime time.Time
	lastCommit pglogrepl.LSN

	lastStatus   time.Time
	lastReported pglogrepl.LSN

	ready chan struct{}
}

// New checks cfg and returns a Reader; it connects nothing.
func New(cfg Config) (*Reader, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Reader{
		cfg:    cfg,
		log:    cfg.Logger,
		broker: schema.Broker{Addrs: cfg.Brokers},
		topics: map[string]bool{},
		rels:   map[uint32]*pglogrepl.RelationMessage{},
		ready:  make(chan struct{}),
	}, nil
}

// Ready is closed once the slot exists: every change committed after that
// moment will be streamed.
func (r *Reader) Ready() <-chan struct{} { return r.ready }

// Stats returns the reader's live counters.
func (r *Reader) Stats() *Stats { return &r.stats }

// Run checks Postgres and the broker, creates the slot if missing, and
// streams until ctx is done. A deliberate stop returns nil. Lost connections
// to Postgres or the broker are retried with capped exponential backoff; a
// configuration problem is returned at once as one sentence.
func (r *Reader) Run(ctx context.Context) error {
	if err := r.preflight(ctx); err != nil {
		return err
	}
	r.writer = &kafka.Writer{
		Addr:         kafka.TCP(r.cfg.Brokers...),
		Balancer:     &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll,
		BatchSize:    r.cfg.MaxBatch,
		BatchBytes:   int64(r.cfg.MaxMessageBytes),
		BatchTimeout: time.Millisecond,
		MaxAttempts:  3,
		WriteTimeout: 10 * time.Second,
	}
	defer r.writer.Close()
	close(r.ready)

	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 200 * time.Millisecond
	bo.MaxInterval = 5 * time.Second
	bo.MaxElapsedTime = 0
	for {
		started := time.Now()
		err := r.stream(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(started) > time.Minute {
			bo.Reset()
		}
		wait := bo.NextBackOff()
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55006" {
			r.log.Info("slot is in use by another reader; waiting as standby", "slot", r.cfg.Slot, "retry_in", wait)
			wait = min(wait, 2*time.Second)
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

// preflight turns the usual setup mistakes into one clear sentence each.
func (r *Reader) preflight(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, r.cfg.DatabaseURL)
	if err != nil {
		return schema.PostgresUnreachable(err)
	}
	defer conn.Close(context.Background())

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
	var pubOK bool
	if err := conn.QueryRow(cctx, `SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND tablename = 'jobs')`,
		r.cfg.Publication).Scan(&pubOK); err != nil {
		return fmt.Errorf("look up publication: %w", err)
	}
	if !pubOK {
		return fmt.Errorf("publication %q for table jobs does not exist; run jobstream migrate first", r.cfg.Publication)
	}

	var confirmed *string
	err = conn.QueryRow(cctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, r.cfg.Slot).Scan(&confirmed)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		if err := conn.QueryRow(cctx, `SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')`, r.cfg.Slot).Scan(&confirmed); err != nil {
			return fmt.Errorf("create replication slot %s: %w", r.cfg.Slot, err)
		}
		r.log.Info("created replication slot", "slot", r.cfg.Slot, "lsn", *confirmed)
	case err != nil:
		return fmt.Errorf("look up replication slot: %w", err)
	}
	if confirmed != nil {
		lsn, err := pglogrepl.ParseLSN(*confirmed)
		if err != nil {
			return fmt.Errorf("parse slot position: %w", err)
		}
		r.acked = lsn
		r.stats.AckedLSN.Store(uint64(lsn))
	}

	if err := r.broker.Ping(ctx, 10*time.Second); err != nil {
		return err
	}
	if err := r.ensureTopic(ctx, schema.DLQTopic(r.cfg.TopicPrefix)); err != nil {
		return err
	}
	return nil
}

func (r *Reader) ensureTopic(ctx context.Context, t string) error {
	if r.topics[t] {
		return nil
	}
	if err := r.broker.EnsureTopics(ctx, r.cfg.Partitions, t); err != nil {
		return err
	}
	r.topics[t] = true
	return nil
}

// stream runs one replication connection until it fails or ctx is done.
func (r *Reader) stream(ctx context.Context) error {
	cfg, err := pgconn.ParseConfig(r.cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("parse DATABASE_URL: %w", err)
	}
	cfg.RuntimeParams["replication"] = "database"
	cfg.RuntimeParams["application_name"] = "jobstream-reader"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect for replication: %w", err)
	}
	defer conn.Close(context.Background())

	// Anything not acknowledged comes again from the slot.
	r.batch = r.batch[:0]
	r.inTx = false
	clear(r.rels)

	err = pglogrepl.StartReplication(ctx, conn, r.cfg.Slot, r.acked, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + r.cfg.Publication + "'"},
	})
	if err != nil {
		return fmt.Errorf("start replication: %w", err)
	}
	r.log.Info("streaming", "slot", r.cfg.Slot, "from", r.acked)
	r.lastStatus = time.Time{}

	for {
		if err := r.maybeSendStatus(ctx, conn, false); err != nil {
			return err
		}
		deadline := r.lastStatus.Add(r.cfg.StatusInterval)
		if len(r.batch) > 0 {
			deadline = time.Now().Add(r.cfg.Linger)
		}
		rctx, cancel := context.WithDeadline(ctx, deadline)
		raw, err := conn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				if err := r.flush(ctx); err != nil {
					return err
				}
				continue
			}
			return fmt.Errorf("receive: %w", err)
		}
		switch msg := raw.(type) {
		case *pgproto3.CopyData:
			if err := r.handleCopyData(ctx, conn, msg.Data); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(msg)
		default:
			r.log.Debug("unexpected replication message", "type", fmt.Sprintf("%T", raw))
		}
	}
}

func (r *Reader) handleCopyData(ctx context.Context, conn *pgconn.PgConn, data []byte) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		pkm, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("parse keepalive: %w", err)
		}
		r.setReceived(pkm.ServerWALEnd)
		// Everything the server sent before this keepalive has been read;
		// with no transaction open and nothing unacknowledged, the slot may
		// move to the server's position, so an idle table never pins WAL.
		if !r.inTx && len(r.batch) == 0 && pkm.ServerWALEnd > r.acked {
			r.setAcked(pkm.ServerWALEnd)
		}
		if pkm.ReplyRequested {
			return r.maybeSendStatus(ctx, conn, true)
		}
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("parse XLogData: %w", err)
		}
		r.setReceived(xld.WALStart)
		return r.handleWAL(ctx, xld)
	}
	return nil
}

func (r *Reader) handleWAL(ctx context.Context, xld pglogrepl.XLogData) error {
	msg, err := pglogrepl.Parse(xld.WALData)
	if err != nil {
		return fmt.Errorf("decode pgoutput message at %s: %w", xld.WALStart, err)
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		r.rels[m.RelationID] = m
	case *pglogrepl.BeginMessage:
		r.inTx, r.txID, r.commitTime = true, m.Xid, m.CommitTime
	case *pglogrepl.CommitMessage:
		r.inTx = false
		r.lastCommit = m.CommitLSN
		r.stats.Transactions.Add(1)
		if len(r.batch) == 0 {
			r.setAcked(m.TransactionEndLSN)
		} else {
			r.batchCommit = m.TransactionEndLSN
		}
	case *pglogrepl.InsertMessage:
		return r.addChange(ctx, xld.WALStart, schema.OpCreate, m.RelationID, nil, m.Tuple)
	case *pglogrepl.UpdateMessage:
		return r.addChange(ctx, xld.WALStart, schema.OpUpdate, m.RelationID, m.OldTuple, m.NewTuple)
	case *pglogrepl.DeleteMessage:
		return r.addChange(ctx, xld.WALStart, schema.OpDelete, m.RelationID, m.OldTuple, nil)
	case *pglogrepl.TruncateMessage:
		r.log.Warn("truncate of jobs seen; truncate events (op t) are not forwarded yet", "lsn", xld.WALStart)
	}
	return nil
}

// addChange renders one change as an envelope and queues it for its topic.
func (r *Reader) addChange(ctx context.Context, lsn pglogrepl.LSN, op string, relID uint32, before, after *pglogrepl.TupleData) error {
	rel, ok := r.rels[relID]
	if !ok {
		return fmt.Errorf("change for unknown relation %d at %s", relID, lsn)
	}
	v := make([]byte, 0, 512)
	v = append(v, `{"before":`...)
	v, bID, bStep := appendRow(v, rel, before)
	v = append(v, `,"after":`...)
	v, aID, aStep := appendRow(v, rel, after)
	v = append(v, `,"source":{"version":"`+schema.Version+`","connector":"postgresql","name":`...)
	v = strconv.AppendQuote(v, r.cfg.TopicPrefix)
	v = append(v, `,"ts_ms":`...)
	v = strconv.AppendInt(v, r.commitTime.UnixMilli(), 10)
	v = append(v, `,"snapshot":"false","db":`...)
	v = strconv.AppendQuote(v, r.db)
	v = append(v, `,"sequence":"[\"`...)
	v = strconv.AppendUint(v, uint64(r.lastCommit), 10)
	v = append(v, `\",\"`...)
	v = strconv.AppendUint(v, uint64(lsn), 10)
	v = append(v, `\"]","schema":`...)
	v = strconv.AppendQuote(v, rel.Namespace)
	v = append(v, `,"table":`...)
	v = strconv.AppendQuote(v, rel.RelationName)
	v = append(v, `,"txId":`...)
	v = strconv.AppendUint(v, uint64(r.txID), 10)
	v = append(v, `,"lsn":`...)
	v = strconv.AppendUint(v, uint64(lsn), 10)
	v = append(v, `,"xmin":null},"op":"`...)
	v = append(v, op...)
	v = append(v, `","ts_ms":`...)
	v = strconv.AppendInt(v, time.Now().UnixMilli(), 10)
	v = append(v, `,"transaction":null}`...)

	key, step := aID, aStep
	if after == nil {
		key, step = bID, bStep
	}
	var reason string
	topic := ""
	switch {
	case step == nil:
		reason = "current_step is null or not in the WAL record, so the row has no step topic"
		if op == schema.OpDelete {
			reason = "delete without current_step in the WAL record; set REPLICA IDENTITY FULL on jobs to route deletes to their step's topic"
		}
	default:
		topic = schema.Topic(r.cfg.TopicPrefix, string(step))
		if err := schema.ValidTopic(topic); err != nil {
			reason = err.Error()
		}
	}
	if reason == "" && len(v)+len(key) > r.cfg.MaxMessageBytes {
		reason = fmt.Sprintf("event is %d bytes, over the broker's message limit of %d", len(v)+len(key), r.cfg.MaxMessageBytes)
	}
	if reason != "" {
		return r.addDeadLetter(ctx, lsn, key, topic, reason, v)
	}
	if err := r.ensureTopic(ctx, topic); err != nil {
		return err
	}
	return r.queue(ctx, kafka.Message{Topic: topic, Key: key, Value: v})
}

// addDeadLetter queues a row that cannot go to its topic for the
// dead-letter topic, with the reason in a header and in the value.
func (r *Reader) addDeadLetter(ctx context.Context, lsn pglogrepl.LSN, key []byte, topic, reason string, event []byte) error {
	r.log.Warn("dead letter", "job_id", string(key), "lsn", lsn, "reason", reason)
	v := make([]byte, 0, 256)
	v = append(v, `{"reason":`...)
	v = strconv.AppendQuote(v, reason)
	v = append(v, `,"topic":`...)
	v = strconv.AppendQuote(v, topic)
	v = append(v, `,"lsn":`...)
	v = strconv.AppendUint(v, uint64(lsn), 10)
	v = append(v, `,"event":`...)
	if len(event) < r.cfg.MaxMessageBytes/2 {
		v = append(v, event...)
	} else {
		v = append(v, "null"...)
	}
	v = append(v, '}')
	r.stats.DeadLetters.Add(1)
	return r.queue(ctx, kafka.Message{
		Topic:   schema.DLQTopic(r.cfg.TopicPrefix),
		Key:     key,
		Value:   v,
		Headers: []kafka.Header{{Key: "jobstream.reason", Value: []byte(reason)}},
	})
}

func (r *Reader) queue(ctx context.Context, m kafka.Message) error {
	r.batch = append(r.batch, m)
	if len(r.batch) >= r.cfg.MaxBatch {
		return r.flush(ctx)
	}
	return nil
}

// flush produces the open batch, retrying until the broker acknowledges all
// of it, then moves the acknowledged position to the last commit it covers.
func (r *Reader) flush(ctx context.Context) error {
	if len(r.batch) == 0 {
		return nil
	}
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 100 * time.Millisecond
	bo.MaxInterval = 5 * time.Second
	bo.MaxElapsedTime = 0
	err := backoff.RetryNotify(func() error {
		err := r.writer.WriteMessages(ctx, r.batch...)
		if ctx.Err() != nil {
			return backoff.Permanent(ctx.Err())
		}
		return err
	}, backoff.WithContext(bo, ctx), func(err error, d time.Duration) {
		r.log.Warn("broker did not acknowledge the batch; retrying", "events", len(r.batch), "err", err, "retry_in", d)
	})
	if err != nil {
		return err
	}
	r.stats.Events.Add(int64(len(r.batch)))
	r.batch = r.batch[:0]
	// Every event of every transaction up to batchCommit is now acknowledged;
	// events of a still-open transaction wait for its commit.
	r.setAcked(r.batchCommit)
	return nil
}

func (r *Reader) setReceived(lsn pglogrepl.LSN) {
	if lsn > r.received {
		r.received = lsn
		r.stats.ReceivedLSN.Store(uint64(lsn))
	}
}

func (r *Reader) setAcked(lsn pglogrepl.LSN) {
	if lsn > r.acked {
		r.acked = lsn
		r.stats.AckedLSN.Store(uint64(lsn))
	}
}

// maybeSendStatus reports the positions to Postgres when due, when the
// acknowledged position moved a second ago or more, or when forced.
func (r *Reader) maybeSendStatus(ctx context.Context, conn *pgconn.PgConn, force bool) error {
	since := time.Since(r.lastStatus)
	if !force && since < r.cfg.StatusInterval && !(since > time.Second && r.acked > r.lastReported) {
		return nil
	}
	err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: max(r.received, r.acked),
		WALFlushPosition: r.acked,
		WALApplyPosition: r.acked,
	})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	r.lastStatus = time.Now()
	r.lastReported = r.acked
	return nil
}
