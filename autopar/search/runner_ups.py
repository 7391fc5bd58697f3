"""The runner-ups of a search: the best layout of each of the next few degree choices
(TP, PP, DP, EP, ETP, CP), what `autopar explain` quotes (docs/seeing-a-plan.md).

After the winner is found, the candidates of other degree choices are solved best bound
first, each choice until no candidate of it left unsolved can beat the best solved, and
the choices are taken in the order of their best step time. Each runner-up's value is then
the optimum over its degrees, what a solve pinned to them finds. Bounded by work
(`MAX_SOLVES`, `MAX_MODELS`) and, as a safety, by `driver.RUNNER_UP_SHARE` of the time
limit: a search for them cut short keeps the runner-ups it proved, then the best found of
other degree choices, and says so (`complete` false, `proven` per layout)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..cost.strategy import Strategy
from .deadline import Deadline

RUNNER_UPS = 5  # degree choices after the winner's
# how much proving them may take, in work rather than seconds so that a plan does not depend
# on the machine's speed (the deadline is only the safety): candidates solved, and of them
# the ones that built a CP-SAT stage model (small ones: `driver.RUNNER_UP_CPSAT_SIZE`;
# DeepSeek-V3 on 256 H800 takes ~500 solves of 4 ms, Mixtral on 8 H100 ~30 models)
MAX_SOLVES = 1000
MAX_MODELS = 48


def degrees(s: Strategy) -> tuple[int, ...]:
    """A layout's degree choice: what `--tp --pp --dp --ep --etp --cp` pin."""
    return (s.tp, s.pp, s.dp, s.ep, s.etp, s.cp)


DEGREE_KEYS = ("tp", "pp", "dp", "ep", "etp", "cp")


@dataclass
class RunnerUps:
    found: list  # Candidates, best first, one per degree choice
    complete: bool  # False: the deadline stopped the search for them
    proven: int = 0  # the first `proven` of `found` are the optimum of their degrees


def _cut_short(out: list, done: dict, n: int) -> RunnerUps:
    """The proven runner-ups, then the best solved layouts of other degree choices (their
    values are real, but a solve pinned to them may find faster ones)."""
    have = {degrees(c.strategy) for c in out}
    rest = sorted((c for k, c in done.items() if k not in have), key=lambda c: c.value)
    return RunnerUps(out + rest[: n - len(out)], False, len(out))


def runner_ups(best, solved: list, pending: list, solve: Callable[[object, object], None],
               deadline: Deadline, n: int = RUNNER_UPS, max_solves: int = MAX_SOLVES,
               max_models: int = MAX_MODELS) -> RunnerUps:
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
    solves = models = 0
    while len(out) < n:
        left = set(done) | set(open_)
        left -= {degrees(c.strategy) for c in out}
        if not left:
            return RunnerUps(out, True, len(out))

        def floor(k: tuple) -> float:
            v = done[k].value if k in done else float("inf")
            return min(v, open_[k][0].lower_bound) if open_.get(k) else v

        k = min(left, key=lambda k: (floor(k), k))
        top = done.get(k)
        if open_.get(k) and (top is None or open_[k][0].lower_bound < top.value * (1 - 1e-9)):
            if deadline.expired() or solves >= max_solves or models >= max_models:
                return _cut_short(out, done, n)
            c = open_[k].pop(0)
            solve(c, top)
            solves += 1
            models += c.model_size != (0, 0)
            if c.bounds is not None and (top is None or c.value < top.value):
                done[k] = c
            continue
        if top is None:  # nothing of it fits
            open_.pop(k, None)
            continue
        out.append(top)
    return RunnerUps(out, True, len(out))
