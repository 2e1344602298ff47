"""Running the planned jobs: N subprocesses at once, teachers first, finished work skipped."""
from __future__ import annotations

import concurrent.futures
import datetime
import json
import math
import os
import shlex
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence

from .jobs import Job
from .specs import ROOT

def launcher_argv(launcher: str) -> list[str]:
  """The launcher as argv; a bare `python` means this interpreter (the same environment)."""
  argv = shlex.split(launcher)
  if argv and argv[0] in ("python", "python3"):
    argv[0] = sys.executable
  return argv


def command(job: Job, launcher: str) -> str:
  """The job as one shell line (run from the repository root)."""
  return " ".join([launcher, *(shlex.quote(a) for a in job.args)])


def read_results(workdir: str) -> Optional[dict]:
  """The run's results.json, or None if the run has not finished."""
  path = os.path.join(workdir, "results.json")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def job_state(job: Job) -> str:
  """'finished', 'pending', or 'stale' (a finished run of another length is in the workdir)."""
  results = read_results(job.workdir)
  if results is None:
    return "pending"
  return "finished" if results.get("epochs") == job.epochs else "stale"


class RunLog:
  """Appends timestamped lines to WORKDIR/reproduce.log and echoes them."""

  def __init__(self, path: str, echo: bool = True):
    self.path, self.echo = path, echo
    self._lock = threading.Lock()
    os.makedirs(os.path.dirname(path), exist_ok=True)

  def __call__(self, message: str) -> None:
    line = f"{datetime.datetime.now().isoformat(timespec='seconds')} {message}"
    with self._lock:
      with open(self.path, "a") as f:
        f.write(line + "\n")
      if self.echo:
        print(line, flush=True)


def job_env(parallel: int, environ: dict[str, str]) -> dict[str, str]:
  """The jobs' environment: with several jobs at once, each gets its share of an accelerator's memory.

  JAX preallocates 75% of a GPU per process by default, so a second concurrent job on the
  same GPU would run out of memory; a memory setting the user made is left alone.
  """
  env = dict(environ)
  user_set = any(k in env for k in ("XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE",
                                    "XLA_PYTHON_CLIENT_ALLOCATOR"))
  if parallel > 1 and not user_set:
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{math.floor(90 / parallel) / 100:.2f}"
  return env


def _run_one(job: Job, launcher: str, root: str, log: RunLog, env: dict[str, str]) -> str:
  """Runs one job to completion with its output in logs/<name>.log; returns 'ran' or 'failed'."""
  log_path = os.path.join(root, "logs", job.name + ".log")
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  log(f"start {job.name}: {command(job, launcher)}")
  t0 = time.time()
  with open(log_path, "a") as out:
    rc = subprocess.run([*launcher_argv(launcher), *job.args], cwd=ROOT, stdout=out,
                        stderr=subprocess.STDOUT, env=env, check=False).returncode
  dt = time.time() - t0
  if rc == 0 and job_state(job) == "finished":
    log(f"done {job.name} in {dt:.1f} s")
    return "ran"
  log(f"FAILED {job.name} (exit code {rc}, {dt:.1f} s); see {log_path}")
  return "failed"


def job_state_of_workdir(workdir: str, jobs: Sequence[Job]) -> str:
  """The state of the job that owns `workdir` (a teacher), or 'pending' if none does."""
  owner = next((j for j in jobs if j.workdir == workdir), None)
  return job_state(owner) if owner else "pending"


def run_jobs(jobs: Sequence[Job], launcher: str, parallel: int, root: str, log: RunLog) -> dict[str, str]:
  """Runs the teachers, then the students, `parallel` at a time; job name -> ran|skipped|failed|blocked|stale."""
  status: dict[str, str] = {}
  env = job_env(parallel, dict(os.environ))
  for kind in ("teacher", "student"):
    todo = []
    for job in (j for j in jobs if j.kind == kind):
      state = job_state(job)
      if state == "finished":
        log(f"skip {job.name}: finished (results.json)")
        status[job.name] = "skipped"
      elif state == "stale":
        log(f"REFUSED {job.name}: its results.json is a {read_results(job.workdir).get('epochs')}-epoch "
            f"run, this table asks for {job.epochs}; use another --workdir")
        status[job.name] = "stale"
      elif job.needs and job_state_of_workdir(job.needs, jobs) != "finished":
        log(f"blocked {job.name}: its teacher {os.path.relpath(job.needs, root)} has no finished run")
        status[job.name] = "blocked"
      else:
        todo.append(job)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
      for job, result in zip(todo, pool.map(lambda j: _run_one(j, launcher, root, log, env), todo)):
        status[job.name] = result
  return status


