"""The runner-ups of a search: the best layout of each of the next few degree choices
(TP, PP, DP, EP, ETP, CP), what `autopar explain` quotes (docs/seeing-a-plan.md).

After the winner is found, the candidates of other degree choices are solved best bound
first, each choice until no candidate of it left unsolved can beat the best solved, and
the choices are taken in the order of their best step time. Each runner-up's value is then
the optimum over its degrees, what a solve pinned to them finds. Bounded by the deadline:
a search cut short keeps the runner-ups it proved and says so."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..cost.strategy import Strategy
from .deadline import Deadline

RUNNER_UPS = 5  # degree choices after the winner's


def degrees(s: Strategy) -> tuple[int, ...]:
    """A layout's degree choice: what `--tp --pp --dp --ep --etp --cp` pin."""
    return (s.tp, s.pp, s.dp, s.ep, s.etp, s.cp)


DEGREE_KEYS = ("tp", "pp", "dp", "ep", "etp", "cp")


@dataclass
class RunnerUps:
    found: list  # Candidates, best first, one per degree choice
    complete: bool  # False: the deadline stopped the search for them


def runner_ups(best, solved: list, pending: list, solve: Callable[[object, object], None],
               deadline: Deadline, n: int = RUNNER_UPS) -> RunnerUps:
    """The next `n` degree choices after `best`'s. `solved`: candidates with exact values;
    `pending`: bounded, unsolved ones (neither list is changed); `solve(c, incumbent)` solves
    one candidate in place (`driver._solve_candidate`)."""
    mine = degrees(best.strategy)
    done: dict[tuple, object] = {}
    for c in solved:
        k = degrees(c.strategy)
        if k != mine and c.bounds is not None and (k not in done or c.value < done[k].value):
            done[k] = c
    open_: dict[tuple, list] = {}
    for c in sorted(pending, key=lambda c: c.lower_bound):
        k = degrees(c.strategy)
        if k != mine:
            open_.setdefault(k, []).append(c)
    out: list = []
    while len(out) < n:
        left = set(done) | set(open_)
        left -= {degrees(c.strategy) for c in out}
        if not left:
            return RunnerUps(out, True)

        def floor(k: tuple) -> float:
            v = done[k].value if k in done else float("inf")
            return min(v, open_[k][0].lower_bound) if open_.get(k) else v

        k = min(left, key=lambda k: (floor(k), k))
        top = done.get(k)
        if open_.get(k) and (top is None or open_[k][0].lower_bound < top.value * (1 - 1e-9)):
            if deadline.expired():
                return RunnerUps(out, False)
            c = open_[k].pop(0)
            solve(c, top)
            if c.bounds is not None and (top is None or c.value < top.value):
                done[k] = c
            continue
        if top is None:  # nothing of it fits
            open_.pop(k, None)
            continue
        out.append(top)
    return RunnerUps(out, True)
