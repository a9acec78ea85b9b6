package main

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Rows look like an image pipeline's: a prompt and generation parameters
// in payload (about 330 bytes of jsonb), and once img_gen is done, where the
// image went in results (about 200 bytes). The same shapes are built in SQL
// (for server-side bulk work) and in Go (for the paced scenarios).

// payloadSQL returns the payload of job i, as SQL over the integer expression i.
func payloadSQL(i string) string {
	return strings.ReplaceAll(`jsonb_build_object('prompt', 'a watercolor painting of a lighthouse at dusk, seen from the cliffs, variation ' || ($i),
		'negative_prompt', 'blurry, low quality, watermark, text', 'seed', ($i), 'width', 1024, 'height', 1024,
		'steps', 30, 'guidance', 7.5, 'sampler', 'dpmpp_2m_karras', 'model', 'sdxl-base-1.0', 'user', 'user-' || (($i) % 997),
		'tags', jsonb_build_array('bench', 'batch-' || (($i) / 1000), 'landscape'))`, "$i", i)
}

// resultsSQL returns the results of job i once img_gen is done.
func resultsSQL(i string) string {
	return strings.ReplaceAll(`jsonb_build_object('img_gen', jsonb_build_object('uri', 's3://jobstream-bench/images/' || ($i) || '.png',
		'sha256', md5(($i)::text) || md5((($i) + 1)::text), 'width', 1024, 'height', 1024, 'ms', 800 + ($i) % 400, 'gpu', 'gpu-' || (($i) % 4)))`, "$i", i)
}

// workloadSQL creates bench_workload(n, per_tx, prefix): n/2 inserted jobs
// at (img_gen, running) and n/2 updates of them to (img_gen, done) with
// results, interleaved (each update follows its insert by 50 jobs),
// committing every per_tx inserts, so transactions of about 2*per_tx
// changes. It runs inside the server: the client is not the bottleneck.
func workloadSQL() string {
	return `CREATE OR REPLACE PROCEDURE bench_workload(n int, per_tx int, prefix text) LANGUAGE plpgsql AS $$
DECLARE
	half int := n / 2;
	gap int := least(50, n / 2);
BEGIN
	FOR i IN 1 .. half + gap LOOP
		IF i <= half THEN
			INSERT INTO jobs (job_id, current_step, status, payload) VALUES (prefix || i, 'img_gen', 'running', ` + payloadSQL("i") + `);
		END IF;
		IF i > gap THEN
			UPDATE jobs SET status = 'done', results = ` + resultsSQL("i - gap") + `, updated_at = now() WHERE job_id = prefix || (i - gap);
		END IF;
		IF i % per_tx = 0 THEN
			COMMIT;
		END IF;
	END LOOP;
END $$`
}

// bulkInsertSQL inserts n jobs at (img_gen, done) in one statement (one transaction).
func bulkInsertSQL(n int, prefix string) string { return bulkInsertRangeSQL(1, n, prefix) }

// bulkInsertRangeSQL inserts jobs prefix+from … prefix+to at (img_gen, done) in one statement.
func bulkInsertRangeSQL(from, to int, prefix string) string {
	return fmt.Sprintf(`INSERT INTO jobs (job_id, current_step, status, payload, results)
		SELECT '%s' || i, 'img_gen', 'done', %s, %s FROM generate_series(%d, %d) AS i`, prefix, payloadSQL("i"), resultsSQL("i"), from, to)
}

// payloadJSON and resultsJSON are the Go twins of payloadSQL and resultsSQL.
func payloadJSON(i int) string {
	b, _ := json.Marshal(map[string]any{
		"prompt":          fmt.Sprintf("a watercolor painting of a lighthouse at dusk, seen from the cliffs, variation %d", i),
		"negative_prompt": "blurry, low quality, watermark, text", "seed": i, "width": 1024, "height": 1024,
		"steps": 30, "guidance": 7.5, "sampler": "dpmpp_2m_karras", "model": "sdxl-base-1.0", "user": fmt.Sprintf("user-%d", i%997),
		"tags": []string{"bench", fmt.Sprintf("batch-%d", i/1000), "landscape"},
	})
	return string(b)
}

func resultsJSON(i int) string {
	h1, h2 := md5.Sum([]byte(fmt.Sprint(i))), md5.Sum([]byte(fmt.Sprint(i+1)))
	b, _ := json.Marshal(map[string]any{"img_gen": map[string]any{
		"uri": fmt.Sprintf("s3://jobstream-bench/images/%d.png", i), "sha256": hex.EncodeToString(h1[:]) + hex.EncodeToString(h2[:]),
		"width": 1024, "height": 1024, "ms": 800 + i%400, "gpu": fmt.Sprintf("gpu-%d", i%4),
	}})
	return string(b)
}

// copyJobs inserts jobs ids[i] at (step, status) with payloads (and, when
// status is done, results), in one COPY.
func copyJobs(ctx context.Context, conn interface {
	CopyFrom(context.Context, pgx.Identifier, []string, pgx.CopyFromSource) (int64, error)
}, ids []string, step, status string) error {
	rows := make([][]any, len(ids))
	for i, id := range ids {
		results := "{}"
		if status == "done" {
			results = resultsJSON(i + 1)
		}
		rows[i] = []any{id, step, status, payloadJSON(i + 1), results}
	}
	_, err := conn.CopyFrom(ctx, pgx.Identifier{"jobs"}, []string{"job_id", "current_step", "status", "payload", "results"}, pgx.CopyFromRows(rows))
	if err != nil {
		return fmt.Errorf("insert jobs: %w", err)
	}
	return nil
}

// jobIDs returns n job ids prefix-000001 ...
func jobIDs(prefix string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%06d", prefix, i+1)
	}
	return ids
}
