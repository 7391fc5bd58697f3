"""`autopar recommend`: the fewest whole nodes of each GPU type whose plan meets a target
(training tokens/s or tokens/day; serving requests/s or output tokens/s under TTFT / TPOT
limits), the layout chosen there, and the GPU types ranked (docs/studies.md).

Each size is one `autopar.solve` of the base hardware with that many nodes (a sweep point,
so its row is a sweep row). The search doubles the node count from one until a size meets
the target, then bisects between the last size that failed and the first that met it. It
assumes that meeting the target is monotone in the node count (a larger cluster can run
any layout a smaller one can, DP wider); the answer's lower neighbour is always one of the
sizes solved, and failed, so the report shows that one node fewer does not meet it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..spec.datafile import read_data
from ..spec.frameworks import load_framework
from ..spec.hardware import default_nodes, gpu_catalogue
from .cost import cost_key, with_costs
from .run import solve_point
from .study import Point
from .target import Target, parse_gpus, parse_prices, parse_target

MAX_NODES = 100_000  # the hardware reader's limit


@dataclass
class TypeAnswer:
    """One GPU type's answer: the fewest nodes that meet the target, or the best reached."""

    gpu: str
    gpus_per_node: int
    nodes: int | None  # None: no size up to max_nodes meets the target
    tried: dict[int, dict[str, Any]] = field(default_factory=dict)  # node count -> row
    plan: dict | None = None  # the plan at `nodes`
    also: dict[int, dict[str, Any]] = field(default_factory=dict)  # the sizes other types
    # solved and this one's search did not, for a cost table over the same sizes

    @property
    def row(self) -> dict | None:
        return self.tried.get(self.nodes) if self.nodes else None

    @property
    def below(self) -> dict | None:
        """The row one node fewer (it fails the target; None at one node)."""
        return self.tried.get(self.nodes - 1) if self.nodes else None

    @property
    def num_gpus(self) -> int | None:
        return self.nodes * self.gpus_per_node if self.nodes else None

    def best(self, target: Target) -> dict | None:
        """The row with the most of the target's figure (what a target not met reached)."""
        ok = [r for r in self.tried.values() if target.figure(r) is not None]
        return max(ok, key=lambda r: (target.figure(r), -r["num_gpus"]), default=None)

    def why(self, target: Target, max_nodes: int) -> str:
        """Why no size met the target: the most any reached, or the largest size's reason."""
        b = self.best(target)
        if b is None:
            last = self.tried[max(self.tried)]
            return (f"no plan up to {max_nodes} nodes: {last.get('reason') or last['status']}")
        unit = "requests/s" if target.metric == "requests_per_s" else "tokens/s"
        return (f"the most reached up to {max_nodes} nodes is {target.figure(b):,.6g} {unit} "
                f"on {b['num_gpus']} GPUs ({b['layout']}); the target is {target.value:,.6g}")


@dataclass
class Recommendation:
    """Every GPU type's answer, ranked: `ranked[0]` is the recommendation, `ranked[1]` the
    runner-up (fewest GPUs, ties to the higher throughput; with a price for every type, the
    lowest cost per hour of the whole deployment, ties to fewer GPUs)."""

    target: Target
    answers: list[TypeAnswer]
    max_nodes: int
    prices: dict[str, float]
    ranked: list[TypeAnswer]
    rows: list[dict[str, Any]]  # every size solved, with its cost and frontier mark

    serving: bool = False  # the sizes are serving plans (the tokens are output tokens)
    hardware: str = ""  # the hardware file, or the default nodes' name

    @property
    def met(self) -> bool:
        return bool(self.ranked)


def fewest_nodes(evaluate: Callable[[int], dict], target: Target, max_nodes: int
                 ) -> tuple[int | None, dict[int, dict]]:
    """The fewest nodes whose row meets `target` (None: none up to `max_nodes`), and every
    row solved on the way: 1, 2, 4, ... until one meets, then bisection between the last
    that failed and the first that met (the answer's lower neighbour is always solved)."""
    tried: dict[int, dict] = {}

    def meets(n: int) -> bool:
        if n not in tried:
            tried[n] = evaluate(n)
        return target.met(tried[n])

    lo, hi, n = 0, None, 1  # lo: the largest size known to fail (0: none)
    while True:
        if meets(n):
            hi = n
            break
        lo = n
        if n >= max_nodes:
            return None, tried
        n = min(2 * n, max_nodes)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if meets(mid):
            hi = mid
        else:
            lo = mid
    return hi, tried


