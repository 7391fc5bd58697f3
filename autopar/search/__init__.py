"""search"""

from .driver import (  # noqa: F401
    BOUND_SHARE,
    FALLBACK_GRACE_S,
    MIN_CPSAT_S,
    PIN_KEYS,
    PLACEMENT_SHARE,
    SPARE_CHOICES,
    Candidate,
    SearchOptions,
    SearchResult,
    compute_floor,
    enumerate_strategies,
    fits,
    quick_bound,
    search,
    stage_inputs,
    summed,
)
