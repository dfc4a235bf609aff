"""Independent jobs side by side in worker processes: on a few CPU cores, two one-thread processes train a tiny
model about twice as fast as one process on both cores (BENCHMARKS.md)."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def _init_worker(threads: int) -> None:
    import torch  # here, so that a worker imports only what its jobs need

    torch.set_num_threads(threads)


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

    def run(self, jobs: list[tuple[Callable[..., Any], tuple]]) -> list[Any]:
        if self.workers <= 1 or len(jobs) <= 1:
            return [function(*args) for function, args in jobs]
        if self._pool is None:
            threads = max(1, (os.cpu_count() or 1) // self.workers)
            previous = os.environ.get("TQDM_DISABLE")
            os.environ["TQDM_DISABLE"] = "1"  # inherited by the spawned workers before they import tqdm
            try:
                self._pool = ProcessPoolExecutor(
                    self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_worker,
                    initargs=(threads,),
                )
                self._pool.submit(int).result()  # start the workers while the environment is set
            finally:
                if previous is None:
                    os.environ.pop("TQDM_DISABLE", None)
                else:
                    os.environ["TQDM_DISABLE"] = previous
        futures = [self._pool.submit(function, *args) for function, args in jobs]
        return [future.result() for future in futures]
