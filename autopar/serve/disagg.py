"""Disaggregated serving: a prefill pool and a decode pool, each with its own layout (and
optionally its own GPU type), sized so that the prefill rate matches the decode rate.

For every way of splitting the GPUs (by whole nodes, or the same share of every node), the
prefill pool's best layout and batch is searched under the TTFT target (its KV cache has to
reach the decode pool too), and the decode pool's whole frontier under the TPOT target. A
split serves `min(prefill rate, decode rate)` requests/s, so tokens/s per GPU counts both
pools; the best split is where the two rates meet [serving-disagg].
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from ..cost.bundled import BUNDLED, default_calibration
from ..cost.calibration import Calibration
from ..cost.kv_cache import kv_bytes_per_token_layer, kv_tokens
from ..cost.layer import Problem
from ..model.components import weight_bytes
from ..search import SearchOptions
from ..search.deadline import Deadline
from ..spec import HardwareSpec
from .evaluate import ServingPoint, phase_problem
from .frontier import ServingResult, Targets, pareto, serving_search


@dataclass
class DisaggPoint:
    """One prefill-pool point and one decode-pool point working together."""

    prefill: ServingPoint
    decode: ServingPoint
    kv_transfer_s: float
    total_gpus: int
    output_len: int

    @property
    def prefill_rate(self) -> float:
        return self.prefill.requests_per_s

    @property
    def decode_rate(self) -> float:
        """Requests/s the decode pool finishes: each holds a slot for OSL - 1 steps."""
        return self.decode.requests_per_s

    @property
    def requests_per_s(self) -> float:
        return min(self.prefill_rate, self.decode_rate)

    @property
    def ttft_s(self) -> float:
        return self.prefill.ttft_s + self.kv_transfer_s

    @property
    def tpot_s(self) -> float:
        return self.decode.tpot_s

    @property
    def tokens_per_s(self) -> float:
        return self.requests_per_s * self.output_len

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self.tokens_per_s / self.total_gpus

    @property
    def tokens_per_s_per_user(self) -> float:
        return 1.0 / self.tpot_s

    @property
    def request_latency_s(self) -> float:
        return self.ttft_s + max(self.output_len - 1, 0) * self.tpot_s

    def meets(self, t: Targets) -> bool:
        return ((t.ttft_ms is None or self.ttft_s * 1e3 <= t.ttft_ms)
                and (t.tpot_ms is None or self.tpot_s * 1e3 <= t.tpot_ms))

    def to_dict(self) -> dict:
        return {
            "prefill": {**self.prefill.to_dict(), "hardware_gpus": self.prefill.gpus},
            "decode": {**self.decode.to_dict(), "hardware_gpus": self.decode.gpus},
            "prefill_gpus": self.prefill.gpus, "decode_gpus": self.decode.gpus,
            "total_gpus": self.total_gpus,
            "prefill_requests_per_s": self.prefill_rate,
            "decode_requests_per_s": self.decode_rate,
            "rate_balance": self.prefill_rate / self.decode_rate,
            "requests_per_s": self.requests_per_s, "kv_transfer_s": self.kv_transfer_s,
            "ttft_s": self.ttft_s, "tpot_s": self.tpot_s,
            "request_latency_s": self.request_latency_s, "tokens_per_s": self.tokens_per_s,
            "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu,
            "tokens_per_s_per_user": self.tokens_per_s_per_user,
        }


@dataclass
class DisaggResult:
    best: DisaggPoint | None
    frontier: list[DisaggPoint]
    splits: list[dict]  # per split: GPUs of each pool and its best point (or why none)
    search_time_s: float
    notes: list[str] = field(default_factory=list)
    timed_out: bool = False  # the time limit ended the search before every split was costed


def pool_shapes(hw: HardwareSpec, whole: bool) -> list[tuple[int, int]]:
    """(nodes, GPUs per node) of the pools a cluster can be cut into: whole nodes, or the
    same number of GPUs on every node; `whole` adds the cluster itself (a pool of another GPU
    type may take all of its hardware)."""
    shapes = {(k, hw.gpus_per_node) for k in range(1, hw.nodes)}
    shapes |= {(hw.nodes, g) for g in range(1, hw.gpus_per_node)}
    if whole:
        shapes.add((hw.nodes, hw.gpus_per_node))
    return sorted(shapes)


def sub_hardware(hw: HardwareSpec, shape: tuple[int, int]) -> HardwareSpec:
    nodes, gpn = shape
    return replace(hw, name=f"{hw.name}[{nodes}x{gpn}]", nodes=nodes, gpus_per_node=gpn)


def complement(hw: HardwareSpec, shape: tuple[int, int]) -> tuple[int, int]:
    nodes, gpn = shape
    if gpn == hw.gpus_per_node:
        return hw.nodes - nodes, gpn
    return hw.nodes, hw.gpus_per_node - gpn


def kv_transfer_time(p: Problem, pre: ServingPoint, same_node: bool,
                     hw: HardwareSpec) -> float:
    """[serving-kv-transfer] One prompt's KV cache (the ISL tokens each layer keeps, window-
    capped [attention-window], x the unsharded bytes per token and layer) leaves the prefill
    replica's TP x PP GPUs in parallel, over NVLink when both pools share the node, else over
    each GPU's NIC."""
    m = p.model
    tokens = sum(kv_tokens(m, x, p.workload.input_len) for x in range(m.layers))
    nbytes = tokens * kv_bytes_per_token_layer(m, 1)
    senders = pre.layout.tp * pre.layout.pp
    link, name = (hw.intra, "intra") if same_node else (hw.inter, "inter")
    return nbytes / (senders * link.bytes_per_s * p.calib.link(name)) + link.latency_s


