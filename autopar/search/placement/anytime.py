"""The anytime placement: a constructive start polished by swap descent, no solver.

Why: engines rebalance experts online with about a second to spare (DeepSeek's EPLB places
256 experts over 32 GPUs in tens of milliseconds), while the CP-SAT models take most of a
second. This is the placement that is ready first: water-filled replica counts, the
node-aware LPT of `baselines._lpt` (or the greedy baseline), then `improve._swap_descent`
(numpy), in milliseconds. It is also the CP-SAT models' hint and upper bound, so CP-SAT given
more budget only improves on it (`place.place_experts`, `budget_s`).
"""

from __future__ import annotations

from .baselines import _lpt
from .core import _Core, _make_core, _pattern_ok, _peak
from .improve import _swap_descent
from .problem import PlacementProblem

GOOD_ENOUGH = 1e-4  # a start this close to the instance's floor ends the candidate search


def anytime_start(
    problem: PlacementProblem, base: list[list[int]], stop_within: float | None = GOOD_ENOUGH
) -> tuple[_Core, list[list[int]] | None, float]:
    """The integer instance, the best start on it (None when no candidate fits its span
    patterns) and the units scale.

    Replica budget: all spare slots, or a quarter of the GPUs' spare slots fewer. With every
    slot used, each GPU must hold exactly `cap` items, which can leave no good packing (many
    replicas just under half a GPU); a little slack often packs far better. Each candidate is
    LPT plus swap descent; the greedy baseline `base` is a candidate too when it fits the
    model (same counts, spans, no expert twice on a GPU). Ties keep more replicas (more
    node spread, fewer tokens crossing nodes); a candidate within `stop_within` of the
    instance's own lower bound (the mean GPU, or the largest replica) ends the search (None:
    every candidate is tried, as CP-SAT's start when no budget presses).
    """
    full = problem.num_gpus * problem.slot_cap - problem.num_experts
    budgets = [full]
    if problem.spare_slots is not None and full > 0:
        budgets.append(max(0, full - -(-problem.num_gpus // 4)))
    best = None
    for budget in budgets:
        core, scale = _make_core(problem, budget)
        floor = _core_floor(core)
        for hint in (_lpt(core), [list(ex) for ex in base]):
            if hint is None or not _pattern_ok(core, hint):
                continue
            _swap_descent(core, hint, list(core.node_of))
            score = _peak(core, hint)
            if best is None or score < best[0]:
                best = (score, core, hint, scale)
            if stop_within is not None and score <= floor * (1 + stop_within):
                return best[1], best[2], best[3]
    if best is None:
        core, scale = _make_core(problem, full)
        return core, None, scale
    return best[1], best[2], best[3]


def _core_floor(core: _Core) -> int:
    """No assignment of this instance has a peak below this: the mean GPU or the largest
    replica (units)."""
    live = [e for e, r in enumerate(core.counts) if r]
    if not live:
        return 0
    total = sum(core.a[e] * core.counts[e] for e in live)
    return max(-(-total // len(core.node_of)), max(core.a[e] for e in live))
