package broker

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// roundTrip sends req at version v to addr on a connection of its own and
// returns the answer: the raw wire exchange, with no client in between to
// retry or translate errors.
func roundTrip[R kmsg.Response](t *testing.T, addr string, v int16, req kmsg.Request) R {
	t.Helper()
	req.SetVersion(v)
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	buf := kmsg.NewRequestFormatter(kmsg.FormatterClientID("compat-test")).AppendRequest(nil, req, 1)
	if _, err := conn.Write(buf); err != nil {
		t.Fatal(err)
	}
	var size [4]byte
	if _, err := io.ReadFull(conn, size[:]); err != nil {
		t.Fatalf("%s v%d to %s: %v", kmsg.NameForKey(req.Key()), v, addr, err)
	}
	body := make([]byte, binary.BigEndian.Uint32(size[:]))
	if _, err := io.ReadFull(conn, body); err != nil {
		t.Fatal(err)
	}
	body = body[4:] // correlation id
	resp := req.ResponseKind()
	if resp.IsFlexible() {
		body = body[1:] // the header's tagged fields: none
	}
	if err := resp.ReadFrom(body); err != nil {
		t.Fatalf("decode %s v%d: %v", kmsg.NameForKey(req.Key()), v, err)
	}
	return resp.(R)
}

// offsetFetch asks addr, at version v, for group's offsets of partitions of
// topic (all of the group's topics if parts is nil) and returns them as
// "partition:offset/epoch/metadata" and the group's error.
func offsetFetch(t *testing.T, addr string, v int16, group, topic string, parts []int32) ([]string, error) {
	t.Helper()
	req := kmsg.NewPtrOffsetFetchRequest()
	if v <= 7 {
		req.Group = group
		if parts != nil {
			rt := kmsg.NewOffsetFetchRequestTopic()
			rt.Topic, rt.Partitions = topic, parts
			req.Topics = append(req.Topics, rt)
		}
	} else {
		rg := kmsg.NewOffsetFetchRequestGroup()
		rg.Group = group
		if parts != nil {
			rt := kmsg.NewOffsetFetchRequestGroupTopic()
			rt.Topic, rt.Partitions = topic, parts
			rg.Topics = append(rg.Topics, rt)
		}
		req.Groups = append(req.Groups, rg)
	}
	resp := roundTrip[*kmsg.OffsetFetchResponse](t, addr, v, req)
	var out []string
	add := func(topic string, p int32, off int64, epoch int32, md *string, code int16) {
		m := "<nil>"
		if md != nil {
			m = fmt.Sprintf("%q", *md)
		}
		out = append(out, fmt.Sprintf("%s/%d:%d/%d/%s/%d", topic, p, off, epoch, m, code))
	}
	if v <= 7 {
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				add(t.Topic, p.Partition, p.Offset, p.LeaderEpoch, p.Metadata, p.ErrorCode)
			}
		}
		slices.Sort(out)
		return out, kerr.ErrorForCode(resp.ErrorCode)
	}
	if len(resp.Groups) != 1 || resp.Groups[0].Group != group {
		t.Fatalf("OffsetFetch v%d for %s answered groups %+v", v, group, resp.Groups)
	}
	for _, t := range resp.Groups[0].Topics {
		for _, p := range t.Partitions {
			add(t.Topic, p.Partition, p.Offset, p.LeaderEpoch, p.Metadata, p.ErrorCode)
		}
	}
	slices.Sort(out)
	return out, kerr.ErrorForCode(resp.Groups[0].ErrorCode)
}

