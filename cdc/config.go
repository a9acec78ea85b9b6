package cdc

import (
	"cmp"
	"crypto/tls"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go/sasl"

	"github.com/jobstream/jobstream/schema"
)

// Snapshot modes of Config.Snapshot.
const (
	// SnapshotInitial emits every row that exists when the slot is created
	// as a read event (op "r") before streaming changes.
	SnapshotInitial = "initial"
	// SnapshotNever streams only the changes committed after the slot is
	// created.
	SnapshotNever = "never"
)

// Defaults of the Config fields a zero value leaves to the reader. The
// shared ones are schema.DefaultPublication, schema.DefaultTopicPrefix and
// schema.DefaultPartitions.
const (
	// SlotDefault is the replication slot's default name.
	SlotDefault = "jobstream"
	// StatusIntervalDefault is the default longest time between two standby
	// status updates.
	StatusIntervalDefault = 10 * time.Second
	// StandbyPollDefault is how often a standby reader checks its slot by
	// default.
	StandbyPollDefault = time.Second
	// MaxBatchDefault is the default most events in one produce round trip.
	MaxBatchDefault = 4096
	// MaxBatchBytesDefault is the default bound on the bytes of one batch: 8 MiB.
	MaxBatchBytesDefault = 8 << 20
)

// Bounds Validate checks.
const (
	maxPartitions     = 10000
	minStatusInterval = 100 * time.Millisecond
)

// Config configures a Reader. Zero fields take the defaults documented on them.
type Config struct {
	// Pool is the caller's Postgres pool for the reader's ordinary queries
	// (the checks at start, the initial snapshot); the reader never closes
	// it. The two connections the reader holds for long (the one holding
	// the slot's lock, the one of the visibility wait) are its own, opened
	// with Pool's configuration (TLS, tracer). Default: a pool of the
	// reader's own, opened from DatabaseURL when Run starts and closed when
	// it returns.
	Pool *pgxpool.Pool
	// Replication is the configuration of the replication connection (the
	// reader connects with a copy, adding replication=database). Default:
	// that of Pool's connections, or DatabaseURL's.
	Replication *pgconn.Config
	// DatabaseURL is the Postgres connection URL (postgres://...). Required
	// unless Pool is set.
	DatabaseURL string
	// Brokers are the Kafka bootstrap brokers (host:port). Required.
	Brokers []string
	// SASL authenticates to the brokers (default: none).
	SASL sasl.Mechanism
	// TLS encrypts the connections to the brokers (default: plaintext).
	TLS *tls.Config
	// Slot is the logical replication slot (default SlotDefault).
	Slot string
	// Publication is the publication of the jobs table (default
	// schema.DefaultPublication).
	Publication string
	// TopicPrefix prefixes every topic name (default schema.DefaultTopicPrefix).
	TopicPrefix string
	// Partitions is the partition count of topics the reader creates (default
	// schema.DefaultPartitions), 1 to 10000.
	Partitions int
	// Snapshot says what happens when the slot does not exist yet:
	// SnapshotInitial (the default) emits the table's rows as read events
	// first, SnapshotNever streams only later changes.
	Snapshot string
	// RecreateSlot drops the slot, if it exists, when this reader starts and
	// creates it again with a fresh snapshot (default false). It is the way
	// out for a slot that can no longer decode its WAL (its publication was
	// dropped and created again): changes between the old slot's position
	// and the new snapshot are not streamed, but the snapshot re-reads every
	// row's current state as op "r" events. It requires SnapshotInitial.
	RecreateSlot bool
	// Pipeline is the steps whose topics take change events (default
	// schema.DefaultPipeline()). A row whose current_step is no step of the
	// pipeline (a typo, a step not deployed, a reserved name such as dlq or
	// replays, an empty string) goes to the dead-letter topic with the
	// reason, never to a topic of its own.
	Pipeline schema.Pipeline
	// StatusInterval is the longest time between two standby status updates
	// sent to Postgres (default StatusIntervalDefault), 100ms or more.
	StatusInterval time.Duration
	// StandbyPoll is how often a standby reader checks whether the active
	// reader of its slot is gone (default StandbyPollDefault).
	StandbyPoll time.Duration
	// MaxBatch is the most events produced in one round trip to the broker
	// (default MaxBatchDefault).
	MaxBatch int
	// MaxBatchBytes bounds the bytes of one batch (default
	// MaxBatchBytesDefault). With
	// MaxBatch it bounds the reader's memory: at most two batches are held,
	// one being produced and one filling.
	MaxBatchBytes int
	// MaxMessageBytes is the largest event the broker accepts; a larger event
	// goes to the dead-letter topic. Default: the broker's message.max.bytes,
	// or 1,000,000 (Kafka's default) when the broker does not say. A value
	// above the broker's limit is lowered to it.
	MaxMessageBytes int
	// NoTombstones turns off the tombstone that follows every delete event:
	// a record with the delete's key and a null value, in the same topic and
	// partition, which lets log compaction drop the job's earlier events
	// (Debezium's tombstones.on.delete, which is on by default there too).
	NoTombstones bool
	// BareKey keys events by the bare job_id text instead of Debezium's key
	// struct {"job_id": …} (the default; schemas off). Both partition by
	// murmur2 of the key bytes; every jobstream reader of the topics reads
	// either form.
	BareKey bool
	// Schemas writes keys and values in Kafka Connect's schema/payload form
	// ({"schema": …, "payload": …}, JsonConverter's schemas.enable=true),
	// with the Connect schema Debezium's Postgres connector declares for
	// the envelope, the key struct and each column; the payload is the
	// plain form. Default false: the plain form, schemas.enable=false. It
	// applies to the key struct, not to a bare key (BareKey). Every
	// jobstream reader of the topics reads either form.
	Schemas bool
	// Logger receives the reader's logs (default slog.Default()).
	Logger *slog.Logger
	// Hooks observe the reader, for metrics: each implements any of the
	// Hook interfaces (HookProduced, HookCommitAcked). Default: none.
	Hooks []Hook
}