def base_gpu(hw: dict[str, Any]) -> str:
    """The hardware file's GPU: its catalogue type, or the name of one stated field by field."""
    g = hw.get("gpu") if isinstance(hw.get("gpu"), dict) else {}
    return str(g.get("type") or g.get("name") or "custom")


def hardware_for(base: dict[str, Any], gpu: str | None, nodes: int) -> dict[str, Any]:
    """The base hardware with `nodes` nodes of `gpu` (None: the base's own GPU): its GPUs
    per node and inter-node link; a GPU type other than the base's brings its catalogue
    entry and its own intra-node link bandwidth (the base's latency kept)."""
    hw = copy.deepcopy(base)
    if gpu is not None and gpu != base_gpu(hw):
        hw["gpu"] = {"type": gpu}
        bw = gpu_catalogue()[gpu].get("nvlink_gbps")
        intra = dict(hw.get("intra_node") or {})
        if bw is not None:
            intra["bandwidth_gbps"] = bw
        if intra:
            hw["intra_node"] = intra
        hw.pop("nvlink_domain", None)
        hw.pop("nvlink_topology", None)
    hw["nodes"] = nodes
    hw["name"] = f"{base.get('name', 'hw')}-{gpu}-{nodes}n"
    return hw


def _serving(wl: Any, target: Target, src: str) -> tuple[dict[str, Any], Target]:
    """Whole requests (phase both) under the target's latency limits; a limit the target
    does not state is the workload's own `ttft_ms` / `tpot_ms`, if it has one."""
    if not isinstance(wl, dict) or wl.get("kind") != "inference":
        raise InputError(src, "workload", "a requests/s target needs an inference workload "
                         "(input_len, output_len)")
    target = replace(target, **{k: wl.get(k) for k in ("ttft_ms", "tpot_ms")
                                if getattr(target, k) is None and wl.get(k) is not None})
    if not target.limits:
        raise InputError("--target", "ttft_ms", "a serving target needs a TTFT or TPOT "
                         "limit (ttft_ms=..., tpot_ms=..., or the workload's)")
    out = {k: v for k, v in wl.items() if k not in ("ttft_ms", "tpot_ms")}
    out["phase"] = "both"  # whole requests: TTFT, TPOT and requests/s
    for k in ("ttft_ms", "tpot_ms"):
        if getattr(target, k) is not None:
            out[k] = getattr(target, k)
    return out, target


def sized(base: Point, gpu: str | None, nodes: int) -> Point:
    """`base` (what every size shares: the model, hardware, workload and solve settings)
    with `nodes` nodes of `gpu` (None: the hardware's own)."""
    return replace(base, overrides={"gpu_type": gpu or base_gpu(base.hardware), "nodes": nodes},
                   hardware=hardware_for(base.hardware, gpu, nodes), pins=dict(base.pins))


def make_base(model: str | Path, hardware: str | Path | None, target: Target,
              pins: dict[str, Any] | None = None, framework: str = "any",
              time_limit_s: float = 10.0, gpu: str | None = None) -> tuple[Point, Target]:
    """Read the files once; the workload is the model file's, made whole requests under
    the target's limits for a serving target (the target with the limits it is held to).
    No hardware file: `spec.hardware.default_nodes` of `gpu` (the first type asked)."""
    load_framework(framework)  # a bad name: one line now, not an error row at every size
    m = read_data(model)
    if hardware is None and gpu is None:
        raise InputError("--hw", "", "give a hardware file, or the GPU types (--gpu) to "
                         "plan on the default nodes")
    h = default_nodes(gpu) if hardware is None else read_data(hardware)
    hardware = h["name"] if hardware is None else hardware
    if not isinstance(h, dict) or not isinstance(h.get("gpus_per_node"), int):
        raise InputError(str(hardware), "gpus_per_node", "needed to count whole nodes")
    wl = m.get("workload") if isinstance(m, dict) else None
    model_data = {k: v for k, v in m.items() if k != "workload"} if isinstance(m, dict) else m
    serving = target.metric == "requests_per_s" or (
        isinstance(wl, dict) and wl.get("kind") == "inference")
    if serving:
        wl, target = _serving(wl, target, str(model))
    elif target.limits:
        raise InputError("--target", "ttft_ms" if target.ttft_ms is not None else "tpot_ms",
                         "latency limits are for serving; the model's workload is training")
    return Point(0, {}, model_data, h, wl, dict(pins or {}), framework, time_limit_s,
                 {"model": str(model), "hardware": str(hardware)}), target


