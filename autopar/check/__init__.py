"""check"""

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
