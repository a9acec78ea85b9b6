package consumers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/schema"
)

// The stall watchdog guards "no transition is lost" against a consumer group
// that stops consuming a partition while its members look healthy: a member
// that died holding an assignment the coordinator never took back, or a
// coordinator that answered a rebalance with inconsistent assignments (the
// embedded broker, kfake, can tell several members they lead one
// generation). A partition is stalled when no member of this worker holds
// it, its committed offset has not moved for StallTimeout, and the job at
// its head waits unclaimed (no open run with a live lease). Then every
// member of this process leaves the group and joins again, which makes the
// coordinator build a new generation from the members that are really
// there. A partition waiting for its member to finish a long step on
// another partition is not stalled: partitions this worker's members hold
// are skipped, and nothing is stalled while the step has as many runs in
// progress as the group has members.
//
// It runs only against jobstream's embedded broker (Worker.embedded: the
// cluster id ops/broker sets); real Kafka's coordinator has no such fault,
// and there the watchdog would only add rejoins.

type stallMark struct {
	committed int64
	since     time.Time
}

// rejoinSignal returns a channel closed at the next rejoin request.
func (w *stepWorker) rejoinSignal() <-chan struct{} {
	w.rejoinMu.Lock()
	defer w.rejoinMu.Unlock()
	if w.rejoinCh == nil {
		w.rejoinCh = make(chan struct{})
	}
	return w.rejoinCh
}

// requestRejoin makes every member of this worker rejoin the group.
func (w *stepWorker) requestRejoin() {
	w.rejoinMu.Lock()
	defer w.rejoinMu.Unlock()
	if w.rejoinCh != nil {
		close(w.rejoinCh)
	}
	w.rejoinCh = make(chan struct{})
}

// watchStalls checks the trigger topic every StallTimeout/3 until ctx ends.
func (w *stepWorker) watchStalls(ctx context.Context) error {
	if w.cfg.StallTimeout < 0 {
		return nil
	}
	topic, group := w.topic, w.group
	client := &kafka.Client{Addr: kafka.TCP(w.brokers...), Timeout: 10 * time.Second, Transport: w.transport}
	seen := map[int]stallMark{}
	return w.everyTick(ctx, max(w.cfg.StallTimeout/3, 500*time.Millisecond), "stall check", func(ctx context.Context) error {
		stalled, err := w.findStalled(ctx, client, topic, group, seen)
		if err != nil {
			return err
		}
		if len(stalled) > 0 {
			w.log.Warn("partitions of the trigger topic have not moved and their next job waits unclaimed; rejoining the consumer group to recover",
				"topic", topic, "partitions", stalled, "after", w.cfg.StallTimeout)
			w.stats.Rejoins.Add(1)
			w.requestRejoin()
			clear(seen)
		}
		return nil
	})
}

// findStalled returns the partitions of topic that are stalled now.
func (w *stepWorker) findStalled(ctx context.Context, client *kafka.Client, topic, group string, seen map[int]stallMark) ([]int, error) {
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, err
	}
	var parts []int
	var req []kafka.OffsetRequest
	for _, t := range md.Topics {
		for _, p := range t.Partitions {
			parts = append(parts, p.ID)
			req = append(req, kafka.FirstOffsetOf(p.ID), kafka.LastOffsetOf(p.ID))
		}
	}
	if len(parts) == 0 {
		return nil, nil
	}
	lo, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: req}})
	if err != nil {
		return nil, err
	}
	of, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: parts}})
	if err != nil {
		return nil, err
	}
	committed := map[int]int64{}
	for _, p := range of.Topics[topic] {
		committed[p.Partition] = p.CommittedOffset
	}
	now := time.Now()
	var stalled []int
	for _, po := range lo.Topics[topic] {
		p := po.Partition
		if w.owns(p) {
			delete(seen, p) // a member here reads it: busy or moving
			continue
		}
		head, ok := committed[p]
		if !ok || head < 0 {
			head = po.FirstOffset
		}
		if head >= po.LastOffset {
			delete(seen, p)
			continue
		}
		mk, ok := seen[p]
		if !ok || mk.committed != head {
			seen[p] = stallMark{committed: head, since: now}
			continue
		}
		if now.Sub(mk.since) < w.cfg.StallTimeout {
			continue
		}
		busy, err := w.headInProgress(ctx, topic, p, head)
		if err != nil {
			return nil, err
		}
		if !busy {
			stalled = append(stalled, p)
		}
	}
	if len(stalled) > 0 {
		// Members all busy with long steps (one per GPU) leave their other
		// partitions waiting: that is not a stall. Nor is a group in a
		// rebalance: the coordinator ends it within the rebalance timeout,
		// dropping the members that do not join again (one killed), and a
		// rejoin now would only restart its wait for them (kfake waits
		// anew at every join), so that a dead member held the group for as
		// long as the live ones kept rejoining.
		hold, err := w.holdRejoin(ctx, client, group)
		if err != nil || hold {
			return nil, err
		}
	}
	return stalled, nil
}

// holdRejoin reports whether a rejoin must wait: the group is in a
// rebalance, or the step has at least as many runs in progress (open, with
// a live lease) as its group has members.
func (w *stepWorker) holdRejoin(ctx context.Context, client *kafka.Client, group string) (bool, error) {
	resp, err := client.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
	if err != nil {
		return false, err
	}
	members := 0
	for _, g := range resp.Groups {
		if g.GroupState == "PreparingRebalance" || g.GroupState == "CompletingRebalance" {
			if w.rebalancingSince.IsZero() {
				w.rebalancingSince = time.Now()
			}
			// A rebalance that outlasts its timeout and a stall check is
			// itself stuck (seen with coordinators moving on a kfake
			// cluster): then a rejoin is the way out.
			if time.Since(w.rebalancingSince) < rebalanceTimeout+w.cfg.StallTimeout {
				w.log.Debug("stalled partitions wait for the group's rebalance to end", "group", group, "state", g.GroupState)
				return true, nil
			}
			w.rebalancingSince = time.Time{}
			return false, nil
		}
		members += len(g.Members)
	}
	w.rebalancingSince = time.Time{}
	var running int
	if err := w.store.pool.QueryRow(ctx, `SELECT count(*) FROM jobstream_runs
		WHERE step = $1 AND finished_at IS NULL AND lease_expires_at > now()`, w.cfg.Step).Scan(&running); err != nil {
		return false, err
	}
	return members > 0 && running >= members, nil
}

// headInProgress reports whether the event at offset of partition p is a
// trigger whose job has an open run with a live lease (a step running long,
// or waiting to retry): then the partition is busy, not stalled.
func (w *stepWorker) headInProgress(ctx context.Context, topic string, p int, offset int64) (bool, error) {
	conn, err := w.dialer.DialLeader(ctx, "tcp", w.brokers[0], topic, p)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	if _, err := conn.Seek(offset, kafka.SeekAbsolute); err != nil {
		return false, fmt.Errorf("seek: %w", err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	m, err := conn.ReadMessage(16 << 20)
	if err != nil {
		return false, fmt.Errorf("read head of %s/%d: %w", topic, p, err)
	}
	env, err := schema.DecodeTrigger(m.Value)
	if err != nil || env.After == nil || env.After.JobID == nil {
		return false, nil
	}
	var busy bool
	err = w.store.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM jobstream_runs
		WHERE job_id = $1 AND step = $2 AND finished_at IS NULL AND lease_expires_at > now())`, *env.After.JobID, w.cfg.Step).Scan(&busy)
	if err != nil && !errors.Is(err, context.Canceled) {
		return false, err
	}
	return busy, err
}
