"""The time limit of a whole run, as a value passed down to every phase that can take long.

`--time-limit` bounds the run, not one CP-SAT call: the search, the expert placements and the
stage models all draw on one `Deadline`, each CP-SAT call gets at most what is left, and the
phases that cannot stop mid-way (building the plan) get a share set aside before the search
starts (`docs/ARCHITECTURE.md`, the time limit).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

MAX_TIME_LIMIT_S = 86_400.0  # one day: anything longer is a typo, not a plan
GRACE_S = 0.5  # past the limit, at most this (or a tenth of the limit) to find any answer


def check_time_limit(value: float, source: str = "time_limit_s") -> float:
    """The time limit as a float, or an InputError naming `source`: it must be a finite
    number of seconds above 0 (NaN would compare false against any range and end up in the
    plan as invalid JSON)."""
    from ..errors import InputError

    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(source, "", f"must be a number of seconds, got {value!r}") from None
    if not math.isfinite(v) or v <= 0 or v > MAX_TIME_LIMIT_S:
        raise InputError(source, "", f"must be a finite number of seconds > 0 and <= "
                                     f"{MAX_TIME_LIMIT_S:.0f}, got {value!r}")
    return v


@dataclass(frozen=True)
class Deadline:
    """A window [start, end] on the monotonic clock (seconds). Immutable: a phase that must
    leave time for later ones gets a sooner Deadline, not a changed one."""

    start: float
    end: float

    @staticmethod
    def after(seconds: float, now: float | None = None) -> Deadline:
        t = time.monotonic() if now is None else now
        return Deadline(t, t + seconds)

    @property
    def limit_s(self) -> float:
        return self.end - self.start

    def left(self) -> float:
        """Seconds until the end (negative once it has passed)."""
        return self.end - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def sooner(self, by_s: float) -> Deadline:
        """The same window ending `by_s` earlier (never before its start)."""
        return Deadline(self.start, max(self.start, self.end - by_s))

    def graced(self) -> Deadline:
        """The same window plus the short grace that finding any answer (a fallback layout,
        the infeasibility advice) may take past the limit: GRACE_S or a tenth of it."""
        return Deadline(self.start, self.end + max(GRACE_S, 0.1 * self.limit_s))

    def fraction(self, share: float) -> Deadline:
        """From now until `share` of the time left, e.g. a phase's part of the rest."""
        now = time.monotonic()
        return Deadline(now, now + max(0.0, self.end - now) * share)


__all__ = ["Deadline", "check_time_limit", "MAX_TIME_LIMIT_S", "GRACE_S"]
