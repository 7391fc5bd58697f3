"""One validated parallel layout, and the rank layout that maps its groups onto GPUs.

Rank order follows Megatron-Core: TP varies fastest, then CP, then DP, then PP; inside a
stage the experts fold onto the same W = TP x CP x DP GPUs as ETP (fastest), EP, then EDP.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..model.recompute import DEFAULT_MODULES, canonical, module_error

RECOMPUTE = ("none", "selective", "full")
SPLIT_KEYS = ("first_stage_layers", "last_stage_layers", "embedding_in_split", "loss_in_split")
# context parallelism's attention exchange (Megatron-Core --cp-comm-type) [cp-attention]
CP_COMM = ("p2p", "all_gather", "a2a")
DISPATCHERS = ("alltoall", "deepep")  # Megatron --moe-token-dispatcher-type alltoall / flex
# the expert all-to-all options [a2a-overlap, deepep] and their defaults: a plan states them
# only when set, so plans without them stay as they were
# [dualpipe] the pipeline schedule: Megatron's 1F1B (interleaved with virtual_stages > 1),
# or DeepSeek's DualPipe / DualPipeV (github.com/deepseek-ai/DualPipe)
SCHEDULES = ("1f1b", "dualpipe", "dualpipev")
A2A_DEFAULTS = {"a2a_overlap": False, "moe_dispatcher": "alltoall", "a2a_fp8": False,
                "a2a_node_limit": 0, "a2a_sms": 20}
# [capacity] token dropping (Megatron --moe-expert-capacity-factor, --moe-pad-expert-input-
# to-capacity, --moe-token-drop-policy): the user's choice, never searched, since it changes
# which tokens the experts learn from; stated in a plan only when set
CAPACITY_DEFAULTS = {"moe_capacity_factor": 0.0, "moe_pad_to_capacity": False,
                     "moe_token_drop_policy": "probs"}
DROP_POLICIES = ("probs", "position")


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
    # [pipeline-split] Megatron's split flags, pinned: the cut is then Megatron's, not searched
    first_stage_layers: int = 0  # --decoder-first-pipeline-num-layers (0: not set)
    last_stage_layers: int = 0  # --decoder-last-pipeline-num-layers (0: not set)
    embedding_in_split: bool = False  # --account-for-embedding-in-pipeline-split
    loss_in_split: bool = False  # --account-for-loss-in-pipeline-split
    # selective recompute: Megatron-Core's --recompute-modules (empty: its default, core_attn)
    recompute_modules: tuple[str, ...] = ()
    cp: int = 1  # context parallelism: the sequence split over cp ranks [cp-attention]
    cp_comm: str = "p2p"  # how attention exchanges KV over the CP group (CP_COMM)
    # [a2a-overlap] Megatron's combined 1F1B (--overlap-moe-expert-parallel-comm): one
    # micro-batch's forward and another's backward interleaved layer by layer, each one's
    # all-to-all behind the other's compute
    a2a_overlap: bool = False
    moe_dispatcher: str = "alltoall"  # [deepep] "deepep": node-deduplicated dispatch
    a2a_fp8: bool = False  # [deepep] tokens dispatched in fp8 (1 + 1/32 B a value), combined bf16
    a2a_node_limit: int = 0  # [deepep] node-limited routing: each token to <= M domains (0: any)
    a2a_sms: int = 20  # [a2a-overlap] SMs the overlapped dispatch / combine kernels hold
    moe_capacity_factor: float = 0.0  # [capacity] 0: dropless
    moe_pad_to_capacity: bool = False  # [capacity] every expert computes exactly capacity rows
    moe_token_drop_policy: str = "probs"  # [capacity] which copies drop; prices nothing
    pipeline_schedule: str = "1f1b"  # [dualpipe] SCHEDULES

    def __post_init__(self) -> None:
        if self.recompute == "selective":
            mods = canonical(tuple(self.recompute_modules)) or DEFAULT_MODULES
            why = module_error(tuple(self.recompute_modules))
            if why:
                raise StrategyError(why)
            object.__setattr__(self, "recompute_modules", mods)
        elif self.recompute_modules:
            raise StrategyError(f"recompute_modules {','.join(self.recompute_modules)} need "
                                f"recompute 'selective', not {self.recompute!r}")
        if min(self.tp, self.pp, self.dp, self.ep, self.etp, self.micro_batch,
               self.num_micro_batches, self.cp) < 1:
            raise StrategyError(f"every degree must be >= 1: {self.describe()}")
        if self.stage_width * self.pp != self.num_gpus:
            cp = f" * cp({self.cp})" if self.cp > 1 else ""
            raise StrategyError(
                f"tp({self.tp}){cp} * dp({self.dp}) * pp({self.pp}) = "
                f"{self.stage_width * self.pp} != GPUs({self.num_gpus})"
            )
        if self.stage_width % (self.ep * self.etp):
            raise StrategyError(
                f"ep({self.ep}) * etp({self.etp}) must divide tp*{'cp*' if self.cp > 1 else ''}"
                f"dp ({self.stage_width})"
            )
        if self.cp_comm not in CP_COMM:
            raise StrategyError(f"cp_comm {self.cp_comm!r} is not one of {CP_COMM}")
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
        if min(self.first_stage_layers, self.last_stage_layers) < 0:
            raise StrategyError("first/last stage layers must be >= 0")
        if (self.first_stage_layers or self.last_stage_layers) and (
                self.embedding_in_split or self.loss_in_split):
            raise StrategyError("first/last stage layers exclude account-for-embedding/loss "
                                "(Megatron refuses both)")
        if self.split_pinned and self.pp == 1:
            raise StrategyError("pipeline split flags need pp > 1")
        _check_a2a(self)
        _check_schedule(self)
        if self.overlap_tp_comm and not self.sequence_parallel:
            raise StrategyError("overlap_tp_comm needs sequence_parallel (the overlapped "
                                "collectives are its all-gather and reduce-scatter)")

    @property
    def split_pinned(self) -> bool:
        """The stage cut is Megatron's from pinned split flags, not the search's."""
        return bool(self.first_stage_layers or self.last_stage_layers
                    or self.embedding_in_split or self.loss_in_split)

    @property
    def stage_width(self) -> int:
        return self.tp * self.cp * self.dp

    @property
    def dp_cp(self) -> int:
        """The gradient group's size: Megatron reduces (and its distributed optimizer
        shards) over DP x CP, since every CP rank holds the same weights [cp-attention]."""
        return self.dp * self.cp

    @property
    def edp(self) -> int:
        return self.stage_width // (self.ep * self.etp)

    def describe(self) -> str:
        return (f"TP={self.tp} PP={self.pp} DP={self.dp} EP={self.ep} ETP={self.etp} "
                f"mb={self.micro_batch}x{self.num_micro_batches} recompute={self.recompute}"
                + (f"[{','.join(self.recompute_modules)}] "
                   if self.recompute_modules != DEFAULT_MODULES and self.recompute_modules
                   else " ")
                + f"zero={self.zero} sp={int(self.sequence_parallel)}"
                + (f" v={self.virtual_stages}" if self.virtual_stages > 1 else "")
                + ("" if self.overlap_grad_reduce else " no-dp-overlap")
                + (" tp-overlap" if self.overlap_tp_comm else "")
                + (f" spare={self.spare_slots}" if self.spare_slots else "")
                + (f" first={self.first_stage_layers}" if self.first_stage_layers else "")
                + (f" last={self.last_stage_layers}" if self.last_stage_layers else "")
                + (" emb-in-split" if self.embedding_in_split else "")
                + (" loss-in-split" if self.loss_in_split else "")
                + (f" cp={self.cp}" if self.cp > 1 else "")
                + (f" cp-{self.cp_comm}" if self.cp > 1 and self.cp_comm != "p2p" else "")
                + "".join(f" {k}={v}" for k, v in self.a2a_options().items())
                + "".join(f" {k}={v}" for k, v in self.capacity_options().items())
                + (f" {self.pipeline_schedule}" if self.dualpipe else ""))

    @property
    def dualpipe(self) -> bool:
        """DualPipe or DualPipeV [dualpipe]: both directions fed, F and B chunks paired."""
        return self.pipeline_schedule != "1f1b"


    def a2a_options(self) -> dict:
        """The expert all-to-all options set away from their defaults."""
        return {k: getattr(self, k) for k, v in A2A_DEFAULTS.items() if getattr(self, k) != v}

    def capacity_options(self) -> dict:
        """The token-dropping options set away from their defaults [capacity]."""
        return {k: getattr(self, k) for k, v in CAPACITY_DEFAULTS.items()
                if getattr(self, k) != v}

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("num_gpus")
        for key in SPLIT_KEYS:  # stated only when pinned: plans without them are unchanged
            if not d[key]:
                d.pop(key)
        if self.cp == 1:  # no CP: the plan reads as before context parallelism existed
            d.pop("cp")
            d.pop("cp_comm")
        for k in A2A_DEFAULTS:  # stated only when set (plans without them are unchanged)
            if k not in self.a2a_options():
                d.pop(k)
        for k in CAPACITY_DEFAULTS:
            if not self.moe_capacity_factor:
                d.pop(k)  # dropless: the plan reads as before capacities existed
        if not self.dualpipe:  # stated only when set: 1F1B plans are unchanged
            d.pop("pipeline_schedule")
        d["edp"] = self.edp
        if self.recompute == "selective":  # only then, so other plans keep their bytes
            d["recompute_modules"] = list(self.recompute_modules)
        else:
            d.pop("recompute_modules")
        return d

    # ---- rank layout -------------------------------------------------------------
    def rank(self, stage: int, dp_rank: int, tp_rank: int, cp_rank: int = 0) -> int:
        return stage * self.stage_width + (dp_rank * self.cp + cp_rank) * self.tp + tp_rank

    def stage_of(self, gpu: int) -> int:
        return gpu // self.stage_width

    def coords(self, gpu: int) -> dict[str, int]:
        local = gpu % self.stage_width
        c = {
            "stage": self.stage_of(gpu),
            "tp_rank": local % self.tp,
            "dp_rank": local // (self.tp * self.cp),
            "etp_rank": local % self.etp,
            "ep_rank": (local // self.etp) % self.ep,
            "edp_rank": local // (self.etp * self.ep),
        }
        if self.cp > 1:
            c["cp_rank"] = (local // self.tp) % self.cp
        return c

    def tp_group(self, gpu: int) -> list[int]:
        base = gpu - gpu % self.tp
        return list(range(base, base + self.tp))

    def dp_group(self, gpu: int) -> list[int]:
        """The gradient group: the GPUs of this stage with this TP rank, DP x CP of them
        (Megatron's data-parallel group with CP)."""
        stage0 = self.stage_of(gpu) * self.stage_width
        tp_rank = gpu % self.tp
        return [stage0 + d * self.tp + tp_rank for d in range(self.dp_cp)]

    def cp_group(self, gpu: int) -> list[int]:
        """The ring the sequence's chunks are split over: stride TP inside one DP replica."""
        base = gpu - gpu % (self.tp * self.cp) + gpu % self.tp
        return [base + j * self.tp for j in range(self.cp)]

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
    """Megatron-Core's argument checks of the all-to-all and capacity options
    (TransformerConfig)."""
    if not 0 <= s.moe_capacity_factor < float("inf"):  # NaN too
        raise StrategyError(f"moe_capacity_factor must be >= 0 (0: dropless), got "
                            f"{s.moe_capacity_factor}")
    if s.moe_token_drop_policy not in DROP_POLICIES:
        raise StrategyError(f"moe_token_drop_policy {s.moe_token_drop_policy!r} is not one "
                            f"of {DROP_POLICIES}")
    if s.moe_pad_to_capacity and not s.moe_capacity_factor:
        raise StrategyError("moe_pad_to_capacity needs moe_capacity_factor (Megatron)")
    if s.moe_pad_to_capacity and s.moe_dispatcher == "deepep":
        raise StrategyError("moe_pad_to_capacity needs moe_dispatcher alltoall (Megatron's "
                            "flex dispatcher refuses padding)")
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


def _check_schedule(s: Strategy) -> None:
    """[dualpipe] The conditions DualPipe.step / DualPipeV.step assert (deepseek-ai/DualPipe):
    micro-batches >= 2 x the PP ranks, and for DualPipe an even PP and micro-batch count;
    and what autopar does not model with them (interleaving, combined 1F1B, ZeRO-3, pinned
    Megatron split flags)."""
    name, p, m = s.pipeline_schedule, s.pp, s.num_micro_batches
    if name not in SCHEDULES:
        raise StrategyError(f"pipeline_schedule {name!r} is not one of {SCHEDULES}")
    if not s.dualpipe:
        return
    if p < 2:
        raise StrategyError(f"pipeline_schedule {name} needs pp >= 2, got pp={p}")
    if name == "dualpipe" and p % 2:
        raise StrategyError(f"pipeline_schedule dualpipe needs an even pp, got pp={p}")
    if m < 2 * p or (name == "dualpipe" and m % 2):
        raise StrategyError(f"pipeline_schedule {name} needs micro-batches >= 2 x pp "
                            f"({2 * p}){' and even' if name == 'dualpipe' else ''}, got {m}")
    if s.virtual_stages > 1:
        raise StrategyError(f"pipeline_schedule {name} excludes virtual_stages "
                            f"{s.virtual_stages} (its chunks are its own)")
    if s.a2a_overlap:
        raise StrategyError(f"pipeline_schedule {name} overlaps the all-to-all itself; "
                            "a2a_overlap (Megatron's combined 1F1B) is another schedule")
    if s.zero >= 3:
        raise StrategyError(f"pipeline_schedule {name} with zero 3 is not modelled")
    if s.split_pinned:
        raise StrategyError(f"pipeline_schedule {name} excludes Megatron's split flags "
                            "(Megatron-LM has no DualPipe)")
