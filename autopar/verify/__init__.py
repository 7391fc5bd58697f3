"""`autopar verify`: run a plan. A small model with the plan's structure (`shrink`) is
sharded exactly as the plan places it (`shard`) over one CPU process per GPU
(torch.distributed, gloo: `run`), with Megatron's column / row parallel layers, the expert
all-to-all and the pipeline's send / recv (`layers`), and compared with the same model on one
process (`compare`). torch is the optional `verify` extra, imported only when a plan runs.
"""

from __future__ import annotations

from typing import Any

from ..errors import AutoparError
from .shrink import ShardError, read_layout

__all__ = ["verify_plan", "read_layout", "ShardError", "MissingExtra"]

EXTRA = "pip install 'autopar[verify]'"


class MissingExtra(AutoparError):
    exit_code = 2


def require_torch() -> None:
    try:
        import torch  # noqa: F401
        import torch.distributed as dist
    except ImportError:
        raise MissingExtra(f"autopar verify needs torch (CPU build): {EXTRA}") from None
    if not dist.is_available() or not dist.is_gloo_available():
        raise MissingExtra(f"autopar verify needs torch.distributed with gloo: {EXTRA}")


def verify_plan(plan: dict, source: str = "plan", seed: int = 0) -> Any:
    """Verify a plan (its JSON as a dict): the Report (`.passed`, `.text()`, `.to_dict()`).
    A placement that cannot run raises ShardError naming the layer and tensor."""
    require_torch()
    layout = read_layout(plan, source)
    from .compare import compare
    from .run import distributed, reference

    ref = reference(layout, seed)
    parts, wall = distributed(layout, seed)
    return compare(layout, ref, parts, source, wall)
