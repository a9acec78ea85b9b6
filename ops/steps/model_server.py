#!/usr/bin/env python3
"""A serve-mode step: one long-lived process that loads its model once.

Run from the repository root with
    bin/jobstream worker --step vlm_analyze --serve -- python3 ops/steps/model_server.py
    (without --serve it runs as an exec step: the model loaded for every job)
    bin/jobstream worker --step vlm_analyze --serve --batch 8 --gpus 0,1 -- python3 ops/steps/model_server.py

The protocol (JSON lines; standard library only):
  1. Load the model, then print {"ready": true} on stdout.
  2. Read stdin: each line is one job object ({"job_id", "step", "attempt",
     "payload", "results", "gpu"}), or with --batch a JSON array of them,
     or {"cancel": "<job_id>"} for a job that ended early (cancelled, timed
     out): stop it if you can; a job not answered 2 s after its cancel gets
     this process restarted.
  3. Answer every job with one line on stdout, in any order:
       {"job_id": "...", "result": <any JSON>}
       {"job_id": "...", "error": "why", "permanent": false}
     (permanent: true fails the job at once; false is retried).
  4. stdout is for the protocol alone: logs go to stderr, where the worker
     picks them up with the job ids in flight.

This example's "model" only sleeps, so that it can stand in for a GPU model
in tests and benchmarks: MODEL_LOAD_SECONDS (default 2) to load,
MODEL_CALL_MS (5) per call and MODEL_JOB_MS (1) per job of a batch. A job
whose payload holds {"fail": "permanent"} or {"fail": "retry"} fails that
way, {"sleep": S} takes S more seconds, and {"exit": true} makes the whole
process exit (a crash).
"""

import json
import os
import queue
import sys
import threading
import time


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def answer(obj):
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def env_float(name, default):
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return float(default)


def load_model():
    seconds = env_float("MODEL_LOAD_SECONDS", 2)
    log(f"loading the model on GPU {os.environ.get('CUDA_VISIBLE_DEVICES', '-')} ({seconds}s)")
    time.sleep(seconds)
    return {"name": "demo-detector", "gpu": os.environ.get("CUDA_VISIBLE_DEVICES", "")}


def infer(model, jobs, cancelled):
    """Runs one call over a batch of jobs; returns one answer per job."""
    time.sleep(env_float("MODEL_CALL_MS", 5) / 1000 + len(jobs) * env_float("MODEL_JOB_MS", 1) / 1000)
    out = []
    for job in jobs:
        jid = job["job_id"]
        payload = job.get("payload") or {}
        if not isinstance(payload, dict):
            payload = {}
        if payload.get("exit"):
            log(f"job {jid} asked this process to exit")
            os._exit(3)
        if payload.get("sleep"):
            deadline = time.time() + float(payload["sleep"])
            while time.time() < deadline and jid not in cancelled:
                time.sleep(0.02)
        if jid in cancelled:
            cancelled.discard(jid)
            out.append({"job_id": jid, "error": "cancelled", "permanent": True})
        elif payload.get("fail") == "permanent":
            out.append({"job_id": jid, "error": "the model refused this input", "permanent": True})
        elif payload.get("fail") == "retry":
            out.append({"job_id": jid, "error": "transient model error", "permanent": False})
        else:
            out.append({"job_id": jid, "result": {
                "model": model["name"], "gpu": model["gpu"], "job_gpu": job.get("gpu", ""), "pid": os.getpid(),
                "batch_size": len(jobs), "attempt": job.get("attempt"),
                "labels": ["person", "bicycle"],
            }})
    return out


def read_stdin(work, cancelled):
    """Reads stdin on its own thread, so a cancel arrives while a job runs."""
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        msg = json.loads(line)
        if isinstance(msg, dict) and "cancel" in msg:
            cancelled.add(msg["cancel"])
            log(f"told to stop job {msg['cancel']}")
            continue
        jobs = msg if isinstance(msg, list) else [msg]
        for job in jobs:  # a new attempt of a job told to stop before
            cancelled.discard(job["job_id"])
        work.put(jobs)
    work.put(None)  # stdin closed: the worker is stopping


def exec_once():
    """Exec mode (no --serve): one job on stdin, one result on stdout, and
    the model loaded for that one job: what --serve saves."""
    job = json.loads(sys.stdin.read())
    model = load_model()
    a = infer(model, [job], set())[0]
    if "error" in a:
        log(a["error"])
        sys.exit(65 if a.get("permanent") else 1)
    print(json.dumps(a["result"]))


def main():
    if os.environ.get("JOBSTREAM_JOB_ID"):  # set by exec mode only
        exec_once()
        return
    model = load_model()
    work, cancelled = queue.Queue(), set()
    threading.Thread(target=read_stdin, args=(work, cancelled), daemon=True).start()
    answer({"ready": True})
    while True:
        jobs = work.get()
        if jobs is None:
            log("stdin closed; exiting")
            return
        log(f"running {len(jobs)} job(s): {', '.join(j['job_id'] for j in jobs)}")
        for a in infer(model, jobs, cancelled):
            answer(a)


if __name__ == "__main__":
    main()
