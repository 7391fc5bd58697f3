"""Solve a study's points, in worker processes, writing each finished point at once.

`DIR/points.jsonl` gets one JSON line per finished point (flushed and synced before the next),
its plan `DIR/plans/<key>.json` (written whole, then renamed), so a killed sweep loses only
the points in flight and `resume` skips every point whose key is already there. Each solve
is single-threaded with seed 0, so a row does not depend on the worker count.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AutoparError, InfeasibleError, InputError
from .study import Point, Study

ROW_KEYS = ("index", "key", "status", "num_gpus", "gpu", "layout", "step_time_s",
            "throughput_tokens_per_s", "tokens_per_s_per_gpu", "memory_max_over_capacity", "mfu",
            "solve_s", "reason")
# a serving plan's figures too (only where a row has them: training tables keep their columns)
SERVING_KEYS = ("requests_per_s", "output_tokens_per_s", "ttft_s", "tpot_s", "concurrency",
                "cut_short")  # cut_short: the time limit ended the search (best found)


@dataclass
class Progress:
    """What the progress line shows: points done of total, failures, the best so far."""

    total: int
    done: int = 0
    failed: int = 0  # refused inputs or errors (an infeasible point is an answer, not one)
    infeasible: int = 0
    best: float | None = None  # most tokens/s per GPU among the solved points
    started: float = field(default_factory=time.monotonic)
    resumed: int = 0  # points done before this run

    def left_s(self) -> float | None:
        """Time left at this run's pace (None before its first point)."""
        ran = self.done - self.resumed
        if ran <= 0:
            return None
        return (time.monotonic() - self.started) / ran * (self.total - self.done)


def solve_point(pt: Point) -> tuple[dict[str, Any], dict | None]:
    """(row, plan) of one point; an infeasible or refused point is a row with its reason."""
    from ..api import solve
    from ..spec.files import parse_hardware, parse_model, parse_workload

    row: dict[str, Any] = {"index": pt.index, "key": pt.key, **pt.overrides}
    t0 = time.perf_counter()
    try:
        mf = parse_model(pt.model, pt.sources.get("model", "model"))
        hw = parse_hardware(pt.hardware, pt.sources.get("hardware", "hardware"))
        wl = parse_workload(pt.workload, "workload") if pt.workload is not None else None
        plan = solve(mf, hw, wl, pins=pt.pins, time_limit_s=pt.time_limit_s, seed=0,
                     workers=1, framework=pt.framework).data
    except InfeasibleError as exc:
        row.update(status="infeasible", reason=str(exc).splitlines()[0])
        return _finish(row, t0), None
    except (AutoparError, ValueError) as exc:  # a refused point (InputError among them)
        row.update(status="error", reason=str(exc).splitlines()[0])
        return _finish(row, t0), None
    row.update(_figures(plan), status="solved")
    return _finish(row, t0), plan


def _finish(row: dict, t0: float) -> dict:
    row["solve_s"] = round(time.perf_counter() - t0, 3)
    return row


def _figures(plan: dict) -> dict[str, Any]:
    """The row's figures, from the plan's metrics (what the plan states, nothing recomputed)."""
    mt, s = plan.get("metrics", {}), plan.get("strategy", {})
    hw = plan.get("inputs", {}).get("hardware", {})
    n = hw.get("num_gpus") or s.get("num_gpus")
    tok = mt.get("throughput_tokens_per_s")
    layout = " ".join(f"{k}={s[k]}" for k in ("tp", "pp", "dp", "ep", "etp", "cp")
                      if k in s and s[k] != 1)
    serving = plan.get("serving", {}).get("point")
    extra = {k: serving.get(k) for k in ("requests_per_s", "ttft_s", "tpot_s", "concurrency")
             } if serving else {}
    if serving:  # whole requests: the output tokens users get (Little's law, docs/serving.md)
        extra["output_tokens_per_s"] = serving.get("tokens_per_s")
    if plan.get("solver", {}).get("time_limit_reached"):
        extra["cut_short"] = True
    return {**extra, "num_gpus": n, "gpu": hw.get("gpu", {}).get("name"),
            "layout": layout or "single GPU", "step_time_s": mt.get("step_time_s"),
            "throughput_tokens_per_s": tok,
            "tokens_per_s_per_gpu": mt.get("tokens_per_s_per_gpu") or (tok / n if tok and n
                                                                        else None),
            "memory_max_over_capacity": mt.get("memory_max_over_capacity"),
            "mfu": mt.get("mfu")}


def done_keys(out: Path) -> set[str]:
    """Keys of the points already written (a line cut short by a kill is not done)."""
    path = out / "points.jsonl"
    keys: set[str] = set()
    if not path.is_file():
        return keys
    for line in path.read_text().splitlines():
        try:
            keys.add(json.loads(line)["key"])
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return keys


def _write_plan(out: Path, key: str, plan: dict) -> None:
    d = out / "plans"
    d.mkdir(exist_ok=True)
    tmp = d / f".{key}.json.tmp"
    tmp.write_text(json.dumps(plan, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, d / f"{key}.json")


def _append(fh, row: dict) -> None:
    fh.write(json.dumps(row, sort_keys=True) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def run_study(study: Study, out: Path, workers: int = 1, resume: bool = False,
              on_point: Callable[[Progress, dict], None] | None = None,
              ray: str | None = None) -> list[dict]:
    """Solve the points not yet in `out` and return every point's row, in study order:
    in `workers` processes, or as Ray tasks with `ray` (a cluster address; "" starts a
    local instance of `workers` CPUs)."""
    if ray is not None:
        from .remote import require_ray

        require_ray()
    out.mkdir(parents=True, exist_ok=True)
    have = done_keys(out)
    if have and not resume:
        raise InputError(str(out), "points.jsonl", "this folder holds a sweep already; pass "
                         "--resume to finish it or choose another --out")
    todo = [p for p in study.points if p.key not in have]
    prog = Progress(len(study.points), len(study.points) - len(todo))
    prog.resumed = prog.done
    with open(out / "points.jsonl", "a") as fh:
        if ray is not None:
            from .remote import ray_results

            for row, plan in ray_results(todo, solve_point, ray, workers):
                _record(out, fh, row, plan, prog, on_point)
        elif workers <= 1:
            results = (solve_point(p) for p in todo)
            for row, plan in results:
                _record(out, fh, row, plan, prog, on_point)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(solve_point, p) for p in todo]
                for fut in as_completed(futures):
                    _record(out, fh, *fut.result(), prog, on_point)
    return read_rows(out, study)


def _record(out: Path, fh, row: dict, plan: dict | None, prog: Progress,
            on_point: Callable[[Progress, dict], None] | None) -> None:
    if plan is not None:
        _write_plan(out, row["key"], plan)  # the plan first: a row always has its file
    _append(fh, row)
    prog.done += 1
    prog.failed += row["status"] == "error"
    prog.infeasible += row["status"] == "infeasible"
    per_gpu = row.get("tokens_per_s_per_gpu")
    if per_gpu and (prog.best is None or per_gpu > prog.best):
        prog.best = per_gpu
    if on_point:
        on_point(prog, row)


def read_rows(out: Path, study: Study) -> list[dict]:
    """Every point's row from `out/points.jsonl`, one per key, in study order."""
    rows: dict[str, dict] = {}
    for line in (out / "points.jsonl").read_text().splitlines():
        try:
            r = json.loads(line)
            rows.setdefault(r["key"], r)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return [rows[p.key] for p in study.points if p.key in rows]