// WithDefaults returns a copy of c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	c.Slot = cmp.Or(c.Slot, SlotDefault)
	c.Publication = cmp.Or(c.Publication, schema.DefaultPublication)
	c.TopicPrefix = cmp.Or(c.TopicPrefix, schema.DefaultTopicPrefix)
	c.Partitions = cmp.Or(c.Partitions, schema.DefaultPartitions)
	c.Snapshot = cmp.Or(c.Snapshot, SnapshotInitial)
	if len(c.Pipeline.Steps) == 0 {
		c.Pipeline = schema.DefaultPipeline()
	}
	c.StatusInterval = cmp.Or(c.StatusInterval, StatusIntervalDefault)
	c.StandbyPoll = cmp.Or(c.StandbyPoll, StandbyPollDefault)
	c.MaxBatch = cmp.Or(c.MaxBatch, MaxBatchDefault)
	c.MaxBatchBytes = cmp.Or(c.MaxBatchBytes, MaxBatchBytesDefault)
	c.Logger = cmp.Or(c.Logger, slog.Default())
	return c
}

// Validate returns the first setting of c that New refuses, as one sentence
// naming the Config field (a *schema.ConfigError). It checks c as it is, zero
// fields included: New checks c.WithDefaults(). A command line whose flags
// carry the defaults checks what it parsed, so that an explicit 0 is
// refused rather than read as the default.
func (c Config) Validate() error {
	if err := schema.CheckConnection(c.DatabaseURL, c.Pool != nil, c.Brokers); err != nil {
		return err
	}
	switch {
	case !schema.ValidIdent(c.Slot):
		return schema.FieldError("Slot", "%q is not a valid name: use lower-case letters, digits and _", c.Slot)
	case !schema.ValidIdent(c.Publication):
		return schema.FieldError("Publication", "%q is not a valid name: use lower-case letters, digits and _", c.Publication)
	case c.Snapshot != SnapshotInitial && c.Snapshot != SnapshotNever:
		return schema.FieldError("Snapshot", "%q is not one of initial, never", c.Snapshot)
	case c.RecreateSlot && c.Snapshot != SnapshotInitial:
		return &schema.ConfigError{Fields: []string{"RecreateSlot", "Snapshot"},
			Msg: "RecreateSlot takes a fresh snapshot; it cannot be combined with Snapshot " + c.Snapshot}
	case c.Partitions < 1 || c.Partitions > maxPartitions:
		return schema.FieldError("Partitions", "%d is out of range 1..%d", c.Partitions, maxPartitions)
	case c.MaxBatch < 1:
		return schema.FieldError("MaxBatch", "%d is out of range; use 1 or more", c.MaxBatch)
	case c.MaxBatchBytes < 1:
		return schema.FieldError("MaxBatchBytes", "%d is out of range; use 1 or more", c.MaxBatchBytes)
	case c.MaxMessageBytes < 0:
		return schema.FieldError("MaxMessageBytes", "%d is negative", c.MaxMessageBytes)
	case c.StatusInterval < minStatusInterval:
		return schema.FieldError("StatusInterval", "%s is too short; use %s or more", c.StatusInterval, minStatusInterval)
	}
	if err := c.Pipeline.Validate(); err != nil {
		return err
	}
	for _, s := range c.Pipeline.Steps {
		if reservedStep(s) {
			return schema.FieldError("Pipeline", "step %q is a reserved topic name (%s); rename the step", s, strings.Join(reservedSteps, ", "))
		}
	}
	return schema.CheckTopicPrefix(c.TopicPrefix)
}

