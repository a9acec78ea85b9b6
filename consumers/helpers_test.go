package consumers_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
)

// streamingEnv is a fresh harness.Env with a reader streaming its changes
// until the test ends: where most tests here start.
func streamingEnv(t *testing.T) *harness.Env {
	t.Helper()
	e := harness.New(t)
	startReader(t, e)
	return e
}

// ---- worker processes ----

// workerName is what worker process p writes into jobstream_runs.worker:
// host:pid, then the member.
func workerName(p *harness.Process) string {
	host, _ := os.Hostname()
	return host + ":" + strconv.Itoa(p.Pid()) + "/"
}

// script writes an executable shell script into dir and returns its path.
// Write every script before running any: a fork while a script is open for
// writing makes exec fail with "text file busy".
func script(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// slowStep is a step command for the process tests. It appends
// "job attempt ppid pid" to $STEP_DIR/started, sleeps $STEP_SLOW_SECS on
// attempt 1 of job $STEP_SLOW_JOB (0.05s otherwise), and prints a result
// naming the attempt and the worker process (its parent) that ran it.
const slowStep = `job=$(cat)
[ -n "$job" ] || { echo "no job on stdin" >&2; exit 1; }
echo "$JOBSTREAM_JOB_ID $JOBSTREAM_ATTEMPT $PPID $$" >> "$STEP_DIR/started"
if [ "$JOBSTREAM_JOB_ID" = "$STEP_SLOW_JOB" ] && [ "$JOBSTREAM_ATTEMPT" = 1 ]; then
  sleep "$STEP_SLOW_SECS"
else
  sleep 0.05
fi
printf '{"attempt":%s,"ppid":%s}\n' "$JOBSTREAM_ATTEMPT" "$PPID"
`

// started is one line of $STEP_DIR/started.
type started struct {
	job           string
	attempt       int
	parent, child int // the worker process, the step process
}

// readStarted returns the steps that started so far, in order.
func readStarted(t *testing.T, dir string) []started {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "started"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []started
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var s started
		if _, err := fmt.Sscan(sc.Text(), &s.job, &s.attempt, &s.parent, &s.child); err == nil {
			out = append(out, s)
		}
	}
	return out
}

// waitStarted waits for attempt of job to start and returns it.
func waitStarted(t *testing.T, dir, job string, attempt int, timeout time.Duration) started {
	t.Helper()
	var got started
	harness.Eventually(t, timeout, func() (bool, string) {
		all := readStarted(t, dir)
		for _, s := range all {
			if s.job == job && s.attempt == attempt {
				got = s
				return true, ""
			}
		}
		return false, fmt.Sprintf("attempt %d of %s has not started; started: %+v", attempt, job, all)
	})
	return got
}

// alive reports whether process pid exists and is not a zombie.
func alive(pid int) bool {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// ---- the broker ----

// kafkaClient returns a client with its own transport, so that its view of
// the topics is fresh (kafka-go's shared transport caches metadata for
// seconds); close it with the returned function.
func kafkaClient(e *harness.Env) (*kafka.Client, func()) {
	tr := &kafka.Transport{MetadataTTL: time.Second}
	return &kafka.Client{Addr: kafka.TCP(e.Brokers...), Timeout: 10 * time.Second, Transport: tr}, tr.CloseIdleConnections
}

// groupMembers returns how many members the consumer group of step has.
func groupMembers(t testing.TB, e *harness.Env, step string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, done := kafkaClient(e)
	defer done()
	// The coordinator may answer an error for a moment under load: ask again.
	members := 0
	harness.Eventually(t, time.Minute, func() (bool, string) {
		resp, err := c.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{e.Topics().Group(step)}})
		if err != nil {
			return false, fmt.Sprintf("describe group: %v", err)
		}
		members = 0
		if len(resp.Groups) > 0 {
			members = len(resp.Groups[0].Members)
		}
		return true, ""
	})
	return members
}

// waitMembers waits until the group of step has n members.
func waitMembers(t *testing.T, e *harness.Env, step string, n int) {
	t.Helper()
	harness.Eventually(t, 60*time.Second, func() (bool, string) {
		got := groupMembers(t, e, step)
		return got == n, fmt.Sprintf("group of %s has %d members, want %d", step, got, n)
	})
}

