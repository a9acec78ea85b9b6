package admin

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/schema"
	"github.com/jobstream/jobstream/schema/kafkaconn"
)

// Kafka answers the questions operators ask the broker: partitions, offsets,
// group members and committed positions, and reads a partition's messages.
// kafka-go's own Reader.Lag is -1 for groups, so lag is computed from
// OffsetFetch and ListOffsets here. It is safe for concurrent use.
type Kafka struct {
	b kafkaconn.Broker
	c *kafka.Client
}

// NewKafka returns the admin client of the brokers b describes; each
// request times out after 10s. It keeps the brokers' metadata for a second
// (kafka-go's default is 6s), so a long-lived client, such as a view that
// redraws, sees a topic created elsewhere within about a second.
func NewKafka(b kafkaconn.Broker) *Kafka {
	c := b.Client(10 * time.Second)
	if t, ok := c.Transport.(*kafka.Transport); ok {
		t.MetadataTTL = time.Second
	}
	return &Kafka{b: b, c: c}
}

// failed says why reading what from the brokers failed, in one sentence:
// when no broker answers a fresh connection either, that is the cause, said
// as kafkaconn.Broker.Ping says it (which brokers, and what to fix);
// otherwise the read's own error, which it wraps.
func (k *Kafka) failed(ctx context.Context, what string, err error) error {
	if ctx.Err() == nil {
		if perr := k.b.Ping(ctx, pingTimeout); perr != nil {
			return perr
		}
	}
	return fmt.Errorf("cannot read %s from Kafka: %w", what, err)
}

// reachable is nil when a broker answers a fresh connection, else the
// sentence saying none does. An answer from kafka-go's cached metadata
// (a topic that does not exist, say) is no proof that a broker is up.
func (k *Kafka) reachable(ctx context.Context) error { return k.b.Ping(ctx, pingTimeout) }

// pingTimeout bounds the check that a broker answers at all.
const pingTimeout = 3 * time.Second

// Broker returns how k reaches the brokers.
func (k *Kafka) Broker() kafkaconn.Broker { return k.b }

// Partitions returns the partition ids of topic, sorted; none if it does
// not exist and a broker says so (an error if none answers).
func (k *Kafka) Partitions(ctx context.Context, topic string) ([]int, error) {
	md, err := k.c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, k.failed(ctx, "the metadata of "+topic, err)
	}
	var ids []int
	for _, t := range md.Topics {
		if t.Name != topic || t.Error != nil {
			continue
		}
		for _, p := range t.Partitions {
			ids = append(ids, p.ID)
		}
	}
	if len(ids) == 0 {
		// No such topic, says the metadata; kafka-go's cached metadata
		// says so of a broker that is gone too.
		if err := k.reachable(ctx); err != nil {
			return nil, err
		}
	}
	sort.Ints(ids)
	return ids, nil
}

// PartitionOffsets is the first and next (end) offset of one partition.
type PartitionOffsets struct {
	Partition int   `json:"partition"`
	First     int64 `json:"first"`
	End       int64 `json:"end"`
}

// Offsets returns the first and end offsets of every partition of topic.
func (k *Kafka) Offsets(ctx context.Context, topic string) ([]PartitionOffsets, error) {
	parts, err := k.Partitions(ctx, topic)
	if err != nil || len(parts) == 0 {
		return nil, err
	}
	req := make([]kafka.OffsetRequest, 0, 2*len(parts))
	for _, p := range parts {
		req = append(req, kafka.FirstOffsetOf(p), kafka.LastOffsetOf(p))
	}
	resp, err := k.c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: req}})
	if err != nil {
		return nil, k.failed(ctx, "the offsets of "+topic, err)
	}
	var out []PartitionOffsets
	for _, po := range resp.Topics[topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("list offsets of %s/%d: %w", topic, po.Partition, po.Error)
		}
		out = append(out, PartitionOffsets{Partition: po.Partition, First: po.FirstOffset, End: po.LastOffset})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Partition < out[j].Partition })
	return out, nil
}

// Committed returns the group's committed offset per partition of topic
// (-1 where it never committed).
func (k *Kafka) Committed(ctx context.Context, group, topic string, parts []int) (map[int]int64, error) {
	resp, err := k.c.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: parts}})
	if err != nil {
		return nil, k.failed(ctx, "the committed offsets of group "+group, err)
	}
	out := map[int]int64{}
	if errors.Is(resp.Error, kafka.GroupIdNotFound) {
		return out, nil // the group never committed anything yet
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("fetch offsets of group %s: %w", group, resp.Error)
	}
	for _, p := range resp.Topics[topic] {
		out[p.Partition] = p.CommittedOffset
	}
	return out, nil
}

// GroupMember is one live member of a consumer group.
type GroupMember struct {
	ID         string `json:"id"`
	Client     string `json:"client"`
	Host       string `json:"host"`
	Partitions []int  `json:"partitions"`
}