def answer_type(base: Point, gpu: str | None, target: Target, max_nodes: int) -> TypeAnswer:
    """One GPU type's bisection (a top-level function: worker processes run it)."""
    plans: dict[int, dict | None] = {}

    def evaluate(n: int) -> dict:
        row, plan = solve_point(sized(base, gpu, n))
        plans[n] = plan
        return row

    nodes, tried = fewest_nodes(evaluate, target, max_nodes)
    return TypeAnswer(gpu or base_gpu(base.hardware), base.hardware["gpus_per_node"], nodes,
                      dict(sorted(tried.items())),
                      plans.get(nodes) if nodes else None)


def _solve_row(base: Point, gpu: str, nodes: int) -> dict:
    return solve_point(sized(base, gpu, nodes))[0]


def _rank(answers: list[TypeAnswer], prices: dict[str, float]) -> list[TypeAnswer]:
    met = [a for a in answers if a.nodes]
    if prices and all(a.gpu in prices for a in met):
        return sorted(met, key=lambda a: (a.num_gpus * prices[a.gpu], a.num_gpus))
    return sorted(met, key=lambda a: (a.num_gpus, -(a.row.get("throughput_tokens_per_s")
                                                    or 0.0)))


def recommend(model: str | Path, hardware: str | Path | None, target: str | Target,
              gpus: str | list[str] | None = None, prices: str | dict | None = None,
              max_nodes: int = 32, time_limit_s: float = 10.0, workers: int = 1,
              pins: dict[str, Any] | None = None, framework: str = "any") -> Recommendation:
    """The fewest whole nodes of each GPU type in `gpus` (default: the hardware file's; no
    file: `spec.hardware.default_nodes`, which the answer names) that meet `target`,
    ranked; then each type at every size any type's search solved, with
    its cost (GPU-hours and, at the given `prices`, US$ per million tokens, the cost
    frontier marked)."""
    t = target if isinstance(target, Target) else parse_target(target)
    if not isinstance(max_nodes, int) or not 1 <= max_nodes <= MAX_NODES:
        raise InputError("--max-nodes", "", f"1 to {MAX_NODES} nodes, got {max_nodes!r}")
    types: list[str | None] = [None]  # the hardware file's own GPU
    if gpus is not None:
        types = list(parse_gpus(gpus if isinstance(gpus, str) else ",".join(gpus)))
    base, t = make_base(model, hardware, t, pins, framework, time_limit_s, types[0])
    if max_nodes > 1 and "inter_node" not in base.hardware:
        raise InputError(str(hardware), "inter_node", "recommend varies the node count: "
                         "state the inter-node link (bandwidth_gbps, latency_us)")
    price = parse_prices(prices)
    names = [g or base_gpu(base.hardware) for g in types]
    missing = [g for g in price if g not in names]
    if missing:
        raise InputError("--price", missing[0], "not one of the GPU types asked about")
    pool = ProcessPoolExecutor(max_workers=min(workers, len(types))) \
        if workers > 1 and len(types) > 1 else None
    run = pool.map if pool else map
    try:
        answers = list(run(answer_type, [base] * len(types), types, [t] * len(types),
                           [max_nodes] * len(types)))
        # a common cost table: every type at every size any type solved
        sizes = sorted({n for a in answers for n in a.tried})
        todo = [(a, n) for a in answers for n in sizes if n not in a.tried]
        more = list(run(_solve_row, [base] * len(todo), [a.gpu for a, _ in todo],
                        [n for _, n in todo]))
    finally:
        if pool:
            pool.shutdown()
    for (a, n), row in zip(todo, more, strict=True):
        a.also[n] = row
    rows = [r for a in answers for _, r in sorted({**a.tried, **a.also}.items())]
    return Recommendation(t, answers, max_nodes, price, _rank(answers, price),
                          with_costs(rows, price), base.workload is not None
                          and base.workload.get("kind") == "inference",
                          base.sources["hardware"])


__all__ = ["Recommendation", "TypeAnswer", "recommend", "fewest_nodes", "hardware_for",
           "make_base", "answer_type", "cost_key"]
