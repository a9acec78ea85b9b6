package consumers

// The statements of the step protocol, the one place that writes jobs and
// jobstream_runs. jobid(x) stands for x cast to the type of jobs.job_id and
// gone(x) for why job x left (S, running) — the user cancelled it, or it
// moved or was deleted; prepareQueries expands both.

// A chain continues only when the job's row is the very version a
// sweeper's or release's rewind wrote (rewind_xid = xmin).
const sqlClaim = `WITH o AS (
				SELECT xmin::text::bigint AS x FROM jobs WHERE job_id = jobid($1)),
			p AS (
				SELECT chain, attempt, rewind_xid FROM jobstream_runs
				WHERE job_id = jobid($1)::text AND step = $2 ORDER BY chain DESC, attempt DESC LIMIT 1),
			j AS (
				UPDATE jobs SET current_step = $2, status = 'running', error = NULL, updated_at = now()
				WHERE job_id = jobid($1) AND current_step = $3 AND status = 'done'
				RETURNING job_id::text AS job_id, coalesce(payload, 'null'::jsonb)::text AS payload, coalesce(results, '{}'::jsonb)::text AS results),
			c AS (
				SELECT coalesce(p.rewind_xid = o.x, false) AS cont, p.chain, p.attempt FROM (SELECT 1) one
				LEFT JOIN p ON true LEFT JOIN o ON true),
			r AS (
				INSERT INTO jobstream_runs (job_id, step, chain, attempt, worker, trigger_lsn, trigger_commit_at, lease_expires_at)
				SELECT j.job_id, $2,
				       CASE WHEN c.cont THEN c.chain ELSE coalesce(c.chain, 0) + 1 END,
				       CASE WHEN c.cont THEN c.attempt + 1 ELSE 1 END,
				       $4, $5, to_timestamp($6::float8 / 1000), now() + make_interval(secs => $7)
				FROM j, c
				RETURNING run_id, chain, attempt)
			SELECT r.run_id, r.chain, r.attempt, j.job_id, j.payload, j.results FROM j, r`

const sqlComplete = `WITH r AS (
				SELECT run_id FROM jobstream_runs WHERE run_id = $1 AND finished_at IS NULL FOR UPDATE),
			j AS (
				UPDATE jobs SET status = 'done', updated_at = now(),
					results = coalesce(results, '{}'::jsonb) || jsonb_build_object($3::text, $4::jsonb)
				WHERE job_id = jobid($2) AND current_step = $3 AND status = 'running' AND EXISTS (SELECT FROM r)
				RETURNING job_id),
			o AS (
				SELECT CASE WHEN EXISTS (SELECT FROM j) THEN 'done' ELSE gone($2) END AS outcome),
			u AS (
				UPDATE jobstream_runs SET finished_at = now(), outcome = (SELECT outcome FROM o),
					error = CASE WHEN EXISTS (SELECT FROM j) THEN NULL ELSE 'job left (step, running) while the step ran' END
				WHERE run_id IN (SELECT run_id FROM r)
				RETURNING outcome)
			SELECT coalesce((SELECT outcome FROM u), 'fenced')`

// The job row is locked first: a cancel that lands meanwhile waits,
// and one that landed is seen.
const sqlRetry = `WITH still AS (
				SELECT FROM jobs WHERE job_id = jobid($5) AND current_step = $6 AND status = 'running' FOR UPDATE),
			c AS (
				UPDATE jobstream_runs SET finished_at = now(), error = $2,
					outcome = CASE WHEN EXISTS (SELECT FROM still) THEN 'failed' ELSE gone($5) END
				WHERE run_id = $1 AND finished_at IS NULL
				RETURNING job_id, step, chain, attempt, trigger_lsn, trigger_commit_at, outcome),
			n AS (
				INSERT INTO jobstream_runs (job_id, step, chain, attempt, worker, trigger_lsn, trigger_commit_at, lease_expires_at)
				SELECT job_id, step, chain, attempt + 1, $3, trigger_lsn, trigger_commit_at, now() + make_interval(secs => $4)
				FROM c WHERE outcome = 'failed'
				RETURNING run_id, attempt)
			SELECT coalesce((SELECT CASE WHEN outcome = 'failed' THEN 'retried' ELSE outcome END FROM c), 'fenced'),
				coalesce((SELECT run_id FROM n), 0), coalesce((SELECT attempt FROM n), 0)`

const sqlFail = `WITH still AS (
				SELECT FROM jobs WHERE job_id = jobid($2) AND current_step = $3 AND status = 'running' FOR UPDATE),
			c AS (
				UPDATE jobstream_runs SET finished_at = now(), error = $4,
					outcome = CASE WHEN EXISTS (SELECT FROM still) THEN 'failed' ELSE gone($2) END,
					dead_letter = CASE WHEN EXISTS (SELECT FROM still) THEN $5 END
				WHERE run_id = $1 AND finished_at IS NULL
				RETURNING outcome),
			j AS (
				UPDATE jobs SET status = 'failed', error = $4, updated_at = now()
				WHERE job_id = jobid($2) AND current_step = $3 AND status = 'running' AND EXISTS (SELECT FROM c WHERE outcome = 'failed'))
			SELECT coalesce((SELECT outcome FROM c), 'fenced')`