// offsets returns the committed offset of the group of step and the end
// offset of the topic it reads, per partition.
func offsets(t testing.TB, e *harness.Env, step, trigger string) (committed, end map[int]int64) {
	t.Helper()
	// One minute for the lot: a broker shared by a loaded test binary may
	// take more than one request's timeout to answer.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topic := e.Topic(trigger)
	c, done := kafkaClient(e)
	defer done()
	var parts []int
	harness.Eventually(t, time.Minute, func() (bool, string) {
		md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
		if err == nil && (len(md.Topics) != 1 || md.Topics[0].Error != nil || len(md.Topics[0].Partitions) == 0) {
			err = fmt.Errorf("answer %+v", md.Topics)
		}
		if err != nil {
			return false, fmt.Sprintf("metadata of %s: %v", topic, err)
		}
		parts = parts[:0]
		var reqs []kafka.OffsetRequest
		for _, p := range md.Topics[0].Partitions {
			parts = append(parts, p.ID)
			reqs = append(reqs, kafka.LastOffsetOf(p.ID))
		}
		lo, err := c.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
		if err != nil {
			return false, fmt.Sprintf("list offsets of %s: %v", topic, err)
		}
		end = map[int]int64{}
		for _, p := range lo.Topics[topic] {
			end[p.Partition] = p.LastOffset
		}
		return true, ""
	})
	// The coordinator may answer with an error for a moment (a group that
	// is rebalancing or was just left): ask again.
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		of, err := c.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: e.Topics().Group(step), Topics: map[string][]int{topic: parts}})
		if err == nil {
			err = of.Error
		}
		if err != nil {
			return false, fmt.Sprint("fetch committed offsets: ", err)
		}
		committed = map[int]int64{}
		for _, p := range of.Topics[topic] {
			if p.Error != nil {
				return false, fmt.Sprintf("committed offset of partition %d: %v", p.Partition, p.Error)
			}
			committed[p.Partition] = p.CommittedOffset
		}
		return len(committed) == len(parts), fmt.Sprintf("committed offsets of %d of %d partitions", len(committed), len(parts))
	})
	return committed, end
}

// waitAllCommitted waits until the group of step has committed every event
// of its trigger topic.
func waitAllCommitted(t *testing.T, e *harness.Env, step, trigger string) {
	t.Helper()
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		committed, end := offsets(t, e, step, trigger)
		for p, off := range end {
			if off > 0 && committed[p] != off {
				return false, fmt.Sprintf("committed %v, end %v", committed, end)
			}
		}
		return true, ""
	})
}

// partitionOf returns the partition (of 12) jobstream routes key to.
func partitionOf(key string) int {
	parts := make([]int, schema.DefaultPartitions)
	for i := range parts {
		parts[i] = i
	}
	return (&kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: []byte(key)}, parts...)
}

// sameKeyPartition returns n job ids, starting with prefix+"0", that all
// route to the same partition.
func sameKeyPartition(prefix string, n int) []string {
	want := partitionOf(prefix + "0")
	out := []string{prefix + "0"}
	for i := 1; len(out) < n; i++ {
		if id := prefix + strconv.Itoa(i); partitionOf(id) == want {
			out = append(out, id)
		}
	}
	return out
}

// transitions returns, per job, the (step, status) states of the events in
// the topic of step, in topic order.
func transitions(t *testing.T, e *harness.Env, step string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, m := range e.ReadTopic(t, e.Topic(step)) {
		env, err := schema.DecodeEnvelope(m.Value)
		if err != nil {
			t.Fatalf("event on %s: %v", e.Topic(step), err)
		}
		if row, ok := schema.Row(env.After); ok {
			out[row.JobID] = append(out[row.JobID], row.CurrentStep+"/"+row.Status)
		}
	}
	return out
}

// settledTransitions is transitions once every job of ids has its
// (step, done) event on the step's topic: the reader produces a completion's
// event a moment after its commit.
func settledTransitions(t *testing.T, e *harness.Env, ids []string) map[string][]string {
	t.Helper()
	var events map[string][]string
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		events = transitions(t, e, step)
		for _, id := range ids {
			if !slices.Contains(events[id], step+"/done") {
				return false, fmt.Sprintf("no (%s, done) event for %s yet: %v", step, id, events[id])
			}
		}
		return true, ""
	})
	return events
}

// deadLetters returns the dead letters so far, by key.
func deadLetters(t *testing.T, e *harness.Env) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for _, m := range e.ReadTopic(t, e.Topics().DLQ()) {
		out[schema.JobIDFromKey(m.Key)] = decodeEvent(t, m.Value)
	}
	return out
}

// concurrency tracks how many calls run at once.
type concurrency struct {
	mu       sync.Mutex
	now, max int
}

func (c *concurrency) enter() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now++
	c.max = max(c.max, c.now)
}

func (c *concurrency) leave() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now--
}

func (c *concurrency) peak() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.max
}
