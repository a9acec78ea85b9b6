package cdc_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/jobstream/jobstream/cdc"
	"github.com/jobstream/jobstream/ops/harness"
	"github.com/jobstream/jobstream/schema"
)

// TestStepsOutsideThePipelineAreDeadLettered is issue 11 item 7 (reader
// side): a row whose current_step is a reserved name (dlq, replays), not a
// step of the pipeline (IMG_GEN, a step of another pipeline), empty or
// null goes to the dead-letter topic with the reason and counts in
// Stats.Unroutable; no change event reaches the dead-letter or replay topic
// as an event, and no topic is created for such a step. A delete the WAL
// does not say the step of goes to the pipeline's step topics only, never
// to the replay topic.
func TestStepsOutsideThePipelineAreDeadLettered(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	replays := e.Topics().Step("replays")
	if _, err := client(t, e).CreateTopics(context.Background(), &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: replays, NumPartitions: 1, ReplicationFactor: 1}}}); err != nil {
		t.Fatal(err)
	}
	r := startReader(t, e, func(c *cdc.Config) {
		c.Pipeline = schema.Pipeline{Steps: []string{"img_gen", "vlm_analyze", "caption"}}
	})
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES
		('in-dlq', 'dlq', 'done'), ('in-replays', 'replays', 'done'), ('upper', 'IMG_GEN', 'done'),
		('other', 'yolo_detect', 'done'), ('empty', '', 'done'), ('null', NULL, 'pending'),
		('ok', 'img_gen', 'done'), ('custom', 'caption', 'done')`)
	e.Exec(t, `DELETE FROM jobs WHERE job_id = 'ok'`) // REPLICA IDENTITY DEFAULT: to every step topic

	want := map[string]string{
		"in-dlq":     `current_step "dlq" is a reserved topic name`,
		"in-replays": `current_step "replays" is a reserved topic name`,
		"upper":      `current_step "IMG_GEN" is not a step of the pipeline (img_gen, vlm_analyze, caption)`,
		"other":      `current_step "yolo_detect" is not a step of the pipeline`,
		"empty":      "current_step is empty",
		"null":       "current_step is null",
	}
	got := deadLetterReasons(t, e, len(want))
	for key, reason := range want {
		if !strings.Contains(got[key], reason) {
			t.Errorf("dead letter of %s: %q, want it to say %q", key, got[key], reason)
		}
	}
	waitMessages(t, e, e.Topic("caption"), 1)
	waitMessages(t, e, e.Topic("img_gen"), 3) // c, d, tombstone of ok
	harness.Eventually(t, 20*time.Second, func() (bool, string) {
		u, d := r.Stats().Unroutable.Load(), r.Stats().DeadLetters.Load()
		return u == int64(len(want)) && d == u, fmt.Sprintf("unroutable %d, dead letters %d, want %d", u, d, len(want))
	})
	for _, step := range []string{"IMG_GEN", "yolo_detect", ""} {
		if n := partitionCount(t, e, e.Topic(step)); n != 0 {
			t.Errorf("topic %q was created for a step outside the pipeline", e.Topic(step))
		}
	}
	if n := topicCount(t, e, replays); n != 0 {
		t.Errorf("the replay topic took %d change events", n)
	}
}

// TestRenamedRoutingColumnIsSaidSo: an operator renames current_step, or
// job_id, under a running reader. Every change until it is renamed back is a
// dead letter whose reason names the missing column, not a null step or
// key; the stream goes on, and routes again once the column is back.
func TestRenamedRoutingColumnIsSaidSo(t *testing.T) {
	t.Parallel()
	e := harness.New(t)
	r := startReader(t, e, nil)
	e.Exec(t, `ALTER TABLE jobs RENAME COLUMN current_step TO stage`)
	e.Exec(t, `INSERT INTO jobs (job_id, stage, status) VALUES ('no-step-column', 'img_gen', 'done')`)
	e.Exec(t, `ALTER TABLE jobs RENAME COLUMN stage TO current_step`)
	e.Exec(t, `ALTER TABLE jobs RENAME COLUMN job_id TO id`)
	e.Exec(t, `INSERT INTO jobs (id, current_step, status) VALUES ('no-key-column', 'img_gen', 'done')`)
	e.Exec(t, `ALTER TABLE jobs RENAME COLUMN id TO job_id`)
	e.Exec(t, `INSERT INTO jobs (job_id, current_step, status) VALUES ('back', 'img_gen', 'done')`)

	waitOnlyEvent(t, e, e.Topic("img_gen"), "back")
	got := deadLetterReasons(t, e, 2)
	want := map[string]string{
		"no-step-column": "table public.jobs has no current_step column (renamed or dropped?), which jobstream needs to key and route its events",
		"":               "table public.jobs has no job_id column (renamed or dropped?), which jobstream needs to key and route its events",
	}
	for key, reason := range want {
		if got[key] != reason {
			t.Errorf("dead letter of %q: %q, want %q", key, got[key], reason)
		}
	}
	if u := r.Stats().Unroutable.Load(); u != 2 {
		t.Errorf("%d unroutable, want 2", u)
	}
}

// TestConfigRefusesReservedSteps: a pipeline naming a reserved topic as a
// step is refused with one sentence.
func TestConfigRefusesReservedSteps(t *testing.T) {
	t.Parallel()
	_, err := cdc.New(cdc.Config{DatabaseURL: "postgres://x", Brokers: []string{"x:1"},
		Pipeline: schema.Pipeline{Steps: []string{"img_gen", "dlq"}}})
	if err == nil || !strings.Contains(err.Error(), `step "dlq" is a reserved topic name`) {
		t.Fatalf("pipeline with a dlq step: %v", err)
	}
	_, err = cdc.New(cdc.Config{DatabaseURL: "postgres://x", Brokers: []string{"x:1"}, RecreateSlot: true, Snapshot: cdc.SnapshotNever})
	if err == nil || !strings.Contains(err.Error(), "RecreateSlot takes a fresh snapshot") {
		t.Fatalf("RecreateSlot with Snapshot never: %v", err)
	}
}
