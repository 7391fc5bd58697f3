"""Structural checks of a plan's layout: degrees, rank layout, stage cut and divisibility.

These come first: each appends findings, and a layout that fails them is not handed to the
checks that depend on it (`placement`: TP shards and experts). None trusts the plan's own
derived fields (ranks, edp) without recomputing them from the degrees.
"""

from __future__ import annotations

from ..spec import HardwareSpec, ModelSpec, Workload
from .finding import Findings
from .recompute import Layout


def _ranges(xs: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    xs = sorted(set(xs))
    out: list[str] = []
    start = prev = None
    for x in xs + [None]:
        if start is None:
            start = prev = x
        elif x is not None and x == prev + 1:
            prev = x
        else:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = x
    return ", ".join(out)


# --------------------------------------------------------------------------- degrees
def check_degrees(f: Findings, s: dict, num_gpus: int, w: Workload | None) -> Layout | None:
    """tp x cp x dp x pp = GPUs, the expert folding ep x etp x edp = tp x cp x dp, and the
    batch and sequence split; returns the layout when it is sound enough to check anything
    that depends on it."""
    n0 = len(f.items)
    tp, pp, dp, ep, etp = (int(s[k]) for k in ("tp", "pp", "dp", "ep", "etp"))
    cp = int(s.get("cp", 1))
    if s["num_gpus"] != num_gpus:
        f.error("degrees", "strategy.num_gpus", "the plan is for another GPU count than the "
                "hardware", s["num_gpus"], num_gpus)
    if tp * cp * dp * pp != num_gpus:
        f.error("degrees", "strategy", "tp x cp x dp x pp must equal the GPU count",
                f"tp x cp x dp x pp = {tp}x{cp}x{dp}x{pp} = {tp * cp * dp * pp}", num_gpus)
    width = tp * cp * dp
    if cp > 1:
        _check_cp(f, s, cp, w)
    if width % (ep * etp):
        f.error("degrees", "strategy.ep", "experts fold onto the tp x dp GPUs of a stage: "
                "ep x etp must divide tp x dp", f"ep x etp = {ep}x{etp} = {ep * etp}",
                f"a divisor of tp x dp = {width}")
    elif s["edp"] != width // (ep * etp):
        f.error("degrees", "strategy.edp", "ep x etp x edp must equal tp x dp", s["edp"],
                width // (ep * etp))
    if "stage_width" in s and s["stage_width"] != width:
        f.error("degrees", "strategy.stage_width", "a stage has tp x dp GPUs",
                s["stage_width"], width)
    if s["sequence_parallel"] and tp == 1:
        f.error("degrees", "strategy.sequence_parallel", "sequence parallelism needs tp > 1",
                True, False)
    if w is not None:
        per = -(-w.batch // dp)
        mb, nmb = int(s["micro_batch"]), int(s["num_micro_batches"])
        if mb * nmb != per:
            f.error("degrees", "strategy.num_micro_batches",
                    "micro_batch x num_micro_batches must be the samples per replica, "
                    "ceil(batch / dp)", f"{mb}x{nmb} = {mb * nmb}", per)
        if s.get("samples_per_replica", per) != per:
            f.error("degrees", "strategy.samples_per_replica", "ceil(batch / dp)",
                    s["samples_per_replica"], per)
        if w.kind == "training" and w.batch < dp:
            f.error("degrees", "strategy.dp", "more data-parallel replicas than samples",
                    dp, f"<= {w.batch}")
    if len(f.items) > n0:
        return None
    return Layout.from_strategy(s)


def _check_cp(f: Findings, s: dict, cp: int, w: Workload | None) -> None:
    """[cp-attention] CP is a training split of the sequence into 2 cp load-balanced chunks."""
    if s.get("cp_comm", "p2p") not in ("p2p", "all_gather", "a2a"):
        f.error("degrees", "strategy.cp_comm", "one of p2p, all_gather, a2a", s["cp_comm"],
                "p2p")
    if w is None:
        return
    if w.kind != "training":
        f.error("degrees", "strategy.cp", "context parallelism splits training sequences",
                cp, 1)
    elif w.seq_len % (2 * cp):
        f.error("degrees", "strategy.cp", "the sequence splits into 2 x cp equal chunks",
                f"{w.seq_len} tokens over cp {cp}", f"cp with 2 cp dividing {w.seq_len}")


def check_ranks(f: Findings, gpus: list[dict], lay: Layout, hw: HardwareSpec | None) -> None:
    """Each GPU's id, stage, node and ranks follow the Megatron rank order of the degrees."""
    if len(gpus) != lay.num_gpus:
        f.error("degrees", "gpus", "one entry per GPU", len(gpus), lay.num_gpus)
    for i, g in enumerate(gpus[:lay.num_gpus]):
        c = lay.coords(i)
        if g["id"] != i:
            f.error("degrees", f"gpus[{i}].id", "GPU ids must be 0..n-1 in order", g["id"], i)
        if g["stage"] != c["stage"]:
            f.error("degrees", f"gpus[{i}].stage", "stage = id // (tp x dp)", g["stage"],
                    c["stage"])
        ranks = g.get("ranks") if isinstance(g.get("ranks"), dict) else {}
        for k, v in c.items():
            if k in ranks and ranks[k] != v:
                f.error("degrees", f"gpus[{i}].ranks.{k}",
                        "rank order: TP fastest, then CP, DP, PP (experts: ETP, EP, EDP)",
                        ranks[k], v)
        if hw is not None and g["node"] != i // hw.gpus_per_node:
            f.error("degrees", f"gpus[{i}].node", "node = id // gpus_per_node", g["node"],
                    i // hw.gpus_per_node)
        if isinstance(g.get("layers"), list) and c["stage"] < len(lay.stage_layers) and \
                tuple(g["layers"]) != lay.stage_layers[c["stage"]]:
            f.error("stages", f"gpus[{i}].layers", "a GPU holds its stage's layers",
                    g["layers"], list(lay.stage_layers[c["stage"]]))


def check_stages(f: Findings, lay: Layout, layers: int) -> bool:
    """The stage cut covers layers 0..L-1 in order, one non-empty range per stage."""
    n0 = len(f.items)
    if len(lay.stage_layers) != lay.pp:
        f.error("stages", "strategy.stage_layers", "one layer range per pipeline stage",
                len(lay.stage_layers), lay.pp)
    pos = 0
    for i, (a, b) in enumerate(lay.stage_layers):
        if a != pos or b < a:
            f.error("stages", f"strategy.stage_layers[{i}]", "stages must cover the layers in "
                    "order, each at least one layer", [a, b], f"[{pos}, >= {pos}]")
            break
        pos = b + 1
    else:
        if pos != layers:
            f.error("stages", "strategy.stage_layers", "the stages must end at the last layer",
                    pos - 1, layers - 1)
    return len(f.items) == n0


def check_divisibility(f: Findings, plan: dict, m: ModelSpec, lay: Layout) -> None:
    if m.heads % lay.tp:
        f.error("divisibility", "strategy.tp", "attention heads must split evenly over TP",
                f"{m.heads} heads over tp {lay.tp}", "tp dividing the heads")
    if m.mla is None and m.kv_heads % lay.tp and lay.tp % m.kv_heads:
        f.error("divisibility", "strategy.tp", "KV heads must split evenly over TP or be "
                "copied evenly (tp a multiple of kv_heads)",
                f"{m.kv_heads} KV heads over tp {lay.tp}", "tp dividing or divided by kv_heads")
    if not m.is_moe:
        if lay.ep > 1:
            f.error("divisibility", "strategy.ep", "a dense model has no experts", lay.ep, 1)
        return
    if lay.ep > m.experts:
        f.error("divisibility", "strategy.ep", "more EP ranks than experts", lay.ep,
                f"<= {m.experts}")
    elif m.experts % lay.ep and not _lists_placement(plan):
        f.error("divisibility", "strategy.ep", "experts do not split evenly over EP and the "
                "plan lists no placement", f"{m.experts} experts over ep {lay.ep}",
                "ep dividing the experts, or gpus[].experts listing them")


def _lists_placement(plan: dict) -> bool:
    return any(g.get("experts") for g in plan.get("gpus") or [] if isinstance(g, dict))