def disagg_search(p: Problem, opts: SearchOptions | None = None,
                  targets: Targets | None = None,
                  decode_hw: HardwareSpec | None = None,
                  deadline: Deadline | None = None) -> DisaggResult:
    """Best split of the GPUs into a prefill and a decode pool (or, with `decode_hw`, how
    many GPUs of each type to use), and the frontier over all splits. Past `deadline` the
    splits not yet costed say so, and the best so far stands (`timed_out`)."""
    t0 = time.perf_counter()
    opts = opts or SearchOptions()
    targets = targets or Targets()
    hw = p.hw
    if decode_hw is None:
        pairs = [(s, complement(hw, s)) for s in pool_shapes(hw, whole=False)]
    else:
        pairs = [(a, b) for a in pool_shapes(hw, True) for b in pool_shapes(decode_hw, True)]
    pre_cache: dict[tuple, ServingResult] = {}
    dec_cache: dict[tuple, ServingResult] = {}
    all_points: list[DisaggPoint] = []
    splits: list[dict] = []
    best: DisaggPoint | None = None
    weights = weight_bytes(p.model)
    timed_out = False
    for pshape, dshape in pairs:
        entry = {"prefill_gpus": pshape[0] * pshape[1], "decode_gpus": dshape[0] * dshape[1],
                 "prefill_nodes_x_gpus": list(pshape), "decode_nodes_x_gpus": list(dshape)}
        if deadline is not None and deadline.expired():
            timed_out = True
            entry["why"] = "not costed: the time limit was reached"
            splits.append(entry)
            continue
        small = [name for name, shape, h in (("prefill", pshape, hw),
                                             ("decode", dshape, decode_hw or hw))
                 if shape[0] * shape[1] * h.usable_bytes < weights]
        if small:  # a pool that cannot hold one copy of the weights: nothing to search
            pools = " and ".join(small) + (" pools" if len(small) > 1 else " pool")
            entry["why"] = f"the {pools} cannot hold the weights ({weights / 1e9:.0f} GB)"
            splits.append(entry)
            continue
        if pshape not in pre_cache:
            pre_cache[pshape] = _pool(p, hw, pshape, "prefill", opts,
                                      Targets(targets.ttft_ms, None), deadline)
        dhw = decode_hw or hw
        if dshape not in dec_cache:
            dec_cache[dshape] = _pool(p, dhw, dshape, "decode", opts,
                                      Targets(None, targets.tpot_ms), deadline)
        pre_res, dec_res = pre_cache[pshape], dec_cache[dshape]
        if pre_res.timed_out or dec_res.timed_out:
            timed_out = True
            entry["time_limit_reached"] = True  # its pools were costed in part
        same_node = decode_hw is None and hw.domains == 1  # one NVLink domain
        pre = _best_prefill(p, pre_res, same_node, hw, targets)
        if pre is None:
            entry["why"] = ("no prefill point found before the time limit" if
                            pre_res.timed_out else "no prefill layout fits" + (
                                "" if not pre_res.points else " the TTFT target"))
            splits.append(entry)
            continue
        xfer = kv_transfer_time(p, pre, same_node, hw)
        total = entry["prefill_gpus"] + entry["decode_gpus"]
        mine = [DisaggPoint(pre, d, xfer, total, p.workload.output_len)
                for d in dec_res.points]
        if not mine:
            entry["why"] = ("no decode point found before the time limit" if
                            dec_res.timed_out else "no decode layout fits")
            splits.append(entry)
            continue
        all_points += mine
        ok = [x for x in mine if x.meets(targets)]
        top = max(ok, key=lambda x: (x.tokens_per_s_per_gpu, x.tokens_per_s_per_user), default=None)
        entry["best"] = top.to_dict() if top else None
        if top is None:
            entry["why"] = "no decode point meets the TPOT target"
        splits.append(entry)
        if top is not None and (best is None
                                or top.tokens_per_s_per_gpu > best.tokens_per_s_per_gpu):
            best = top
    return DisaggResult(best, _pareto(all_points), splits, time.perf_counter() - t0,
                        timed_out=timed_out)


