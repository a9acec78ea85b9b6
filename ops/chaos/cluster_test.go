package chaos

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/ops/admin"
	"github.com/jobstream/jobstream/ops/broker"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
	"github.com/jobstream/jobstream/schema/kafkaconn"
)

// TestChaosCluster runs the pipeline against a three-node embedded broker,
// in this process so that the test can act as the cluster's controller:
// while the jobs flow through the reader and the step workers (real
// processes), it elects new leaders for every partition, moves single
// partitions to another node, moves every group's coordinator and restarts
// nodes, at random moments, until the last job is done. (kfake's node
// restart stops the node's listener and hands its partitions and groups to
// the others; connections open to it stay, and are answered as by a node
// that leads nothing.) Then nothing is lost (every job at (overlay, done),
// every committed transition in the topics, in commit order), nothing
// completed twice, and no partition is left unconsumed: every group has
// committed the end of every partition of its trigger topic. The topics
// were created with three replicas and min.insync.replicas=2.
func TestChaosCluster(t *testing.T) {
	jobs, perStep, settle := 200, 1, 3*time.Minute
	if *full {
		jobs, perStep, settle = 2000, 2, 10*time.Minute
	}
	load := time.Duration(jobs) * 60 * time.Millisecond // the inserts' pace: 200 jobs in 12s
	s, rng := seeded(t, "cluster chaos", 2, "%d jobs over %s, %d worker processes per step, 3 broker nodes", jobs, load, perStep)
	bin := harness.Binary(t)
	dir := harness.New(t).Dir
	ctx := context.Background()
	began := time.Now()

	pg, url, pool := migratedPostgres(t, ctx, dir)
	defer pg.Stop()
	defer pool.Close()

	b := harness.StartBroker(t, broker.Config{Nodes: 3})
	cluster := b.Cluster()
	addrs := b.Addrs()

	logDir, logLevel := procLogDir(t, dir, s)
	logf := logFiles(t, logDir)
	script := filepath.Join(dir, "step.sh")
	if err := os.WriteFile(script, []byte(stepScript), 0o755); err != nil {
		t.Fatal(err)
	}
	// The bootstrap list names every node, as a deployment's would.
	env := []string{"DATABASE_URL=" + url, "KAFKA_BROKERS=" + strings.Join(addrs, ","), "JOBSTREAM_LOG_LEVEL=" + logLevel}
	procs := []*proc{{name: "reader", args: []string{"reader"}, env: env, log: logf("reader")}}
	for _, step := range schema.DefaultSteps[1:] {
		for i := range perStep {
			name := fmt.Sprintf("worker-%s-%d", step, i)
			procs = append(procs, &proc{name: name, env: env, log: logf(name),
				args: []string{"worker", "--step", step, "--concurrency", "4", "--lease", "3s", "--max-attempts", "50", "--stall-timeout", "10s", "--", script}})
		}
	}
	for _, p := range procs {
		p.start(t, bin)
		defer p.kill()
	}
	logTailsOnFailure(t, logDir, "reader", "worker-vlm_analyze-0", "worker-overlay-0")
	waitSnapshotDone(t, ctx, pool)

	// The load, at a steady pace, until the test ends.
	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	go func() {
		every := load / time.Duration(jobs)
		for i := 1; i <= jobs && lctx.Err() == nil; i++ {
			for {
				_, err := pool.Exec(lctx, `INSERT INTO jobs (job_id, current_step, status) VALUES ($1, 'img_gen', 'done') ON CONFLICT DO NOTHING`, fmt.Sprintf("c%05d", i))
				if err == nil || lctx.Err() != nil {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			time.Sleep(every)
		}
	}()

	// The controller, every 0.2-1.5s until every job is done: a leader
	// election (every partition gets a random leader), a partition
	// reassignment (one partition to another node), a coordinator move
	// (every group's coordinator hashed anew) or a node restart (it stops
	// listening, its partitions and groups go to the nodes left, and it
	// comes back on its port). Each round of five takes each kind at least
	// once, in a random order.
	topics := make([]string, len(schema.DefaultSteps))
	for i, step := range schema.DefaultSteps {
		topics[i] = schema.Topics{Prefix: schema.DefaultTopicPrefix}.Step(step)
	}
	var shuffles, moves, rehashes, restarts atomic.Int64
	stop := make(chan struct{})
	var controller sync.WaitGroup
	controller.Add(1)
	go func() {
		defer controller.Done()
		var round []string
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(200+rng.IntN(1300)) * time.Millisecond):
			}
			if len(round) == 0 {
				round = []string{"elect", "move", "move", "coordinators", "restart"}
				rng.Shuffle(len(round), func(i, j int) { round[i], round[j] = round[j], round[i] })
			}
			kind := round[0]
			round = round[1:]
			switch kind {
			case "elect":
				cluster.ShufflePartitionLeaders()
				shuffles.Add(1)
			case "move":
				topic, part := topics[rng.IntN(len(topics))], int32(rng.IntN(schema.DefaultPartitions))
				to := (cluster.LeaderFor(topic, part) + 1 + int32(rng.IntN(2))) % int32(len(addrs))
				if cluster.MoveTopicPartition(topic, part, to) == nil { // nil once the reader created the topic
					moves.Add(1)
				}
			case "coordinators":
				cluster.RehashCoordinators()
				rehashes.Add(1)
			case "restart":
				node := int32(rng.IntN(len(addrs)))
				_, port, _ := net.SplitHostPort(addrs[node])
				p, _ := strconv.Atoi(port)
				if err := cluster.RemoveNode(node); err != nil {
					t.Errorf("stop node %d: %v", node, err)
					return
				}
				time.Sleep(time.Duration(300+rng.IntN(1200)) * time.Millisecond)
				if _, _, err := cluster.AddNode(node, p); err != nil {
					t.Errorf("restart node %d on port %d: %v", node, p, err)
					return
				}
				restarts.Add(1)
			}
		}
	}()

	err := harness.Poll(load+settle, func() (bool, string) {
		var n int
		pool.QueryRow(ctx, `SELECT count(*) FROM jobs WHERE current_step = 'overlay' AND status = 'done'`).Scan(&n)
		return n == jobs, fmt.Sprintf("%d of %d jobs at (overlay, done); the others: %s", n, jobs, harness.DumpRows(pool,
			`SELECT j.job_id, j.current_step, j.status, j.updated_at, r.step, r.attempt, r.outcome, r.worker, r.started_at, r.finished_at
			FROM jobs j LEFT JOIN jobstream_runs r USING (job_id) WHERE NOT (j.current_step = 'overlay' AND j.status = 'done')
			ORDER BY j.job_id, r.run_id LIMIT 40`))
	})
	close(stop)
	controller.Wait()
	t.Logf("controller: %d leader elections (every partition), %d partition moves, %d coordinator moves, %d node restarts; leaders of %s now %v, coordinator of %s on node %d",
		shuffles.Load(), moves.Load(), rehashes.Load(), restarts.Load(), topics[1], leaders(cluster.LeaderFor, topics[1]),
		schema.Topics{Prefix: schema.DefaultTopicPrefix}.Group(schema.DefaultSteps[1]),
		cluster.CoordinatorFor(schema.Topics{Prefix: schema.DefaultTopicPrefix}.Group(schema.DefaultSteps[1])))
	if err != nil {
		t.Error(err)
	}
	if shuffles.Load() == 0 || rehashes.Load() == 0 || restarts.Load() == 0 {
		t.Errorf("the controller elected leaders %d times, moved coordinators %d times and restarted %d nodes: the run was too short to test anything",
			shuffles.Load(), rehashes.Load(), restarts.Load())
	}

	rep := check(t, pool, &harness.Env{Brokers: addrs[:1]}, jobs)
	k := admin.NewKafka(kafkaconn.Broker{Addrs: addrs})
	for i, step := range schema.DefaultSteps[1:] {
		group, topic := schema.Topics{Prefix: schema.DefaultTopicPrefix}.Group(step), topics[i]
		// The last commits may still be on their way (a commit refused by a
		// coordinator that just moved is sent again in the next generation).
		harness.Eventually(t, 60*time.Second, func() (bool, string) { return consumed(ctx, k, group, topic) })
	}
	replicated(t, addrs, topics)
	t.Logf("cluster chaos report (seed %d): %d jobs done; duplicate deliveries seen %d; re-run attempts %d; wall time %s",
		s, jobs, rep.duplicates, rep.reruns, time.Since(began).Round(time.Second))
}

