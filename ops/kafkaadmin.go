package ops

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/schema"
)

// admin answers the questions operators ask the broker: partitions, offsets,
// group members and committed positions. kafka-go's own Reader.Lag is -1
// for groups, so lag is computed from OffsetFetch and ListOffsets here.
type admin struct {
	b schema.Broker
	c *kafka.Client
}

func newAdmin(b schema.Broker) *admin {
	return &admin{b: b, c: b.Client(10 * time.Second)}
}

// partitions returns the partition ids of topic, sorted; none if it does not exist.
func (a *admin) partitions(ctx context.Context, topic string) ([]int, error) {
	md, err := a.c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("metadata of %s: %w", topic, err)
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
	sort.Ints(ids)
	return ids, nil
}

// partitionOffsets is the first and next (end) offset of one partition.
type partitionOffsets struct {
	Partition int   `json:"partition"`
	First     int64 `json:"first"`
	End       int64 `json:"end"`
}

// offsets returns the first and end offsets of every partition of topic.
func (a *admin) offsets(ctx context.Context, topic string) ([]partitionOffsets, error) {
	parts, err := a.partitions(ctx, topic)
	if err != nil || len(parts) == 0 {
		return nil, err
	}
	req := make([]kafka.OffsetRequest, 0, 2*len(parts))
	for _, p := range parts {
		req = append(req, kafka.FirstOffsetOf(p), kafka.LastOffsetOf(p))
	}
	resp, err := a.c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: req}})
	if err != nil {
		return nil, fmt.Errorf("list offsets of %s: %w", topic, err)
	}
	var out []partitionOffsets
	for _, po := range resp.Topics[topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("list offsets of %s/%d: %w", topic, po.Partition, po.Error)
		}
		out = append(out, partitionOffsets{Partition: po.Partition, First: po.FirstOffset, End: po.LastOffset})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Partition < out[j].Partition })
	return out, nil
}

// committed returns the group's committed offset per partition of topic
// (-1 where it never committed).
func (a *admin) committed(ctx context.Context, group, topic string, parts []int) (map[int]int64, error) {
	resp, err := a.c.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: parts}})
	if err != nil {
		return nil, fmt.Errorf("fetch offsets of group %s: %w", group, err)
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

// groupMember is one live member of a consumer group.
type groupMember struct {
	ID         string `json:"id"`
	Client     string `json:"client"`
	Host       string `json:"host"`
	Partitions []int  `json:"partitions"`
}

// members returns the group's state and live members.
func (a *admin) members(ctx context.Context, group string) (state string, members []groupMember, err error) {
	resp, err := a.c.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
	if err != nil {
		return "", nil, fmt.Errorf("describe group %s: %w", group, err)
	}
	for _, g := range resp.Groups {
		if g.GroupID != group {
			continue
		}
		if g.Error != nil {
			return "", nil, fmt.Errorf("describe group %s: %w", group, g.Error)
		}
		for _, m := range g.Members {
			gm := groupMember{ID: m.MemberID, Client: m.ClientID, Host: m.ClientHost}
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

// offsetsAt returns, per partition of topic, the first offset whose
// timestamp is at or after t (the end offset when there is none).
func (a *admin) offsetsAt(ctx context.Context, topic string, t time.Time) (map[int]int64, error) {
	parts, err := a.partitions(ctx, topic)
	if err != nil {
		return nil, err
	}
	req := make([]kafka.OffsetRequest, 0, len(parts))
	for _, p := range parts {
		req = append(req, kafka.TimeOffsetOf(p, t))
	}
	resp, err := a.c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: req}})
	if err != nil {
		return nil, fmt.Errorf("list offsets of %s at %s: %w", topic, t.Format(time.RFC3339), err)
	}
	ends, err := a.offsets(ctx, topic)
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

// read calls fn for every message of topic/partition in [from, to).
func (a *admin) read(ctx context.Context, topic string, partition int, from, to int64, fn func(kafka.Message) error) error {
	if from >= to {
		return nil
	}
	var conn *kafka.Conn
	var err error
	for _, b := range a.b.Addrs {
		if conn, err = a.b.Dialer().DialLeader(ctx, "tcp", b, topic, partition); err == nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("connect to the leader of %s/%d: %w", topic, partition, err)
	}
	defer conn.Close()
	if _, err := conn.Seek(from, kafka.SeekAbsolute); err != nil {
		return fmt.Errorf("seek %s/%d to %d: %w", topic, partition, from, err)
	}
	for off := from; off < to; {
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		m, err := conn.ReadMessage(16 << 20)
		if err != nil {
			return fmt.Errorf("read %s/%d at %d: %w", topic, partition, off, err)
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

// partitionOf returns the partition murmur2 (the Java client's partitioner)
// gives key among n partitions.
func partitionOf(key []byte, n int) int {
	parts := make([]int, n)
	for i := range parts {
		parts[i] = i
	}
	return (&kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: key}, parts...)
}