// Members returns the group's state and live members.
func (k *Kafka) Members(ctx context.Context, group string) (state string, members []GroupMember, err error) {
	resp, err := k.c.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
	if err != nil {
		return "", nil, k.failed(ctx, "the members of group "+group, err)
	}
	for _, g := range resp.Groups {
		if g.GroupID != group {
			continue
		}
		if g.Error != nil {
			return "", nil, fmt.Errorf("describe group %s: %w", group, g.Error)
		}
		for _, m := range g.Members {
			gm := GroupMember{ID: m.MemberID, Client: m.ClientID, Host: m.ClientHost}
			for _, t := range m.MemberAssignments.Topics {
				gm.Partitions = append(gm.Partitions, t.Partitions...)
			}
			sort.Ints(gm.Partitions)
			members = append(members, gm)
		}
		return g.GroupState, members, nil
	}
	return "Dead", nil, nil
}

// OffsetsAt returns, per partition of topic, the first offset whose
// timestamp is at or after t (the end offset when there is none).
func (k *Kafka) OffsetsAt(ctx context.Context, topic string, t time.Time) (map[int]int64, error) {
	parts, err := k.Partitions(ctx, topic)
	if err != nil {
		return nil, err
	}
	req := make([]kafka.OffsetRequest, 0, len(parts))
	for _, p := range parts {
		req = append(req, kafka.TimeOffsetOf(p, t))
	}
	resp, err := k.c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: req}})
	if err != nil {
		return nil, k.failed(ctx, "the offsets of "+topic+" at "+t.Format(time.RFC3339), err)
	}
	ends, err := k.Offsets(ctx, topic)
	if err != nil {
		return nil, err
	}
	out := map[int]int64{}
	for _, e := range ends {
		out[e.Partition] = e.End
	}
	for _, po := range resp.Topics[topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("list offsets of %s/%d: %w", topic, po.Partition, po.Error)
		}
		for off := range po.Offsets {
			if off >= 0 {
				out[po.Partition] = off
			}
		}
	}
	return out, nil
}

// Read calls fn for every message of topic/partition in [from, to).
func (k *Kafka) Read(ctx context.Context, topic string, partition int, from, to int64, fn func(kafka.Message) error) error {
	if from >= to {
		return nil
	}
	var conn *kafka.Conn
	var err error
	for _, b := range k.b.Addrs {
		if conn, err = k.b.Dialer().DialLeader(ctx, "tcp", b, topic, partition); err == nil {
			break
		}
	}
	if err != nil {
		return k.failed(ctx, fmt.Sprintf("%s/%d", topic, partition), err)
	}
	defer conn.Close()
	if _, err := conn.Seek(from, kafka.SeekAbsolute); err != nil {
		return k.failed(ctx, fmt.Sprintf("%s/%d from offset %d", topic, partition, from), err)
	}
	for off := from; off < to; {
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		m, err := conn.ReadMessage(16 << 20)
		if err != nil {
			return k.failed(ctx, fmt.Sprintf("%s/%d at offset %d", topic, partition, off), err)
		}
		if m.Offset >= to {
			return nil
		}
		if err := fn(m); err != nil {
			return err
		}
		off = m.Offset + 1
	}
	return nil
}

// PartitionOf returns the partition murmur2 (the Java client's partitioner)
// gives key among n partitions.
func PartitionOf(key []byte, n int) int {
	parts := make([]int, n)
	for i := range parts {
		parts[i] = i
	}
	return (&kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: key}, parts...)
}

// JobPartitions returns the partitions of a topic of n partitions where a
// job's records may be: those of each key the job's events may carry
// (schema.KeyCandidates: the key struct, its number form, the bare id, and
// the schema/payload forms of the Connect key structs named connectKeys).
func JobPartitions(jobID string, n int, connectKeys ...string) []int {
	var out []int
	for _, k := range schema.KeyCandidates(jobID, connectKeys...) {
		if p := PartitionOf(k, n); !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// connectKey returns the name of the Connect key struct of the jobs
// table's events in topic (<prefix>.<step>), as a reader with --schemas
// writes it: the table is jobs in schema nsp (jobsSchema).
func connectKey(topic, nsp string) string {
	prefix := topic
	if i := strings.LastIndexByte(topic, '.'); i > 0 {
		prefix = topic[:i]
	}
	return schema.ConnectName(prefix, nsp, "jobs", "Key")
}

// jobsSchema returns the schema of the jobs table, the one search_path
// finds, as the reader's events name it (their Connect key struct's name
// holds it, and so the partition a job's key hashes to under --schemas).
// Without a pool, or when the lookup fails, it is public, the default.
func jobsSchema(ctx context.Context, pool *pgxpool.Pool) string {
	nsp := "public"
	if pool != nil {
		_ = pool.QueryRow(ctx, `SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE c.oid = to_regclass('jobs')`).Scan(&nsp)
	}
	return nsp
}
