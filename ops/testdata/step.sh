#!/bin/sh
# A step for the end-to-end tests: reads the job JSON on stdin and prints a
# result naming the step and attempt, as a real step would print its output.
job=$(cat)
[ -n "$job" ] || { echo "no job on stdin" >&2; exit 1; }
printf '{"by":"%s","job":"%s","attempt":%s}\n' "$JOBSTREAM_STEP" "$JOBSTREAM_JOB_ID" "$JOBSTREAM_ATTEMPT"
