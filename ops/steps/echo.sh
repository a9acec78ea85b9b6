#!/bin/sh
# An example step command, run from the repository root with
#   bin/jobstream worker --step S -- ops/steps/echo.sh
# A step reads the job as JSON on stdin ({"job_id", "step", "attempt",
# "payload", "results"}) and prints its result as JSON on stdout; jobstream
# stores it in the job's results under the step's name. Stdout is for that
# JSON alone: logs go to stderr. Exit 0: done; exit 65: permanent failure;
# any other exit: retried.
job=$(cat)
[ -n "$job" ] || { echo "no job on stdin" >&2; exit 1; }
echo "echo.sh: $JOBSTREAM_STEP of job $JOBSTREAM_JOB_ID, attempt $JOBSTREAM_ATTEMPT" >&2
printf '{"step":"%s","job_id":"%s","attempt":%s,"gpu":"%s"}\n' \
  "$JOBSTREAM_STEP" "$JOBSTREAM_JOB_ID" "$JOBSTREAM_ATTEMPT" "${CUDA_VISIBLE_DEVICES:-}"
