"""Independent jobs side by side in worker processes: on 2 CPU cores, two one-thread processes train the tiny model
at 2.6x the aggregate throughput of one process on both cores (BENCHMARKS.md, "Fine-tuning throughput")."""

from __future__ import annotations

import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any


def available_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (containers often show every
    host core in ``os.cpu_count()`` while allowing two)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def _init_worker(threads: int) -> None:
    os.environ["TQDM_DISABLE"] = "1"  # before any job imports tqdm: bars from several processes would interleave
    _exit_with_parent(os.getppid())
    import torch  # here, so that a worker imports only what its jobs need

    torch.set_num_threads(threads)


def _exit_with_parent(parent: int, every: float = 1.0) -> None:
    """A thread that ends this worker once its parent is gone (this process handed to another parent): a pipeline
    killed outright (SIGKILL, or SIGTERM, which runs no cleanup) would otherwise leave its workers training on,
    holding the cores and writing to the cache."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class Jobs:
    """Runs independent ``(function, args)`` jobs: in order, or with ``workers > 1`` side by side in spawned worker
    processes kept for the whole pipeline (each imports torch once).

    Each worker gets an equal share of the cores as torch threads, and no per-step progress bars (they would
    interleave); the jobs' one-line summaries still print. Results come back in job order; the first failure is
    raised.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Jobs:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def run(self, jobs: list[tuple[Callable[..., Any], tuple]], first: Sequence[int] = ()) -> list[Any]:
        """The jobs' results, in job order. With several workers, the jobs listed in ``first`` (indices) are
        started before the others: a long job started last would run alone at the end while the other workers
        idle."""
        if self.workers <= 1 or len(jobs) <= 1:
            return [function(*args) for function, args in jobs]
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(max(1, available_cpus() // self.workers),),
            )
        order = [
            *dict.fromkeys(i for i in first if 0 <= i < len(jobs)),
            *(i for i in range(len(jobs)) if i not in first),
        ]
        futures = {i: self._pool.submit(jobs[i][0], *jobs[i][1]) for i in order}
        return [futures[i].result() for i in range(len(jobs))]
