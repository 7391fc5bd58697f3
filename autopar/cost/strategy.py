"""One validated parallel layout, and the rank layout that maps its groups onto GPUs.

Rank order follows Megatron-Core: TP varies fastest, then DP, then PP; inside a stage the
experts fold onto the same W = TP x DP GPUs as ETP (fastest), EP, then EDP.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

RECOMPUTE = ("none", "selective", "full")
DISPATCHERS = ("alltoall", "deepep")  # Megatron --moe-token-dispatcher-type alltoall / flex
# the expert all-to-all options [a2a-overlap, deepep] and their defaults: a plan states them
# only when set, so plans without them stay as they were
A2A_DEFAULTS = {"a2a_overlap": False, "moe_dispatcher": "alltoall", "a2a_fp8": False,
                "a2a_node_limit": 0, "a2a_sms": 20}


class StrategyError(ValueError):
    """A layout whose degrees clash; the message names the values."""


@dataclass(frozen=True)
class Strategy:
    num_gpus: int
    tp: int = 1
    pp: int = 1
    dp: int = 1
    ep: int = 1
    etp: int = 1
    micro_batch: int = 1
    num_micro_batches: int = 1
    recompute: str = "none"
    zero: int = 0
    sequence_parallel: bool = False
    virtual_stages: int = 1  # interleaved 1F1B: model chunks per pipeline stage
    overlap_grad_reduce: bool = True  # DP gradient reduction runs behind the backward
    overlap_tp_comm: bool = False  # TP collectives hidden behind the GEMMs (TE userbuffers)
    spare_slots: int = 0  # redundant expert slots per GPU beyond ceil(experts / EP)
    # [a2a-overlap] Megatron's combined 1F1B (--overlap-moe-expert-parallel-comm): one
    # micro-batch's forward and another's backward interleaved layer by layer, each one's
    # all-to-all behind the other's compute
    a2a_overlap: bool = False
    moe_dispatcher: str = "alltoall"  # [deepep] "deepep": node-deduplicated dispatch
    a2a_fp8: bool = False  # [deepep] tokens dispatched in fp8 (1 + 1/32 B a value), combined bf16
    a2a_node_limit: int = 0  # [deepep] node-limited routing: each token to <= M domains (0: any)
    a2a_sms: int = 20  # [a2a-overlap] SMs the overlapped dispatch / combine kernels hold

    def __post_init__(self) -> None:
        if min(self.tp, self.pp, self.dp, self.ep, self.etp, self.micro_batch,
               self.num_micro_batches) < 1:
            raise StrategyError(f"every degree must be >= 1: {self.describe()}")
        if self.tp * self.dp * self.pp != self.num_gpus:
            raise StrategyError(
                f"tp({self.tp}) * dp({self.dp}) * pp({self.pp}) = "
                f"{self.tp * self.dp * self.pp} != GPUs({self.num_gpus})"
            )
        if self.stage_width % (self.ep * self.etp):
            raise StrategyError(
                f"ep({self.ep}) * etp({self.etp}) must divide tp*dp ({self.stage_width})"
            )
        if self.recompute not in RECOMPUTE:
            raise StrategyError(f"recompute {self.recompute!r} is not one of {RECOMPUTE}")
        if self.zero not in (0, 1, 2, 3):
            raise StrategyError(f"zero stage {self.zero} is not 0, 1, 2 or 3")
        if self.sequence_parallel and self.tp == 1:
            raise StrategyError("sequence_parallel needs tp > 1")
        if self.spare_slots < 0:
            raise StrategyError(f"spare_slots must be >= 0, got {self.spare_slots}")
        if self.virtual_stages < 1:
            raise StrategyError(f"virtual_stages must be >= 1, got {self.virtual_stages}")
        if self.virtual_stages > 1 and (self.pp == 1 or self.num_micro_batches % self.pp):
            raise StrategyError(
                f"interleaving (virtual_stages={self.virtual_stages}) needs pp > 1 and "
                f"micro-batches ({self.num_micro_batches}) a multiple of pp ({self.pp})")
        _check_a2a(self)
        if self.overlap_tp_comm and not self.sequence_parallel:
            raise StrategyError("overlap_tp_comm needs sequence_parallel (the overlapped "
                                "collectives are its all-gather and reduce-scatter)")

    @property
    def stage_width(self) -> int:
        return self.tp * self.dp

    @property
    def edp(self) -> int:
        return self.stage_width // (self.ep * self.etp)

    def describe(self) -> str:
        return (f"TP={self.tp} PP={self.pp} DP={self.dp} EP={self.ep} ETP={self.etp} "
                f"mb={self.micro_batch}x{self.num_micro_batches} recompute={self.recompute} "
                f"zero={self.zero} sp={int(self.sequence_parallel)}"
                + (f" v={self.virtual_stages}" if self.virtual_stages > 1 else "")
                + ("" if self.overlap_grad_reduce else " no-dp-overlap")
                + (" tp-overlap" if self.overlap_tp_comm else "")
                + (f" spare={self.spare_slots}" if self.spare_slots else "")
                + "".join(f" {k}={v}" for k, v in self.a2a_options().items()))

    def a2a_options(self) -> dict:
        """The expert all-to-all options set away from their defaults."""
        return {k: getattr(self, k) for k, v in A2A_DEFAULTS.items() if getattr(self, k) != v}

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("num_gpus")
        for k in A2A_DEFAULTS:  # stated only when set (plans without them are unchanged)
            if k not in self.a2a_options():
                d.pop(k)
        d["edp"] = self.edp
        return d

    # ---- rank layout -------------------------------------------------------------
    def rank(self, stage: int, dp_rank: int, tp_rank: int) -> int:
        return stage * self.stage_width + dp_rank * self.tp + tp_rank

    def stage_of(self, gpu: int) -> int:
        return gpu // self.stage_width

    def coords(self, gpu: int) -> dict[str, int]:
        local = gpu % self.stage_width
        return {
            "stage": self.stage_of(gpu),
            "tp_rank": local % self.tp,
            "dp_rank": local // self.tp,
            "etp_rank": local % self.etp,
            "ep_rank": (local // self.etp) % self.ep,
            "edp_rank": local // (self.etp * self.ep),
        }

    def tp_group(self, gpu: int) -> list[int]:
        base = gpu - gpu % self.tp
        return list(range(base, base + self.tp))

    def dp_group(self, gpu: int) -> list[int]:
        stage0 = self.stage_of(gpu) * self.stage_width
        tp_rank = gpu % self.tp
        return [stage0 + d * self.tp + tp_rank for d in range(self.dp)]

    def ep_group(self, gpu: int) -> list[int]:
        stage0 = self.stage_of(gpu) * self.stage_width
        c = self.coords(gpu)
        return [stage0 + c["etp_rank"] + self.etp * (e + self.ep * c["edp_rank"])
                for e in range(self.ep)]

    def etp_group(self, gpu: int) -> list[int]:
        base = gpu - gpu % self.etp
        return list(range(base, base + self.etp))

    def edp_group(self, gpu: int) -> list[int]:
        stage0 = self.stage_of(gpu) * self.stage_width
        local = gpu % self.stage_width
        inner = local % (self.etp * self.ep)
        return [stage0 + inner + self.etp * self.ep * r for r in range(self.edp)]


def _check_a2a(s: Strategy) -> None:
    """Megatron-Core's argument checks of the all-to-all options (TransformerConfig)."""
    if s.moe_dispatcher not in DISPATCHERS:
        raise StrategyError(f"moe_dispatcher {s.moe_dispatcher!r} is not one of {DISPATCHERS}")
    if s.a2a_node_limit < 0 or s.a2a_sms < 0:
        raise StrategyError("a2a_node_limit and a2a_sms must be >= 0")
    if (s.a2a_fp8 or s.a2a_node_limit) and s.moe_dispatcher != "deepep":
        raise StrategyError("a2a_fp8 and a2a_node_limit need moe_dispatcher deepep")
    if s.moe_dispatcher == "deepep" and s.ep == 1:
        raise StrategyError("moe_dispatcher deepep needs expert parallelism (ep > 1)")
    if s.a2a_overlap:
        if s.ep == 1:
            raise StrategyError("a2a_overlap needs expert parallelism (ep > 1)")
        if s.recompute == "full":
            raise StrategyError("a2a_overlap needs recompute other than full (Megatron)")
        if s.pp > 1 and s.virtual_stages == 1:
            raise StrategyError("a2a_overlap with pp > 1 needs interleaving (virtual_stages "
                                "> 1), as Megatron requires")
