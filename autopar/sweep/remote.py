"""The `--ray` backend: a study's points as Ray tasks, on an existing cluster (an address)
or on a local Ray instance started for the sweep (no address). Each task is the same
`solve_point` the worker processes run (single-threaded, seed 0), so the rows are the same;
results come back as they finish and are written by the caller, as for the processes.
Ray is the optional `ray` extra, imported only here and only when asked for."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

from ..errors import InputError
from .run import solve_point
from .study import Point

LOCAL = ""  # `--ray` without an address: a local instance for this sweep


def require_ray() -> None:
    """Say before any work that --ray needs the extra."""
    if importlib.util.find_spec("ray") is None:
        raise InputError("--ray", "", "needs ray, which is not installed: "
                         "pip install 'autopar[ray]'")


def ray_results(points: list[Point], address: str = LOCAL, workers: int = 1
                ) -> Iterator[tuple[dict, dict | None]]:
    """(row, plan) of each point as its task finishes. A local instance gets `workers`
    CPUs (one solve each) and is shut down at the end; a cluster's is left running."""
    require_ray()
    import ray

    started = not ray.is_initialized()
    if started:
        kw = {"address": address} if address else {"num_cpus": max(workers, 1)}
        ray.init(include_dashboard=False, log_to_driver=False, **kw)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(solve_point)
        pending = [task.remote(p) for p in points]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started:
            ray.shutdown()


__all__ = ["ray_results", "require_ray", "LOCAL"]
