"""The plan's format, shared by the writer (plan/) and the independent reader (check/): the
versioned JSON Schema (`plan.schema.json`), its structural rules without jsonschema
(`rules`), and the compact GPU-pattern form with its expansion to per-GPU records (`gpus`)."""

from .gpus import gpu_records, is_compact, read_gpus, records_form
from .rules import plan_schema, schema_problems

__all__ = ["plan_schema", "schema_problems", "read_gpus", "gpu_records", "is_compact",
           "records_form"]
