"""The pipeline schedules' figures recomputed from docs/cost-model.md alone (not from
`autopar.cost.pipeline`): the micro-batches a stage holds in flight, the pipeline time of
1F1B (interleaved, uneven chunks) [1f1b, pipeline-split] and of DualPipe / DualPipeV
[dualpipe], and the layout conditions DualPipe asserts (deepseek-ai/DualPipe)."""

from __future__ import annotations

IDENTITY_TOL = 1e-6


def in_flight(lay, stage: int) -> float:
    """Micro-batches whose activations a training stage holds at once [pipeline-memory]:
    min(p - k, m) under 1F1B; interleaved over v chunks, Megatron's warm-up runs
    2 (p - k - 1) + (v - 1) p chunk forwards before the first backward, each chunk 1/v of
    the stage (Korthikanti et al. 2022 sec. 4.2.3); combined 1F1B runs one chunk more.
    [dualpipe] DualPipe holds PP + 1 chunks of a stage, DualPipeV 2 PP + 1 of half a rank."""
    p, v, m = lay.pp, lay.virtual_stages, lay.num_micro_batches
    if lay.pipeline_schedule == "dualpipe":
        return p + 1
    if lay.pipeline_schedule == "dualpipev":
        return p + 0.5
    more = 1 if lay.a2a_overlap else 0  # [a2a-overlap] one more chunk forward first
    if v == 1:
        return min(p - stage + more, m)
    return min(2 * (p - stage - 1) + (v - 1) * p + 1 + more, m * v) / v


def pipeline_time(busy: list[float], m: int, v: int = 1,
                  counts: list[int] | None = None) -> float:
    """[1f1b] sum over stages of one micro-batch + (m - 1) x the slowest; interleaving over
    v chunks shrinks fill and drain by v: sum / v + (m - 1/v) x the slowest. [pipeline-split]
    Where a stage's `counts` layers do not split evenly over v chunks, the slowest stage c
    waits for the largest chunk of each other stage: m busy_c + sum_{k != c} busy_k
    ceil(n_k / v) / n_k."""
    if v > 1 and counts and any(n % v for n in counts):
        c = max(range(len(busy)), key=busy.__getitem__)
        return m * busy[c] + sum(b * (-(-n // v) / n if n else 1 / v) for k, (b, n) in
                                 enumerate(zip(busy, counts, strict=True)) if k != c)
    return sum(busy) / v + (m - 1 / v) * max(busy)


def dualpipe_time(schedule: str, busy: list[float], back: list[float], wgrad: list[float],
                  counts: list[int], m: int) -> tuple[float, float]:
    """[dualpipe] (pipeline, bubble): m x the slowest stage's paired F&B + (PP/2 - 1) x the
    largest chunk's F&B + B - 3 W (DeepSeek-V3 Table 2), PP = p stages for DualPipe, 2p for
    DualPipeV, whose chunk is the larger half of its rank, ceil(n / 2) of n layers."""
    p = len(busy)
    if schedule == "dualpipe":
        coeff, share = p / 2 - 1, [1.0] * p
    else:
        coeff, share = p - 1, [(-(-n // 2)) / n if n else 0.5 for n in counts]
    worst = max(r * max(0.0, f + b - 3 * w)
                for r, f, b, w in zip(share, busy, back, wgrad, strict=True))
    return m * max(busy) + coeff * worst, coeff * worst


def mirror_stage(lay, stage: int) -> int | None:
    """[dualpipe] The stage whose copy DualPipe's rank `stage` also holds."""
    return lay.pp - 1 - stage if lay.pipeline_schedule == "dualpipe" else None


def check_layout(f, lay) -> None:
    """DualPipe.step / DualPipeV.step's asserts: micro-batches >= 2 PP; DualPipe: PP even and
    micro-batches even; neither with interleaving or combined 1F1B."""
    name = lay.pipeline_schedule
    if name == "1f1b":
        return
    if name not in ("dualpipe", "dualpipev"):
        f.error("strategy", "strategy.pipeline_schedule", "1f1b, dualpipe or dualpipev",
                name, None)
        return
    p, m = lay.pp, lay.num_micro_batches
    ok = p >= 2 and m >= 2 * p and lay.virtual_stages == 1 and not lay.a2a_overlap
    if name == "dualpipe":
        ok = ok and p % 2 == 0 and m % 2 == 0
    if not ok:
        f.error("strategy", "strategy.pipeline_schedule", f"{name} needs pp >= 2"
                + (" even" if name == "dualpipe" else "") + ", micro-batches >= 2 pp"
                + (" and even" if name == "dualpipe" else "") + ", no interleaving or "
                "a2a_overlap", name, f"pp={p} m={m} v={lay.virtual_stages}")


def check_stage_terms(f, stages: list[dict]) -> bool:
    """[dualpipe] Each stage's B and W are parts of its micro-batch: the weight-gradient
    GEMMs are at most half its backward compute (the input-gradient GEMMs are the other
    half, elementwise kernels come on top) and B holds its backward compute and recompute
    and no more than the stage's paired F&B. True when all are present and numbers."""
    tol = 1 + IDENTITY_TOL
    for k, st in enumerate(stages):
        keys = ("backward_s", "weight_grad_s", "backward_compute_s", "recompute_s",
                "per_micro_batch_s")
        if not all(isinstance(st.get(x), (int, float)) for x in keys):
            f.error("timing", f"timing.per_stage[{k}]", "DualPipe's B and W are stated",
                    None, "backward_s, weight_grad_s")
            return False
        if not 0 <= st["weight_grad_s"] <= st["backward_compute_s"] / 2 * tol:
            f.error("timing", f"timing.per_stage[{k}].weight_grad_s", "between 0 and half "
                    "the backward compute", st["weight_grad_s"], st["backward_compute_s"] / 2)
        low = st["backward_compute_s"] + st["recompute_s"]
        if not low / tol <= st["backward_s"] <= st["per_micro_batch_s"] * tol:
            f.error("timing", f"timing.per_stage[{k}].backward_s", "backward compute + "
                    "recompute <= B <= the micro-batch", st["backward_s"],
                    f"[{low:.6g}, {st['per_micro_batch_s']:.6g}]")
    return True
