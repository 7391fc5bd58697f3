"""The `--ray` backend: a study's points as Ray tasks, on an existing cluster (an address)
or on a local Ray instance started for the sweep (no address). Each task is the same
`run.solve_point` the worker processes run (single-threaded, seed 0), so the rows are the same;
results come back as they finish and are written by the caller, as for the processes.
Ray is the optional `ray` extra, imported only here and only when asked for."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator

from ..errors import InputError
from .study import Point

LOCAL = ""  # `--ray` without an address: a local instance for this sweep


def require_ray() -> None:
    """Say before any work that --ray needs the extra."""
    if importlib.util.find_spec("ray") is None:
        raise InputError("--ray", "", "needs ray, which is not installed: "
                         "pip install 'autopar[ray]'")


def ray_results(points: list[Point], solve: Callable[[Point], tuple[dict, dict | None]],
                address: str = LOCAL, workers: int = 1) -> Iterator[tuple[dict, dict | None]]:
    """`solve(point)` (the sweep's `solve_point`) of each point as a Ray task, yielded as
    each finishes. A local instance gets `workers` CPUs (one solve each) and is shut down
    at the end; a cluster's is left running."""
    require_ray()
    import ray

    started = not ray.is_initialized()
    if started:
        kw = {"address": address} if address else {"num_cpus": max(workers, 1)}
        ray.init(include_dashboard=False, log_to_driver=False, **kw)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(solve)
        pending = [task.remote(p) for p in points]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started:
            ray.shutdown()


__all__ = ["ray_results", "require_ray", "LOCAL"]