def pool_calibration(p: Problem, hw: HardwareSpec) -> Calibration:
    """A pool on another GPU type (--decode-hw) plans with that type's own figures: its
    shipped tables when the problem's came from the shipped ones (`bundled: ...`), the
    catalogue's flat fractions of that GPU under `defaults` (the problem's were resolved
    against the prefill GPU); a calibration file applies to both pools as given."""
    if hw.gpu.name == p.hw.gpu.name:
        return p.calib
    if p.calib.source.startswith(BUNDLED + ":"):
        return default_calibration(hw.gpu.name)
    return Calibration() if p.calib.source == "defaults" else p.calib


def _pool(p: Problem, hw: HardwareSpec, shape: tuple[int, int], phase: str,
          opts: SearchOptions, targets: Targets,
          deadline: Deadline | None = None) -> ServingResult:
    sub = replace(phase_problem(p, phase, 1), hw=sub_hardware(hw, shape),
                  calib=pool_calibration(p, hw))
    pins = {k: v for k, v in opts.pins.items() if k not in ("tp", "pp", "dp", "ep", "etp")}
    return serving_search(sub, replace(opts, pins=pins), targets, deadline=deadline)


def _best_prefill(p: Problem, res: ServingResult, same_node: bool, hw: HardwareSpec,
                  targets: Targets) -> ServingPoint | None:
    """The prefill point with the highest request rate whose TTFT, KV transfer included,
    meets the target."""
    ok = [x for x in res.points
          if targets.ttft_ms is None
          or (x.ttft_s + kv_transfer_time(p, x, same_node, hw)) * 1e3 <= targets.ttft_ms]
    return max(ok, key=lambda x: (x.requests_per_s, -x.ttft_s), default=None)


def _pareto(points: list[DisaggPoint]) -> list[DisaggPoint]:
    ranked = sorted(points, key=lambda x: (-x.tokens_per_s_per_user, -x.tokens_per_s_per_gpu))
    out: list[DisaggPoint] = []
    for pt in ranked:
        if not out or pt.tokens_per_s_per_gpu > out[-1].tokens_per_s_per_gpu * (1 + 1e-12):
            out.append(pt)
    return out


__all__ = ["DisaggPoint", "DisaggResult", "disagg_search", "pool_shapes", "kv_transfer_time",
           "pareto"]
