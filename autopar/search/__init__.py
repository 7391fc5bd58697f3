"""search: the layout with the lowest step time for a problem (`search`), or whether any fits.

`degrees` enumerates the layouts the inputs and pins allow (`enumerate_strategies`), `bounds`
gives their cheap lower bounds (`quick_bound`, `compute_floor`), `driver` runs the best-first
search (`search`, `fits`); `stages` and `placement` are its CP-SAT models.
"""

from .bounds import compute_floor, quick_bound, stage_inputs, summed  # noqa: F401
from .degrees import (  # noqa: F401
    PIN_KEYS,
    SPARE_CHOICES,
    SearchOptions,
    check_cp_pins,
    enumerate_strategies,
)
from .driver import (  # noqa: F401
    BOUND_SHARE,
    MIN_CPSAT_S,
    PLACEMENT_SHARE,
    Candidate,
    SearchResult,
    fewest_gpus,
    fits,
    search,
)