const sqlAbandon = `UPDATE jobstream_runs SET finished_at = now(), outcome = gone($2),
				error = 'job left (step, running) while the step ran; the step was stopped'
			WHERE run_id = $1 AND finished_at IS NULL
			RETURNING outcome`

const sqlRelease = `WITH c AS (
				UPDATE jobstream_runs SET finished_at = now(), outcome = 'released',
					error = $5,
					rewind_xid = pg_current_xact_id()::text::bigint % 4294967296
				WHERE run_id = $1 AND finished_at IS NULL
				RETURNING run_id)
			UPDATE jobs SET current_step = $4, status = 'done', updated_at = now()
			WHERE job_id = jobid($2) AND current_step = $3 AND status = 'running' AND EXISTS (SELECT FROM c)`

// $5: the runs this process holds and renews: never expired here,
// whatever their lease says after an outage. A Postgres restart
// gives every live worker a full lease to renew before any run
// expires.
const sqlSweep = `WITH expired AS (
				UPDATE jobstream_runs r SET finished_at = now(), outcome = 'expired',
					error = 'lease expired: worker ' || worker || ' stopped renewing it',
					rewind_xid = pg_current_xact_id()::text::bigint % 4294967296,
					dead_letter = CASE WHEN attempt >= $3 AND EXISTS (SELECT FROM jobs
						WHERE job_id = jobid(r.job_id) AND current_step = $1 AND status = 'running') THEN $4 END
				WHERE step = $1 AND finished_at IS NULL AND lease_expires_at < now()
					AND NOT (run_id = ANY($5::bigint[]))
					AND pg_postmaster_start_time() < now() - make_interval(secs => $6)
				RETURNING run_id, job_id, attempt, worker, coalesce(trigger_lsn, '') AS trigger_lsn),
			moved AS (
				UPDATE jobs j SET
					current_step = CASE WHEN e.attempt >= $3 THEN j.current_step ELSE $2 END,
					status = CASE WHEN e.attempt >= $3 THEN 'failed' ELSE 'done' END,
					error = CASE WHEN e.attempt >= $3 THEN 'lease expired on attempt ' || e.attempt || ' of ' || $3 ELSE j.error END,
					updated_at = now()
				FROM expired e WHERE j.job_id = jobid(e.job_id) AND j.current_step = $1 AND j.status = 'running'
				RETURNING j.job_id::text AS job_id, j.status, coalesce(j.error, '') AS error)
			SELECT e.run_id, e.job_id, e.attempt, e.worker, e.trigger_lsn, coalesce(m.status, ''), coalesce(m.error, '')
			FROM expired e LEFT JOIN moved m USING (job_id)`

// The runs in hand whose job is no longer at (S, running) (the user
// cancelled, moved or deleted it), or that someone else closed.
const sqlWatch = `SELECT r.run_id, r.finished_at IS NOT NULL, coalesce(j.status, '')
			FROM jobstream_runs r LEFT JOIN jobs j ON j.job_id = jobid(r.job_id)
			WHERE r.run_id = ANY($1::bigint[])
				AND (r.finished_at IS NOT NULL OR j.job_id IS NULL OR j.current_step IS DISTINCT FROM $2 OR j.status IS DISTINCT FROM 'running')`

const sqlCancel = `WITH b AS (
				SELECT current_step, status FROM jobs WHERE job_id = jobid($1) FOR UPDATE),
			u AS (
				UPDATE jobs SET status = 'cancelled', updated_at = now()
				WHERE job_id = jobid($1) AND status IN ('pending', 'running', 'done', 'failed')
				RETURNING job_id)
			SELECT coalesce(b.current_step, ''), coalesce(b.status, ''), EXISTS (SELECT FROM u) FROM b`

const sqlState = `SELECT coalesce(current_step, ''), coalesce(status, '') FROM jobs WHERE job_id = jobid($1)`

const sqlRewind = `WITH j AS (
				UPDATE jobs SET current_step = $2, status = 'done', error = NULL, updated_at = now()
				WHERE job_id = jobid($1) AND current_step = $3 AND status = $4
				RETURNING job_id::text AS job_id),
			r AS (
				UPDATE jobstream_runs SET finished_at = now(), outcome = 'replayed', error = 'fenced by jobstream replay'
				WHERE job_id IN (SELECT job_id FROM j) AND finished_at IS NULL)
			SELECT EXISTS (SELECT FROM j)`
