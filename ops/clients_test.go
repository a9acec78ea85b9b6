package ops_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/consumers"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
)

// kafkajsDir holds the Node project of the second client (package.json and
// package-lock.json pin kafkajs; .ci/run runs `npm ci` there).
const kafkajsDir = "testdata/kafkajs"

// kafkajs returns a function that runs a command of testdata/kafkajs/clients.js
// with args (as JSON) and decodes its JSON answer into out; it returns the
// script's stderr and whether it succeeded. Without node or the installed
// kafkajs the test is skipped, unless it runs in CI (CI set, as .ci/run and
// CI services do), where it fails: there, a missing client is a broken setup,
// not a reason to test less.
func kafkajs(t *testing.T) func(cmd string, args, out any) (stderr string, ok bool) {
	t.Helper()
	missing := ""
	node, err := exec.LookPath("node")
	switch {
	case err != nil:
		missing = "node is not installed"
	default:
		if _, err := os.Stat(filepath.Join(kafkajsDir, "node_modules", "kafkajs", "package.json")); err != nil {
			missing = "kafkajs is not installed (run `npm ci` in ops/testdata/kafkajs)"
		}
	}
	if missing != "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s; .ci/run installs it", missing)
		}
		t.Skipf("%s; .ci/run installs it, and CI fails without it", missing)
	}
	return func(cmd string, args, out any) (string, bool) {
		t.Helper()
		a, _ := json.Marshal(args)
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		defer cancel()
		c := exec.CommandContext(ctx, node, "clients.js", cmd, string(a))
		c.Dir = kafkajsDir
		c.Env = append(os.Environ(), "KAFKAJS_NO_PARTITIONER_WARNING=1")
		var stdout, stderr bytes.Buffer
		c.Stdout, c.Stderr = &stdout, &stderr
		if err := c.Run(); err != nil {
			return stderr.String(), false
		}
		if err := json.Unmarshal(stdout.Bytes(), out); err != nil {
			t.Fatalf("kafkajs %s: %v: %s\n%s", cmd, err, stdout.Bytes(), stderr.Bytes())
		}
		return stderr.String(), true
	}
}

// stepWorkers runs one in-process worker per step, each of which the test
// may stop and start again, and counts the handler's calls per step and job.
type stepWorkers struct {
	t     *testing.T
	e     *harness.Env
	mu    sync.Mutex
	calls map[string]int // "step/job" → handler calls
	stops map[string]func()
}

func (w *stepWorkers) start(step string) {
	w.t.Helper()
	wk, err := consumers.New(consumers.Config{DatabaseURL: w.e.DatabaseURL, Brokers: w.e.Brokers, Step: step, TopicPrefix: w.e.Prefix,
		WorkerID: "clients-" + step,
		Handler: func(_ context.Context, j consumers.Job) (json.RawMessage, error) {
			w.mu.Lock()
			w.calls[step+"/"+j.JobID]++
			w.mu.Unlock()
			return json.RawMessage(`{"ok": true}`), nil
		}})
	if err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); wk.Run(ctx) }()
	var once sync.Once
	w.stops[step] = func() { once.Do(func() { cancel(); <-done }) }
	w.t.Cleanup(w.stops[step])
}

func (w *stepWorkers) stop(step string) { w.stops[step]() }

// twice returns the step/job pairs whose handler ran more than once.
func (w *stepWorkers) twice() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for k, n := range w.calls {
		if n != 1 {
			out = append(out, fmt.Sprintf("%s ran %d times", k, n))
		}
	}
	sort.Strings(out)
	return out
}

// groupLag is one consumer group's lag as a lag tool shows it.
type groupLag struct {
	State      string `json:"state,omitempty"`
	Members    int    `json:"members"`
	Lag        int64  `json:"lag"`
	Partitions []struct {
		Partition int   `json:"partition"`
		Committed int64 `json:"committed"`
		End       int64 `json:"end"`
		Lag       int64 `json:"lag"`
	} `json:"partitions"`
}

// statusLags returns each step group's lag and members as `jobstream status
// --json` reports them, by group.
func statusLags(t *testing.T, e *harness.Env) map[string]groupLag {
	t.Helper()
	var rep struct {
		Steps []struct {
			Group   string `json:"group"`
			Members []any  `json:"members"`
			groupLag
		} `json:"steps"`
	}
	statusJSON(t, e, &rep)
	out := map[string]groupLag{}
	for _, s := range rep.Steps {
		g := s.groupLag
		g.Members = len(s.Members)
		out[s.Group] = g
	}
	return out
}

