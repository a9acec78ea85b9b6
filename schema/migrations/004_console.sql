-- The console lists jobs by step and status, a page at a time in job_id order
-- (keyset pagination): this index answers each page of a table of millions from
-- an index range scan.
CREATE INDEX IF NOT EXISTS jobs_current_step_status ON jobs (current_step, status, job_id);