// reservedSteps are the names after the topic prefix that jobstream keeps
// for topics of its own (schema.Topics.DLQ and Replays). No change event
// ever goes to them.
var reservedSteps = schema.ReservedSteps

func reservedStep(s string) bool { return slices.Contains(reservedSteps, s) }

// Stats are the reader's counters, safe to read while it runs. Counters of
// events count what the broker acknowledged; after a restart, events sent
// again are counted again.
type Stats struct {
	Events        atomic.Int64 // events acknowledged by the broker, dead letters included
	Inserts       atomic.Int64 // op "c" events acknowledged
	Updates       atomic.Int64 // op "u" events acknowledged
	Deletes       atomic.Int64 // op "d" events acknowledged (one per topic a delete went to)
	SnapshotReads atomic.Int64 // op "r" events acknowledged
	Truncates     atomic.Int64 // op "t" events acknowledged (one per topic partition)
	Tombstones    atomic.Int64 // tombstones acknowledged (one per delete event)
	DeadLetters   atomic.Int64 // rows sent to the dead-letter topic, whatever the reason
	// Unroutable counts the dead letters of rows no step can take: a
	// current_step that is null, empty, reserved (dlq, replays) or not a step
	// of Config.Pipeline.
	Unroutable atomic.Int64
	// SlotGaps counts slots found missing and created again: the changes
	// between the old slot's last confirmed position and the new slot's
	// consistent point were never streamed (the snapshot re-reads each row's
	// current state). Each gap is logged as an error with its LSN range and
	// recorded in jobstream_slots.
	SlotGaps     atomic.Int64
	Transactions atomic.Int64 // transactions decoded
	Reconnects   atomic.Int64 // replication sessions restarted after a failure
	// KeepaliveReplies counts server keepalives that asked for a reply and got one.
	KeepaliveReplies atomic.Int64
	// AckedLSN is the WAL position up to which every event is acknowledged:
	// the only position ever reported to Postgres as flushed.
	AckedLSN atomic.Uint64
	// ReceivedLSN is the last WAL position received from Postgres.
	ReceivedLSN atomic.Uint64
	// ServerLSN is the server's WAL end as of its last keepalive.
	ServerLSN atomic.Uint64
	// CommitToAckMicros is, for the last transaction acknowledged, the time
	// from its commit in Postgres to the broker's acknowledgement of its last
	// event: the reader's lag in time.
	CommitToAckMicros atomic.Int64
	// Active is true while this reader holds its slot; Standby while it waits
	// for another reader to let go of it.
	Active, Standby atomic.Bool
}

// LagBytes returns how far the acknowledged position trails the server's
// WAL (or what was received, if that is further): WAL the slot still retains
// because of this reader.
func (s *Stats) LagBytes() uint64 {
	end := max(s.ServerLSN.Load(), s.ReceivedLSN.Load())
	if ack := s.AckedLSN.Load(); end > ack {
		return end - ack
	}
	return 0
}

// LagSeconds returns CommitToAckMicros in seconds.
func (s *Stats) LagSeconds() float64 { return float64(s.CommitToAckMicros.Load()) / 1e6 }
