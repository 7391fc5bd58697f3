"""Compare what each process holds with the same slices of the one-process reference, and
say whether the plan verifies. Needs torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .shard import local_index, take
from .shrink import Layout, describe

TOLERANCE = 1e-9  # relative, in float64: summation order alone moves results ~1e-15


@dataclass(frozen=True)
class Diff:
    """The largest difference over a kind of tensor, and the tensor it is in."""

    name: str
    max_abs: float
    ref_max: float

    @property
    def rel(self) -> float:
        if self.ref_max > 0:
            return self.max_abs / self.ref_max
        return 0.0 if self.max_abs == 0 else float("inf")


def _diff(name: str, got: torch.Tensor, ref: torch.Tensor) -> Diff:
    return Diff(name, float((got - ref).abs().max()) if got.numel() else 0.0,
                float(ref.abs().max()) if ref.numel() else 0.0)


def _worst(diffs: list[Diff]) -> Diff:
    return max(diffs, key=lambda d: (d.rel, d.max_abs), default=Diff("-", 0.0, 0.0))


@dataclass
class Report:
    plan: str
    processes: int
    strategy: dict[str, int]
    small: dict[str, Any]
    outputs: Diff
    gradients: Diff
    loss: tuple[float, float]  # distributed, reference
    tensors: int
    wall_s: float
    calls: dict[str, int] = field(default_factory=dict)
    tolerance: float = TOLERANCE

    @property
    def loss_rel(self) -> float:
        return abs(self.loss[0] - self.loss[1]) / max(abs(self.loss[1]), 1e-300)

    @property
    def passed(self) -> bool:
        return max(self.outputs.rel, self.gradients.rel, self.loss_rel) <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("outputs", "gradients"):
            d[k]["rel"] = getattr(self, k).rel
        d.update(passed=self.passed, loss_rel=self.loss_rel)
        return d

    def text(self) -> str:
        st = " ".join(f"{k.upper()}={v}" for k, v in self.strategy.items())
        s = self.small
        moe = (f"experts {s['experts']} top-{s['top_k']}, " if s["experts"] else "dense, ")
        lines = [
            f"{self.plan}: {self.processes} processes (gloo)  {st}",
            f"small model: layers {s['layers']}, hidden {s['hidden']}, heads {s['heads']} / "
            f"kv {s['kv_heads']} x {s['head_dim']}, {moe}"
            f"ffn {s['ffn']} / expert {s['expert_ffn']} / shared {s['shared_ffn']}, vocab "
            f"{s['vocab']}; batch {s['samples']} x {s['seq']} ({s['micro_batches']} micro-"
            f"batches of {s['micro_batch']} per replica), float64",
            f"outputs    max abs {self.outputs.max_abs:.3e}  rel {self.outputs.rel:.3e}  "
            f"({self.outputs.name})",
            f"gradients  max abs {self.gradients.max_abs:.3e}  rel {self.gradients.rel:.3e}  "
            f"({self.gradients.name}; {self.tensors} tensors)" if self.tensors else
            "gradients  none: an inference plan runs forward only",
            f"loss       {self.loss[0]:.12g} vs {self.loss[1]:.12g}  rel {self.loss_rel:.3e}",
            "collectives " + ", ".join(f"{k} {v}" for k, v in sorted(self.calls.items())),
        ]
        lines += [f"note: {n}" for n in s.get("notes", [])]
        lines.append(f"{'PASS' if self.passed else 'FAIL'}: tolerance {self.tolerance:g} "
                     f"relative ({self.wall_s:.1f} s)")
        return "\n".join(lines)


def compare(lay: Layout, ref: dict, parts: list[dict], plan: str, wall_s: float) -> Report:
    outs, grads, calls = [], [], {}
    for g, part in zip(lay.gpus, parts, strict=True):
        for lo, logits in part["logits"].items():
            want = ref["logits"][lo:lo + logits.shape[0]]
            outs.append(_diff(f"logits of samples {lo}-{lo + logits.shape[0] - 1} on GPU "
                              f"{g.gpu}", logits, want))
        for name, ix in local_index(lay, g).items():
            got = part["grads"].get(name)
            if got is None and not lay.training:
                continue
            full = ref["grads"].get(ix[0])
            want = take(full if full is not None else torch.zeros(0), ix) if full is not None \
                else torch.zeros_like(got)
            grads.append(_diff(f"{name} on GPU {g.gpu}", got, want))
        for k, v in part["calls"].items():
            calls[k] = calls.get(k, 0) + v
    loss = sum(p["loss"] for p in parts)
    st = {"tp": lay.tp, "pp": lay.pp, "dp": lay.dp, "ep": lay.ep, "etp": lay.etp,
          "edp": lay.edp}
    return Report(plan, len(lay.gpus), st, describe(lay), _worst(outs), _worst(grads),
                  (loss, ref["loss"]), len(grads), wall_s, calls)
