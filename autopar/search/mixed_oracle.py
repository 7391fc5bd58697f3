"""Exhaustive enumerator over small mixed-group spaces: the test oracle for `hetero`.

It shares only the cost definition (`hetero.evaluate_mixed`, the homogeneous cost model
stage by stage) and the list of legal layouts with the search; the group order, the stage
cut and the pruning the search decides are brute-forced here: every layout, every order of
the groups, every contiguous cut, each priced in full."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

from ..cost.layer import Problem
from ..spec.groups import MixedHardware, slowest
from .bounds import _CostCache
from .degrees import SearchOptions, enumerate_strategies
from .hetero import (
    MixedEvaluation,
    evaluate_mixed,
    group_problem,
    reference_problem,
    stage_groups,
    tables,
)
from .oracle import MAX_CUTS, all_cuts


@dataclass
class MixedOracle:
    best: MixedEvaluation | None
    order: tuple[int, ...] | None
    evaluated: int


def exhaustive_mixed(p: Problem, mixed: MixedHardware, opts: SearchOptions | None = None
                     ) -> MixedOracle:
    opts = opts or SearchOptions()
    ref = reference_problem(p, mixed, slowest(mixed, p.model.dtype))
    layouts = dict.fromkeys(
        replace(s, first_stage_layers=0, last_stage_layers=0, embedding_in_split=False,
                loss_in_split=False) for s in enumerate_strategies(ref, opts) if not s.dualpipe)
    out = MixedOracle(None, None, 0)
    for order in itertools.permutations(range(len(mixed.groups))):
        hw = mixed.reordered(order)
        gps = [group_problem(p, hw, g) for g in hw.groups]
        caches = [_CostCache(gp, opts) for gp in gps]
        for s in layouts:
            groups = stage_groups(hw, s)
            if groups is None or len(set(groups)) < 2:
                continue
            if math.comb(p.model.layers - 1, s.pp - 1) > MAX_CUTS:
                raise ValueError(f"oracle: too many cuts for PP {s.pp}")
            t = tables(gps, caches, s, set(groups))
            for b in all_cuts(p.model.layers, s.pp):
                ev = evaluate_mixed(t, s, b, groups)
                out.evaluated += 1
                if ev.feasible and (out.best is None or ev.step_time < out.best.step_time):
                    out.best, out.order = ev, order
    return out
