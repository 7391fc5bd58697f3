"""Why a training problem has no layout that fits, and the smallest change that would make
one fit: an infeasible problem is an answer, not an error."""

from __future__ import annotations

from ..cost.layer import Problem
from ..errors import InfeasibleError
from ..spec import GB
from .deadline import Deadline
from .degrees import SearchOptions
from .driver import fewest_gpus, fits


def explain_infeasible(p: Problem, opts: SearchOptions, result,
                       deadline: Deadline | None = None) -> tuple[str, str]:
    """Why nothing fits (the closest layout and what overflows) and the smallest fix (the
    GPU count only if it is found before `deadline` plus a short grace)."""
    c = result.closest
    ev = c.evaluation
    st = max(ev.stages, key=lambda x: x.memory.total)
    mem = st.memory
    parts = {"weights": mem.weights, "gradients": mem.gradients, "optimizer": mem.optimizer,
             "activations": mem.activations, "kv_cache": mem.kv_cache}
    top = max(parts, key=parts.get)
    cap = p.hw.gpu.memory_bytes
    short = mem.total - cap
    reason = (f"no layout fits in {cap / GB:.1f} GB per GPU; the closest "
              f"({c.strategy.describe()}) needs {mem.total / GB:.1f} GB on stage {st.index}, "
              f"{short / GB:.1f} GB short (largest term: {top} {parts[top] / GB:.1f} GB)")
    need, _, ended = _gpus_needed(p, opts, None if deadline is None else deadline.graced())
    if ended:
        fixes = ["more GPUs (the time limit ended the count)"]
    else:
        fixes = [f"{need} GPUs ({need // p.hw.gpus_per_node} nodes of {p.hw.gpus_per_node})"
                 if need else f"more GPUs than {64 * p.hw.num_gpus}"]
    fixes.append(f"or GPUs with at least {(mem.total + 0.5 * GB) / GB:.0f} GB each")
    if opts.pins:
        fixes.append("or fewer pinned options")
    if opts.framework != "any":  # its rules narrowed the layouts tried
        fixes.append(f"or a framework other than {opts.framework} (--framework any: every "
                     "layout)")
    return reason, "would fit with " + " ".join(fixes)


def _gpus_needed(p: Problem, opts: SearchOptions,
                 deadline: Deadline | None = None) -> tuple[int | None, int, bool]:
    """`search.fewest_gpus` for training: some layout fits in memory (step time ignored);
    a size on which no layout is even valid counts as not enough."""
    def fits_on(sub: Problem) -> bool | None:
        try:
            return fits(sub, opts, deadline)
        except InfeasibleError:
            return False

    return fewest_gpus(p, _static_bytes(p), fits_on)


def _static_bytes(p: Problem) -> float:
    """Bytes the model needs wherever it runs: weights (+ gradients and optimizer states)."""
    from ..model.components import param_count, weight_bytes

    states = p.workload.grad_bytes + p.workload.optimizer_bytes if p.training else 0
    return weight_bytes(p.model) + param_count(p.model)["total"] * states
