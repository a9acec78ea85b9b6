package broker

import (
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Where kfake answers a request differently from Kafka, and a real client
// trips over the difference, the broker answers as Kafka does. Each fix is a
// kfake control function (a request hook) installed by compat at start; none
// changes kfake's own state.
//
// A control function runs on its own goroutine while the cluster's loop
// waits for it, and that loop keeps serving kfake's admin calls
// (Cluster.GroupInfo, CoordinatorFor) meanwhile, so a hook may ask them. It
// must not send a request to the cluster itself: the loop serves no other
// request until the hook returns.

// compat installs the hooks on c.
func compat(c *kfake.Cluster) {
	c.ControlKey(int16(kmsg.OffsetFetch), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		resp := offsetFetchUnknownGroups(kreq.(*kmsg.OffsetFetchRequest), c.CurrentNode(), c.CoordinatorFor, c.GroupInfo)
		if resp == nil {
			return nil, nil, false // every group exists: kfake answers
		}
		return resp, nil, true
	})
}

// offsetFetchUnknownGroups answers an OffsetFetch that names a group the
// broker does not know (one that never committed, nor joined), or returns
// nil when every group it names exists and kfake's own answer is right.
//
// kfake answers GROUP_ID_NOT_FOUND for such a group. Kafka answers no error
// and, for each partition asked, offset -1, leader epoch -1 and empty
// metadata; asked for all of the group's topics, it answers none
// (OffsetMetadataManager.fetchOffsets and fetchAllOffsets in Kafka's group
// coordinator). kafkajs's admin.fetchOffsets, and so every lag tool built on
// it, fails on kfake's answer.
//
// A request naming several groups (v8+) that mixes known and unknown ones
// is answered here whole, the known groups from info's committed offsets. A
// group on another broker's coordinator is answered NOT_COORDINATOR, as kfake
// does. The hook runs before kfake's SASL and ACL checks and its injected
// faults (Cluster.Fault), so an unauthenticated connection gets -1s for an
// unknown group where kfake would close it, and a fault on OffsetFetch does
// not reach unknown groups; jobstream's broker runs without ACLs, injects
// faults only on produce and fetch, and the answer tells no more than that
// the group has no offsets.
func offsetFetchUnknownGroups(req *kmsg.OffsetFetchRequest, node int32, coordinator func(string) int32, info func(string) *kfake.GroupInfo) *kmsg.OffsetFetchResponse {
	groups := req.Groups
	if req.Version <= 7 {
		g := kmsg.NewOffsetFetchRequestGroup()
		g.Group = req.Group
		if req.Topics != nil {
			g.Topics = []kmsg.OffsetFetchRequestGroupTopic{}
		}
		for _, t := range req.Topics {
			gt := kmsg.NewOffsetFetchRequestGroupTopic()
			gt.Topic, gt.Partitions = t.Topic, t.Partitions
			g.Topics = append(g.Topics, gt)
		}
		groups = []kmsg.OffsetFetchRequestGroup{g}
	}
	infos := make([]*kfake.GroupInfo, len(groups))
	unknown := false
	for i, g := range groups {
		// An empty group id is left to kfake: Kafka's answer to it
		// differs between its versions.
		if g.Group == "" {
			return nil
		}
		if infos[i] = info(g.Group); infos[i] == nil {
			unknown = true
		}
	}
	if !unknown {
		return nil
	}

	resp := req.ResponseKind().(*kmsg.OffsetFetchResponse)
	for i, g := range groups {
		rg := kmsg.NewOffsetFetchResponseGroup()
		rg.Group = g.Group
		switch {
		case coordinator(g.Group) != node:
			rg.ErrorCode = kerr.NotCoordinator.Code
		case g.Topics == nil: // all the group's topics
			for topic, parts := range commitsOf(infos[i]) {
				rt := kmsg.NewOffsetFetchResponseGroupTopic()
				rt.Topic = topic
				for p, c := range parts {
					rt.Partitions = append(rt.Partitions, committed(p, c, true))
				}
				rg.Topics = append(rg.Topics, rt)
			}
		default:
			commits := commitsOf(infos[i])
			for _, t := range g.Topics {
				rt := kmsg.NewOffsetFetchResponseGroupTopic()
				rt.Topic, rt.TopicID = t.Topic, t.TopicID
				for _, p := range t.Partitions {
					c, ok := commits[t.Topic][p]
					rt.Partitions = append(rt.Partitions, committed(p, c, ok))
				}
				rg.Topics = append(rg.Topics, rt)
			}
		}
		resp.Groups = append(resp.Groups, rg)
	}
	if req.Version <= 7 {
		g := resp.Groups[0]
		resp.Groups = nil
		resp.ErrorCode = g.ErrorCode
		for _, t := range g.Topics {
			rt := kmsg.NewOffsetFetchResponseTopic()
			rt.Topic = t.Topic
			for _, p := range t.Partitions {
				rp := kmsg.NewOffsetFetchResponseTopicPartition()
				rp.Partition, rp.Offset, rp.LeaderEpoch, rp.Metadata, rp.ErrorCode = p.Partition, p.Offset, p.LeaderEpoch, p.Metadata, p.ErrorCode
				rt.Partitions = append(rt.Partitions, rp)
			}
			resp.Topics = append(resp.Topics, rt)
		}
	}
	return resp
}

// commitsOf returns the committed offsets of a known group, none of an
// unknown one (nil).
func commitsOf(i *kfake.GroupInfo) map[string]map[int32]kfake.GroupCommit {
	if i == nil {
		return nil
	}
	return i.Commits
}

// committed is one partition of an OffsetFetch answer: the commit c if ok,
// else Kafka's "no offset" (-1, leader epoch -1, empty metadata).
func committed(p int32, c kfake.GroupCommit, ok bool) kmsg.OffsetFetchResponseGroupTopicPartition {
	rp := kmsg.NewOffsetFetchResponseGroupTopicPartition()
	rp.Partition = p
	if !ok {
		rp.Offset, rp.LeaderEpoch, rp.Metadata = -1, -1, new(string)
		return rp
	}
	md := c.Metadata
	rp.Offset, rp.LeaderEpoch, rp.Metadata = c.Offset, c.LeaderEpoch, &md
	return rp
}
