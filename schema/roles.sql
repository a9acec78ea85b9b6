-- Least-privilege roles for jobstream. Run as a superuser after
-- `jobstream migrate`, then set the passwords:
--   ALTER ROLE jobstream_reader PASSWORD '...';
--   ALTER ROLE jobstream_worker PASSWORD '...';
-- The reader streams the WAL: it needs REPLICATION (to create and read its
-- slot) and SELECT on jobs (for the initial snapshot), nothing else.
-- The worker claims and completes jobs: it reads and updates jobs and
-- records its attempts in jobstream_runs (and prunes old ones, --runs-retention);
-- it cannot insert or delete jobs.
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jobstream_reader') THEN
    CREATE ROLE jobstream_reader LOGIN REPLICATION;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jobstream_worker') THEN
    CREATE ROLE jobstream_worker LOGIN;
  END IF;
END $$;

GRANT SELECT ON jobs TO jobstream_reader;
-- The reader records in jobstream_slots that a slot's initial snapshot completed.
GRANT SELECT, INSERT, UPDATE ON jobstream_slots TO jobstream_reader;

GRANT SELECT, UPDATE (current_step, status, results, error, updated_at) ON jobs TO jobstream_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON jobstream_runs TO jobstream_worker;
GRANT USAGE ON SEQUENCE jobstream_runs_run_id_seq TO jobstream_worker;