// leaders returns the leader node of each partition of topic.
func leaders(leaderFor func(string, int32) int32, topic string) []int32 {
	out := make([]int32, schema.DefaultPartitions)
	for p := range out {
		out[p] = leaderFor(topic, int32(p))
	}
	return out
}

// consumed reports whether group has committed the end offset of every
// partition of topic, and otherwise which partitions lag.
func consumed(ctx context.Context, k *admin.Kafka, group, topic string) (bool, string) {
	offs, err := k.Offsets(ctx, topic)
	if err != nil {
		return false, err.Error()
	}
	parts := make([]int, len(offs))
	for i, o := range offs {
		parts[i] = o.Partition
	}
	committed, err := k.Committed(ctx, group, topic, parts)
	if err != nil {
		return false, err.Error()
	}
	var behind []string
	for _, o := range offs {
		if c, ok := committed[o.Partition]; !ok || c != o.End {
			behind = append(behind, fmt.Sprintf("%d: committed %d of %d", o.Partition, c, o.End))
		}
	}
	if len(offs) != schema.DefaultPartitions {
		behind = append(behind, fmt.Sprintf("%d partitions, want %d", len(offs), schema.DefaultPartitions))
	}
	return len(behind) == 0, fmt.Sprintf("group %s has not consumed %s to its end: %s", group, topic, strings.Join(behind, "; "))
}

// replicated checks that the topics have three replicas per partition and
// min.insync.replicas=2 set on them, as the reader and workers created them.
func replicated(t *testing.T, addrs, topics []string) {
	t.Helper()
	ctx := context.Background()
	c := kafkaconn.Broker{Addrs: addrs}.Client(10 * time.Second)
	md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: topics})
	if err != nil {
		t.Fatal(err)
	}
	var res []kafka.DescribeConfigRequestResource
	for _, tp := range md.Topics {
		for _, p := range tp.Partitions {
			if len(p.Replicas) != kafkaconn.ClusterReplication {
				t.Errorf("%s/%d has %d replicas, want %d", tp.Name, p.ID, len(p.Replicas), kafkaconn.ClusterReplication)
			}
		}
		res = append(res, kafka.DescribeConfigRequestResource{ResourceType: kafka.ResourceTypeTopic, ResourceName: tp.Name, ConfigNames: []string{"min.insync.replicas"}})
	}
	if len(md.Topics) != len(topics) {
		t.Errorf("metadata names %d topics, want %d", len(md.Topics), len(topics))
	}
	dc, err := c.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: res})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range dc.Resources {
		for _, e := range r.ConfigEntries {
			if e.ConfigValue != fmt.Sprint(kafkaconn.ClusterMinInsyncReplicas) {
				t.Errorf("%s: min.insync.replicas %s, want %d", r.ResourceName, e.ConfigValue, kafkaconn.ClusterMinInsyncReplicas)
			}
		}
	}
}
