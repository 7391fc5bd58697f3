"""autopar: find the parallel layout of a transformer on a GPU cluster that minimizes step
latency, and emit it as a deployment plan whose every figure can be recomputed.

The public API: `solve` (search a layout and return its `Plan`), `check` (verify a plan
independently of the search), `sweep` (a study's grid of solves, docs/studies.md),
`recommend` (the fewest GPUs that meet a target), `place` (the expert maps an engine
loads, from measured loads), `verify_plan` (run a plan on a shrunken model over CPU
processes, docs/verify.md), `trace` / `explain` / `plot` (seeing a plan,
docs/seeing-a-plan.md), the loaders `load_model` / `load_hardware` and the spec
dataclasses, so other planners can build inputs in code.
"""

# `check` below is the function: import the submodule of the same name first, so that a
# later `import autopar.check` finds it loaded and does not rebind the attribute.
from . import check as _check_module  # noqa: F401, I001  (keep first)
from .api import check, make_problem, place, solve, verify_plan  # noqa: E402
from .check.finding import Finding  # noqa: E402
from .cost.calibration import Calibration  # noqa: E402
from .errors import AutoparError, InfeasibleError, InputError  # noqa: E402
from .plan import Plan  # noqa: E402
from .spec import (  # noqa: E402
    GPUSpec,
    HardwareSpec,
    LinkSpec,
    MLASpec,
    ModelFile,
    ModelSpec,
    Workload,
    load_hardware,
    load_model,
)
from .sweep import recommend, sweep  # noqa: E402
from .view.entry import explain, plot, trace  # noqa: E402
from .version import __version__

__all__ = [
    "solve", "check", "place", "verify_plan", "make_problem", "load_model", "load_hardware",
    "Plan", "Finding",
    "ModelSpec", "ModelFile", "MLASpec", "HardwareSpec", "GPUSpec", "LinkSpec", "Workload",
    "Calibration", "AutoparError", "InputError", "InfeasibleError", "sweep", "recommend",
    "trace", "explain", "plot",
    "__version__",
]
