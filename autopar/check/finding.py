"""What `autopar check` reports: one finding per inconsistency, with the JSON path it concerns,
what the plan says and what it should say, so a reader can fix the file without re-deriving it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

# classes of finding (the `check` field); the tests break a plan in one way per class
CHECKS = ("schema", "inputs", "gpus", "degrees", "divisibility", "stages", "shards", "experts",
          "memory", "flops", "communication", "timing", "throughput", "metrics", "detail",
          "validation", "framework")


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning"
    check: str  # one of CHECKS
    path: str  # JSON path, e.g. "strategy.tp" or "gpus[2].memory.total_bytes"
    message: str
    claimed: Any = None  # what the plan says
    expected: Any = None  # what it should say (a value, a bound like "<= 1.2e15", or text)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Findings:
    """Collects findings; `error`/`warn` keep the call sites short."""

    items: list[Finding] = field(default_factory=list)

    def error(self, check: str, path: str, message: str, claimed: Any = None,
              expected: Any = None) -> None:
        self.items.append(Finding("error", check, path, message, claimed, expected))

    def warn(self, check: str, path: str, message: str, claimed: Any = None,
             expected: Any = None) -> None:
        self.items.append(Finding("warning", check, path, message, claimed, expected))

    def has_errors(self, check: str | None = None) -> bool:
        return any(f.severity == "error" and (check is None or f.check == check)
                   for f in self.items)


def is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def close(a: float, b: float, rel: float) -> bool:
    """|a - b| within `rel` of the larger magnitude (and of 1e-12 absolute, for zeros)."""
    return abs(a - b) <= max(rel * max(abs(a), abs(b)), 1e-12)


def fmt(x: Any) -> str:
    """Compact rendering of a claimed / expected value for the table."""
    if x is None:
        return "-"
    if isinstance(x, bool) or isinstance(x, int) and abs(x) < 10**7:
        return str(x)
    if isinstance(x, float):
        if x == 0:
            return "0"
        if x.is_integer() and abs(x) < 10**7:
            return str(int(x))
        return f"{x:.6g}"
    if isinstance(x, (list, tuple)):
        text = ", ".join(fmt(v) for v in x)
        return text if len(text) <= 60 else text[:57] + "..."
    return str(x)