// TestKafkaClients runs a second, independent Kafka client (kafkajs, and
// kcat where it is enough) through what users do with Kafka tooling on a
// running pipeline's topics: list and describe the groups and read their
// lag, which equals `jobstream status`'s; look up offsets by time; read one
// job's history by its Debezium key in a consumer group of their own, from
// the partition any Java-compatible client computes for the key; reset a
// stopped worker's group (to earliest, and to the offsets of a time), after
// which the worker reads those events again and no step runs twice.
func TestKafkaClients(t *testing.T) {
	t.Parallel()
	js := kafkajs(t)
	e := harness.New(t)
	harness.StartReader(t, t.Context(), cdc.Config{DatabaseURL: e.DatabaseURL, Brokers: e.Brokers, Slot: e.Slot, TopicPrefix: e.Prefix})
	steps := schema.DefaultSteps[1:]
	w := &stepWorkers{t: t, e: e, calls: map[string]int{}, stops: map[string]func(){}}
	for _, s := range steps {
		w.start(s)
	}
	topics := e.Topics()
	groups := map[string]string{} // group → its trigger topic
	for i, s := range steps {
		groups[topics.Group(s)] = topics.Step(schema.DefaultSteps[i])
	}
	insert := func(from, to int) {
		for i := from; i <= to; i++ {
			e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ($1, 'img_gen', 'done')`, fmt.Sprintf("j%d", i))
		}
	}
	events := func(topic string) int {
		t.Helper()
		return len(e.ReadTopic(t, topic))
	}
	// settled waits until every group's lag is want's (0 where want has none).
	settled := func(want map[string]int64) {
		t.Helper()
		harness.Eventually(t, 60*time.Second, func() (bool, string) {
			lags := statusLags(t, e)
			for g, l := range lags {
				if l.Lag != want[g] {
					return false, fmt.Sprintf("group %s lags %d, want %d", g, l.Lag, want[g])
				}
			}
			return true, ""
		})
	}
	// sameLag: kafkajs reads the lag of every group as status does, at a
	// quiet moment (status reads the same before and after kafkajs).
	type groupsOut struct {
		Listed []string            `json:"listed"`
		Groups map[string]groupLag `json:"groups"`
		Never  []int64             `json:"never"`
	}
	sameLag := func(what string) groupsOut {
		t.Helper()
		var got groupsOut
		harness.Eventually(t, 60*time.Second, func() (bool, string) {
			before := statusLags(t, e)
			if stderr, ok := js("groups", map[string]any{"brokers": e.Brokers, "prefix": e.Prefix, "groups": groups,
				"never": map[string]string{"group": e.Prefix + ".never", "topic": topics.Step("vlm_analyze")}}, &got); !ok {
				return false, "kafkajs groups: " + stderr
			}
			after := statusLags(t, e)
			if !reflect.DeepEqual(before, after) {
				return false, fmt.Sprintf("status moved meanwhile: %+v then %+v", before, after)
			}
			for g := range groups {
				k, s := got.Groups[g], after[g]
				k.State = ""
				if !reflect.DeepEqual(k, s) {
					return false, fmt.Sprintf("%s: group %s as kafkajs reads it: %+v; as status does: %+v", what, g, got.Groups[g], s)
				}
			}
			return true, ""
		})
		for g := range groups {
			if !slices.Contains(got.Listed, g) {
				t.Errorf("%s: kafkajs's listGroups lacks %s: %v", what, g, got.Listed)
			}
		}
		if len(got.Never) != 12 || slices.ContainsFunc(got.Never, func(o int64) bool { return o != -1 }) {
			t.Errorf("kafkajs fetchOffsets of a group that never committed: %v, want -1 for each of 12 partitions", got.Never)
		}
		return got
	}

	// A first batch, all done; then planner's worker stops and a second
	// batch waits for it in jobs.yolo_detect.
	const n1, n2 = 20, 10
	insert(1, n1)
	waitAllDone(t, e, n1)
	settled(nil)
	harness.Eventually(t, 30*time.Second, func() (bool, string) {
		got := events(topics.Step("overlay"))
		return got == 2*n1, fmt.Sprintf("%d events in the overlay topic, want %d", got, 2*n1)
	})
	w.stop("planner")
	between := time.Now()
	time.Sleep(10 * time.Millisecond)
	insert(n1+1, n1+n2)
	planner := topics.Group("planner")
	settled(map[string]int64{planner: 2 * n2}) // each job's yolo_detect running and done
	if got := e.Count(t, `SELECT count(*) FROM jobs WHERE current_step = 'yolo_detect' AND status = 'done'`); got != n2 {
		t.Fatalf("%d jobs at (yolo_detect, done), want %d", got, n2)
	}

	// Groups and lag.
	for g, l := range sameLag("planner stopped").Groups {
		if want := "Stable"; g == planner && l.State != "Empty" || g != planner && l.State != want {
			t.Errorf("kafkajs describes group %s as %s with %d members", g, l.State, l.Members)
		}
	}
	if kcat, err := exec.LookPath("kcat"); err == nil {
		out, err := exec.Command(kcat, "-b", e.Brokers[0], "-L", "-J", "-t", topics.Step("yolo_detect")).Output()
		var md struct {
			Topics []struct {
				Topic      string `json:"topic"`
				Partitions []any  `json:"partitions"`
			} `json:"topics"`
		}
		if err != nil || json.Unmarshal(out, &md) != nil || len(md.Topics) != 1 || len(md.Topics[0].Partitions) != 12 {
			t.Errorf("kcat -L: %v: %s", err, out)
		}
	}

	// Offsets by time: kafkajs and kcat find the same offsets, and after
	// them lie the second batch's events.
	yolo := topics.Step("yolo_detect")
	var byTime []struct {
		Partition int   `json:"partition"`
		Offset    int64 `json:"offset,string"`
	}
	if stderr, ok := js("bytime", map[string]any{"brokers": e.Brokers, "topic": yolo, "ts": between.UnixMilli()}, &byTime); !ok {
		t.Fatalf("kafkajs fetchTopicOffsetsByTimestamp: %s", stderr)
	}
	ends := map[int]int64{}
	for _, p := range statusLags(t, e)[planner].Partitions {
		ends[p.Partition] = p.End
	}
	var after int64
	for _, p := range byTime {
		after += ends[p.Partition] - p.Offset
	}
	if after != 2*n2 || len(byTime) != 12 {
		t.Errorf("kafkajs: %d events in %s after the time between the batches (%d partitions), want %d", after, yolo, len(byTime), 2*n2)
	}
	if kcat, err := exec.LookPath("kcat"); err == nil {
		args := []string{"-b", e.Brokers[0], "-Q", "-J"}
		for p := range 12 {
			args = append(args, "-t", fmt.Sprintf("%s:%d:%d", yolo, p, between.UnixMilli()))
		}
		out, err := exec.Command(kcat, args...).Output()
		if err != nil {
			t.Fatalf("kcat -Q: %v: %s", err, out)
		}
		var q map[string]map[string]json.RawMessage
		if err := json.Unmarshal(out, &q); err != nil {
			t.Fatalf("kcat -Q -J: %v: %s", err, out)
		}
		for _, p := range byTime {
			var kp struct{ Offset int64 }
			json.Unmarshal(q[yolo][fmt.Sprint(p.Partition)], &kp)
			// Kafka answers -1 where no event is that recent; kafkajs
			// shows the end offset there instead.
			if kp.Offset != p.Offset && !(kp.Offset == -1 && p.Offset == ends[p.Partition]) {
				t.Errorf("partition %d: kcat -Q finds offset %d, kafkajs %d (end %d)", p.Partition, kp.Offset, p.Offset, ends[p.Partition])
			}
		}
	} else if os.Getenv("CI") != "" {
		t.Fatal("kcat is not installed; .ci/run installs it")
	}

	// One job's history by key, in a consumer group of the reader's own.
	key := string(schema.Key("j7", false))
	var hist struct {
		Events []struct {
			Topic     string `json:"topic"`
			Partition int    `json:"partition"`
			Value     struct {
				After struct {
					Step   string `json:"current_step"`
					Status string `json:"status"`
				} `json:"after"`
				Source struct {
					LSN int64 `json:"lsn"`
				} `json:"source"`
			} `json:"value"`
		} `json:"events"`
		Expected map[string]int   `json:"expected"`
		Lag      map[string]int64 `json:"lag"`
	}
	var all []string
	for _, s := range schema.DefaultSteps {
		all = append(all, topics.Step(s))
	}
	auditGroup := e.Prefix + ".kafkajs-history"
	if stderr, ok := js("history", map[string]any{"brokers": e.Brokers, "group": auditGroup, "topics": all, "key": key}, &hist); !ok {
		t.Fatalf("kafkajs history of j7: %s", stderr)
	}
	sort.SliceStable(hist.Events, func(i, j int) bool { return hist.Events[i].Value.Source.LSN < hist.Events[j].Value.Source.LSN })
	var seq []string
	for _, ev := range hist.Events {
		seq = append(seq, ev.Value.After.Step+":"+ev.Value.After.Status)
		if ev.Partition != hist.Expected[ev.Topic] {
			t.Errorf("j7's event in %s is in partition %d; kafkajs's murmur2 partitioner says %d", ev.Topic, ev.Partition, hist.Expected[ev.Topic])
		}
	}
	var want []string
	for _, h := range audit(t, e, "j7").History {
		if h.Kind == "change" {
			want = append(want, h.Step+":"+h.Status)
		}
	}
	if len(seq) != 9 || !slices.Equal(seq, want) {
		t.Errorf("j7's history read by key with kafkajs:\n%v\njobstream audit j7:\n%v", seq, want)
	}
	for topic, lag := range hist.Lag {
		if lag != 0 {
			t.Errorf("kafkajs's own group %s lags %d in %s after reading to the end", auditGroup, lag, topic)
		}
	}

	// kcat consumes in a group of its own too (librdkafka's balanced
	// consumer), commits as it closes, and kafkajs reads no lag left.
	if kcat, err := exec.LookPath("kcat"); err == nil {
		kg := e.Prefix + ".kcat"
		out, err := exec.Command(kcat, "-b", e.Brokers[0], "-G", kg, "-X", "auto.offset.reset=earliest", "-e", "-q", "-f", "%k\n", yolo).Output()
		if n := bytes.Count(out, []byte("\n")); err != nil || n != 2*(n1+n2) {
			t.Errorf("kcat -G read %d events of %s, want %d: %v", n, yolo, 2*(n1+n2), err)
		}
		var got groupsOut
		if stderr, ok := js("groups", map[string]any{"brokers": e.Brokers, "prefix": e.Prefix, "groups": map[string]string{kg: yolo},
			"never": map[string]string{"group": e.Prefix + ".never", "topic": yolo}}, &got); !ok || got.Groups[kg].Lag != 0 || !slices.Contains(got.Listed, kg) {
			t.Errorf("kcat's group as kafkajs reads it: %+v %s", got, stderr)
		}
	}

	// Resets. A running group refuses one, as `jobstream replay
	// --reset-offsets` does.
	var offs []map[string]any
	if stderr, ok := js("reset", map[string]any{"brokers": e.Brokers, "group": topics.Group("vlm_analyze"), "topic": topics.Step("img_gen"), "earliest": true}, &offs); ok ||
		!strings.Contains(stderr, "no running instances") {
		t.Errorf("kafkajs reset of a group with a live worker: ok %v: %s", ok, stderr)
	}
	// planner's group back to the earliest offsets: kafkajs commits -2
	// (Kafka's "earliest"), and status and kafkajs count the whole topic.
	if stderr, ok := js("reset", map[string]any{"brokers": e.Brokers, "group": planner, "topic": yolo, "earliest": true}, &offs); !ok {
		t.Fatalf("kafkajs resetOffsets: %s", stderr)
	}
	sameLag("planner reset to earliest")
	if got := statusLags(t, e)[planner].Lag; got != int64(2*(n1+n2)) {
		t.Errorf("planner's lag after the reset: %d, want %d", got, 2*(n1+n2))
	}
	// yolo_detect's group to the offsets of the time between the batches:
	// it reads the second batch's vlm_analyze events again.
	w.stop("yolo_detect")
	vlm := topics.Step("vlm_analyze")
	if stderr, ok := js("bytime", map[string]any{"brokers": e.Brokers, "topic": vlm, "ts": between.UnixMilli()}, &byTime); !ok {
		t.Fatalf("kafkajs fetchTopicOffsetsByTimestamp: %s", stderr)
	}
	var set []map[string]any
	for _, p := range byTime {
		set = append(set, map[string]any{"partition": p.Partition, "offset": fmt.Sprint(p.Offset)})
	}
	harness.Eventually(t, 60*time.Second, func() (bool, string) { // until the stopped member has left the group
		stderr, ok := js("set", map[string]any{"brokers": e.Brokers, "group": topics.Group("yolo_detect"), "topic": vlm, "partitions": set}, &offs)
		return ok, "kafkajs setOffsets: " + stderr
	})
	if got := statusLags(t, e)[topics.Group("yolo_detect")].Lag; got != 2*n2 {
		t.Errorf("yolo_detect's lag after setOffsets to the time between the batches: %d, want %d", got, 2*n2)
	}

	// The workers read those events again: the second batch runs planner
	// and overlay once; the events of jobs already past a step claim
	// nothing, so no step runs twice.
	w.start("yolo_detect")
	w.start("planner")
	waitAllDone(t, e, n1+n2)
	settled(nil)
	if tw := w.twice(); len(tw) != 0 {
		t.Errorf("steps ran more than once after the resets: %v", tw)
	}
	if d := e.Dump(t, `SELECT job_id, step, count(*) FROM jobstream_runs GROUP BY 1, 2 HAVING count(*) <> 1`); d != "" {
		t.Errorf("runs recorded more than once:\n%s", d)
	}
	if got := e.Count(t, `SELECT count(*) FROM jobstream_runs WHERE outcome = 'done'`); got != 4*(n1+n2) {
		t.Errorf("%d runs done, want %d", got, 4*(n1+n2))
	}
	sameLag("all done")
}
