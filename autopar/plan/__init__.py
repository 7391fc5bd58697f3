"""The deployment plan: the JSON document built from a solved layout (DESIGN sec. 5), its
self-check, the terminal report, and writing / reading plan files.

Public: `build_plan` (build), `Plan`, `write_atomic`, `read_plan` (document), `gpus_section`,
`gpu_record` (gpus), `optimizer_states` (memory), `PHASES`, `dominant_term` (timing),
`inputs_echo`, `formula_index` (sections), `SCHEMA_VERSION`."""

from .build import SCHEMA_VERSION, build_plan
from .document import Plan, read_plan, write_atomic
from .gpus import gpu_record, gpus_section
from .memory import optimizer_states
from .sections import formula_index, inputs_echo
from .timing import PHASES, dominant_term

__all__ = ["build_plan", "Plan", "write_atomic", "read_plan", "gpus_section", "gpu_record",
           "optimizer_states", "PHASES", "dominant_term", "inputs_echo", "formula_index",
           "SCHEMA_VERSION"]
