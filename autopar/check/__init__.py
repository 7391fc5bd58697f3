"""check: the independent verifier of a plan (`autopar check`), recomputed from its inputs.

Public: `check_plan` (the findings for a plan), `format_findings`, `exit_code`, `Finding`.
Of the other stages it imports only spec, model and schema: never the search or cost model.
"""

from .finding import Finding  # noqa: F401
from .verify import (  # noqa: F401
    COARSE_KEYS,
    at_patterns,
    check_plan,
    collapse,
    exit_code,
    format_findings,
    is_coarse,
    resolve_inputs,
)
