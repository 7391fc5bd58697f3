"""The workload spec: what one step is (a training iteration, a prefill, a decode step or
whole served requests), read and range-checked from a `workload:` section or the flags."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .fields import MISSING, Fields
from .units import DTYPE_BYTES, FP8_RECIPES


@dataclass(frozen=True)
class Workload:
    """What one step is: a training iteration, a prefill batch or one decode step."""

    kind: str  # "training" | "inference"
    batch: int  # global batch (training) or concurrent sequences (inference)
    seq_len: int = 0  # training sequence length
    phase: str = "prefill"  # inference only: "prefill" | "decode" | "both" (whole requests)
    input_len: int = 0
    output_len: int = 0
    ttft_ms: float | None = None  # serving latency targets (inference); None: no limit
    tpot_ms: float | None = None
    expert_load: str = "uniform"
    spare_slots: int | None = None
    causal: bool = True
    grad_dtype: str = "fp32"  # main gradients (Megatron keeps fp32 for bf16 training)
    master_dtype: str = "fp32"  # optimizer's master copy of the weights ("none": no copy)
    state_dtype: str = "fp32"  # Adam m and v
    precision: str | None = None  # GEMM compute precision ("fp8": fp8 tensor cores); None: dtype
    # serving (docs/serving.md): prefill + decode tokens one scheduler iteration may carry
    # (vLLM --max-num-batched-tokens); None: vLLM's default for the GPU; 0: whole prefills
    token_budget: int | None = None
    two_batch_overlap: bool | None = None  # SGLang's, on EP layouts; None: searched
    # fp8 scaling recipe (units.FP8_RECIPES); set exactly when precision is fp8 (tensorwise
    # unless stated), None otherwise
    fp8_recipe: str | None = None

    def __post_init__(self) -> None:  # fp8 always runs some recipe: Megatron's default
        if self.precision == "fp8" and self.fp8_recipe is None:
            object.__setattr__(self, "fp8_recipe", "tensorwise")

    def echo(self) -> dict:
        """Every field for a plan's echo; the recipe only where fp8 runs one."""
        out = asdict(self)
        if self.fp8_recipe is None:
            del out["fp8_recipe"]
        return out

    @property
    def grad_bytes(self) -> int:
        return DTYPE_BYTES[self.grad_dtype]

    @property
    def optimizer_bytes(self) -> int:
        """Optimizer-state bytes per parameter: master copy plus Adam's two moments."""
        master = 0 if self.master_dtype == "none" else DTYPE_BYTES[self.master_dtype]
        return master + 2 * DTYPE_BYTES[self.state_dtype]

    @property
    def tokens_per_sample(self) -> int:
        if self.kind == "training":
            return self.seq_len
        return self.input_len if self.phase == "prefill" else 1

    @property
    def context_len(self) -> float:
        """Attention context a token sees, on average (causal halving applied in FLOPs)."""
        if self.kind == "training":
            return self.seq_len
        if self.phase == "prefill":
            return self.input_len
        return self.input_len + self.output_len / 2

    @property
    def wants_serving(self) -> bool:
        """Whole requests (phase both) or a latency target make an inference workload a
        serving search; a plain prefill or decode step keeps the step-time search."""
        return self.kind == "inference" and (
            self.phase == "both" or self.ttft_ms is not None or self.tpot_ms is not None)

    @property
    def decoding(self) -> bool:
        """A decode step: one new token per sequence over its cached context."""
        return self.kind == "inference" and self.phase == "decode"

    @property
    def kv_len(self) -> int:
        """Tokens whose KV cache each sequence must hold (inference)."""
        return self.input_len + self.output_len


def _read_workload_fields(f: Fields) -> Workload:
    kind = f.str("kind", ("training", "inference"))
    load = f.str("expert_load", default="uniform")
    spare = f.int("spare_slots", 0, 1024, default=None)
    causal = f.bool("causal", default=True)
    precision = f.str("precision", ("bf16", "fp16", "fp8"), default=None)
    recipe = f.str("fp8_recipe", FP8_RECIPES, default=None)
    if recipe is not None and precision != "fp8":
        raise f.error("fp8_recipe", f"{recipe!r} is an fp8 recipe: it needs precision: fp8 "
                                    f"(precision is {precision or 'unset'})")
    if kind == "training":
        opt = {}
        if f.has("optimizer"):
            g = f.section("optimizer")
            opt = {
                "grad_dtype": g.str("grad_dtype", ("fp32", "bf16", "fp16"), default="fp32"),
                "master_dtype": g.str("master_dtype", ("fp32", "bf16", "fp16", "none"),
                                      default="fp32"),
                "state_dtype": g.str("state_dtype", ("fp32", "bf16", "fp16", "fp8"),
                                     default="fp32"),
            }
            g.finish()
        else:
            f.used.add("optimizer")
        w = Workload(
            kind,
            batch=f.int("global_batch", 1, 10_000_000),
            seq_len=f.int("seq_len", 1, 10_000_000),
            expert_load=load,
            spare_slots=spare,
            causal=causal,
            precision=precision,
            fp8_recipe=recipe,
            **opt,
        )
    else:
        ttft = f.float("ttft_ms", 1e-3, 1e9, default=None)
        tpot = f.float("tpot_ms", 1e-3, 1e9, default=None)
        targeted = ttft is not None or tpot is not None
        w = Workload(
            kind,
            # with a latency target the concurrency is searched, so the batch may be left out
            batch=f.int("batch", 1, 10_000_000, default=1 if targeted else MISSING),
            phase=f.str("phase", ("prefill", "decode", "both")),
            input_len=f.int("input_len", 1, 10_000_000),
            output_len=f.int("output_len", 0, 10_000_000, default=0),
            ttft_ms=ttft,
            tpot_ms=tpot,
            expert_load=load,
            spare_slots=spare,
            causal=causal,
            precision=precision,
            token_budget=f.int("token_budget", 0, 10_000_000, default=None),
            two_batch_overlap=f.bool("two_batch_overlap") if f.has("two_batch_overlap")
            else None,
            fp8_recipe=recipe,
        )
        if ttft is not None and w.phase == "decode":
            raise f.error("ttft_ms", "a TTFT target needs a prefill: use phase prefill or both")
        if tpot is not None and w.phase == "prefill":
            raise f.error("tpot_ms", "a TPOT target needs decoding: use phase decode or both")
    f.finish()
    return w