// TestOffsetFetchUnknownGroup: asked for the offsets of a group that never
// committed, the broker answers as Kafka does — no error, offset -1 per
// partition asked, none when asked for all — where kfake alone answers
// GROUP_ID_NOT_FOUND; a known group is answered by kfake as before, also
// beside an unknown one in one request; on a cluster a node that is not
// the group's coordinator says so.
func TestOffsetFetchUnknownGroup(t *testing.T) {
	t.Parallel()
	b, err := Start(Config{Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	addr := b.Addr()
	ct := kmsg.NewPtrCreateTopicsRequest()
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic, rt.NumPartitions, rt.ReplicationFactor = "t", 3, 1
	ct.Topics = append(ct.Topics, rt)
	if resp := roundTrip[*kmsg.CreateTopicsResponse](t, addr, 4, ct); resp.Topics[0].ErrorCode != 0 {
		t.Fatalf("create topic: %v", kerr.ErrorForCode(resp.Topics[0].ErrorCode))
	}

	none := []string{`t/0:-1/-1/""/0`, `t/1:-1/-1/""/0`, `t/2:-1/-1/""/0`}
	// kafkajs asks with v4, kafka-go with v1..v5, the Java admin with v8+.
	for _, v := range []int16{1, 4, 5, 6, 7, 8, 9} {
		got, err := offsetFetch(t, addr, v, "never", "t", []int32{0, 1, 2})
		if err != nil || !slices.Equal(got, none) {
			t.Errorf("v%d: offsets of a group that never committed = %v, %v; want %v, no error", v, got, err, none)
		}
		if got, err := offsetFetch(t, addr, v, "never", "", nil); err != nil || len(got) != 0 {
			t.Errorf("v%d: all offsets of a group that never committed = %v, %v; want none, no error", v, got, err)
		}
	}

	// A group that committed: kfake's own answer.
	oc := kmsg.NewPtrOffsetCommitRequest()
	oc.Group, oc.Generation = "some", -1
	ot := kmsg.NewOffsetCommitRequestTopic()
	ot.Topic = "t"
	op := kmsg.NewOffsetCommitRequestTopicPartition()
	op.Partition, op.Offset, op.LeaderEpoch, op.Metadata = 1, 5, -1, new(string)
	ot.Partitions = append(ot.Partitions, op)
	oc.Topics = append(oc.Topics, ot)
	if resp := roundTrip[*kmsg.OffsetCommitResponse](t, addr, 6, oc); resp.Topics[0].Partitions[0].ErrorCode != 0 {
		t.Fatalf("commit: %v", kerr.ErrorForCode(resp.Topics[0].Partitions[0].ErrorCode))
	}
	for _, v := range []int16{4, 8} {
		got, err := offsetFetch(t, addr, v, "some", "t", []int32{0, 1})
		if want := []string{`t/0:-1/-1/<nil>/0`, `t/1:5/-1/""/0`}; err != nil || !slices.Equal(got, want) {
			t.Errorf("v%d: offsets of a group that committed = %v, %v; want %v", v, got, err, want)
		}
	}

	// Both in one request (v8): the known group keeps its offsets.
	req := kmsg.NewPtrOffsetFetchRequest()
	for _, g := range []string{"some", "never"} {
		rg := kmsg.NewOffsetFetchRequestGroup()
		rg.Group = g
		rt := kmsg.NewOffsetFetchRequestGroupTopic()
		rt.Topic, rt.Partitions = "t", []int32{1}
		rg.Topics = append(rg.Topics, rt)
		req.Groups = append(req.Groups, rg)
	}
	resp := roundTrip[*kmsg.OffsetFetchResponse](t, addr, 8, req)
	var got []string
	for _, g := range resp.Groups {
		if len(g.Topics) != 1 || len(g.Topics[0].Partitions) != 1 {
			got = append(got, fmt.Sprintf("%s:%+v/%d", g.Group, g.Topics, g.ErrorCode))
			continue
		}
		got = append(got, fmt.Sprintf("%s:%d/%d/%d", g.Group, g.Topics[0].Partitions[0].Offset, g.Topics[0].Partitions[0].ErrorCode, g.ErrorCode))
	}
	if want := []string{"some:5/0/0", "never:-1/0/0"}; !slices.Equal(got, want) {
		t.Errorf("two groups in one request: %v, want %v", got, want)
	}

	// Many at once, on many connections, known and unknown groups mixed:
	// each hook asks the cluster while others wait, and none stalls.
	var wg sync.WaitGroup
	errs := make(chan string, 400)
	for i := range 8 {
		wg.Go(func() {
			for j := range 25 {
				group := fmt.Sprintf("g%d-%d", i, j)
				if j%2 == 0 {
					group = "some"
				}
				if got, err := offsetFetch(t, addr, 4, group, "t", []int32{1}); err != nil || len(got) != 1 {
					errs <- fmt.Sprintf("%s: %v, %v", group, got, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("concurrent OffsetFetch: %s", e)
	}

	// On three nodes, only the group's coordinator answers.
	c3, err := Start(Config{Listen: "127.0.0.1:0", Nodes: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	coord := c3.Cluster().CoordinatorFor("never")
	for i, a := range c3.Addrs() {
		_, err := offsetFetch(t, a, 4, "never", "t", []int32{0})
		if want := error(nil); int32(i) != coord {
			if err != kerr.NotCoordinator {
				t.Errorf("node %d (coordinator %d): %v, want NOT_COORDINATOR", i, coord, err)
			}
		} else if err != want {
			t.Errorf("the coordinator (node %d): %v, want no error", i, err)
		}
	}
}
