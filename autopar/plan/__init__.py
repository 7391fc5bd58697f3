"""plan"""

from .build import (  # noqa: F401
    PHASES,
    SCHEMA_VERSION,
    Plan,
    build_plan,
    dominant_term,
    formula_index,
    gpu_record,
    gpus_section,
    inputs_echo,
    optimizer_states,
    read_plan,
    write_atomic,
)
