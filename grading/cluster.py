"""Where the grading tasks run: a Dask distributed cluster (grading/classroom.py connects to it).

- default: a `LocalCluster` on this machine, one worker process per core, one thread each (each task
  starts its own nbgrader and kernel, so a thread per worker is what a core can carry);
- `--scheduler ADDRESS`: any running Dask scheduler (`dask scheduler` + `dask worker ADDRESS
  --nthreads 1` on each machine; every worker needs this repository and its virtualenv);
- `--jobqueue slurm|pbs`: dask-jobqueue submits batch jobs, each running `cores` single-threaded
  workers; `jobqueue_cluster` builds it from the site's dask-jobqueue configuration, `JOBQUEUE_DEFAULTS`
  where that leaves a value unset, and the caller's options (`--jobqueue-option queue=short`, account,
  walltime, memory, ...), with the course's virtualenv activated in the job script.

`connect` raises SchedulerError (one clear message) when the scheduler cannot be reached.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

COURSE_ROOT = Path(__file__).resolve().parent.parent


class SchedulerError(RuntimeError):
    """The Dask scheduler cannot be reached."""


# One job = one node's worth of single-threaded workers; each worker grades one submission at a time.
JOBQUEUE_DEFAULTS = {
    "cores": 16,
    "processes": 16,  # one worker process per core, one thread each
    "memory": "64GB",  # ~2-3 GB per grading kernel on the tiny models, with margin
    "walltime": "02:00:00",
    "local_directory": "$TMPDIR",
}


def jobqueue_cluster(kind: str, n_jobs: int = 1, **overrides):
    """A SLURMCluster or PBSCluster whose jobs run the course's single-threaded grading workers.

    The job script activates this repository's virtualenv and runs from the repository (the workers
    import grading/ and start the sandboxed kernel from it), and sets no GPU: grading is CPU-only.
    """
    from dask_jobqueue import PBSCluster, SLURMCluster

    classes = {"slurm": SLURMCluster, "pbs": PBSCluster}
    if kind not in classes:
        raise ValueError(f"--jobqueue takes slurm or pbs, not {kind!r}")
    import dask

    venv = Path(os.environ.get("VIRTUAL_ENV") or COURSE_ROOT / ".venv")
    # the course's defaults fill only what the site's dask-jobqueue config (jobqueue.yaml) leaves unset
    options = {k: v for k, v in JOBQUEUE_DEFAULTS.items()
               if k == "walltime" or dask.config.get(f"jobqueue.{kind}.{k.replace('_', '-')}", None) is None}
    options.update(overrides)
    options.setdefault("job_script_prologue", [f"cd {COURSE_ROOT}", f"source {venv / 'bin' / 'activate'}",
                                               "export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 CUDA_VISIBLE_DEVICES="])
    options.setdefault("python", str(venv / "bin" / "python"))
    options.setdefault("job_name", "persona-grading")
    cluster = classes[kind](**options)
    if n_jobs:
        cluster.scale(jobs=n_jobs)
    return cluster


def local_cluster(workers: int | None = None):
    from distributed import LocalCluster

    n = workers or os.cpu_count() or 1
    return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                        silence_logs=logging.ERROR)


def connect(scheduler: str | None = None, workers: int | None = None, jobqueue: str | None = None,
            jobs: int = 1, timeout: float = 15, jobqueue_options: dict | None = None):
    """(client, cluster or None): a Dask client on the chosen cluster; SchedulerError if unreachable."""
    from distributed import Client

    cluster = None
    try:
        if scheduler:
            client = Client(scheduler, timeout=timeout)
        else:
            cluster = jobqueue_cluster(jobqueue, jobs, **(jobqueue_options or {})) if jobqueue else local_cluster(workers)
            client = Client(cluster, timeout=timeout)
    except (OSError, TimeoutError) as err:
        if cluster is not None:
            cluster.close()
        raise SchedulerError(f"cannot reach the Dask scheduler {scheduler or ''}: {err}".replace("  ", " ")) from None
    return client, cluster
