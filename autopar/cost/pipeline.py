"""The pipeline as Megatron-Core cuts it: uneven first / last stages, interleaved chunks that
do not divide a stage evenly, and the pipeline time of such chunks [1f1b, pipeline-split].

A layout's stage cut is a list of contiguous layer ranges (`bounds`); with `v` virtual
stages each range is read as its stage's `v` chunks. Megatron splits a stage's layers over
its chunks as evenly as it can, so where `v` does not divide a stage's `n` layers its
largest chunk holds ceil(n / v) of them: that chunk, not n / v, is what the fill and drain
of the pipeline wait for.
"""

from __future__ import annotations

import math


class SplitError(ValueError):
    """A first / last stage pin Megatron would refuse; the message says which rule."""


def chunk_share(layers: int, v: int) -> float:
    """The largest of a stage's v chunks as a share of the stage: ceil(n / v) / n (1 / v when
    v divides n; a stage with fewer layers than chunks has whole layers as chunks)."""
    if v <= 1 or layers <= 0 or layers % v == 0:
        return 1.0 / max(v, 1)
    return math.ceil(layers / v) / layers


def even_chunks(counts: list[int], v: int) -> bool:
    """Every stage's layers split into v equal chunks (the equal-chunk formula holds)."""
    return v <= 1 or all(n % v == 0 for n in counts)


def pipeline_time(sum_busy: float, max_busy: float, m: int, v: int = 1) -> float:
    """[1f1b] sum over stages of one micro-batch + (m - 1) x the slowest stage; interleaving
    over v equal chunks shrinks the fill and drain by v: sum / v + (m - 1/v) x the slowest.
    Increasing in both busy figures, so bounds on them bound the pipeline; it is also a
    lower bound of `chunked_pipeline` (every chunk share is >= 1 / v)."""
    return sum_busy / v + (m - 1 / v) * max_busy


def chunked_pipeline(busy: list[float], counts: list[int], m: int, v: int = 1
                     ) -> tuple[float, float]:
    """(pipeline, bubble) of stages with `busy` per micro-batch and `counts` layers
    [pipeline-split]: the slowest stage c runs m micro-batches and waits, in the fill and
    drain, for one chunk of every other stage, its largest: m busy_c + sum_{k != c} r_k busy_k
    with r_k = `chunk_share`. Equal chunks (r = 1 / v) give `pipeline_time` exactly."""
    c = max(range(len(busy)), key=busy.__getitem__)
    if even_chunks(counts, v):
        # (sum - slowest) / v so that float noise cannot make it negative
        return pipeline_time(sum(busy), busy[c], m, v), (sum(busy) - busy[c]) / v
    bubble = sum(chunk_share(n, v) * b for k, (n, b) in enumerate(zip(counts, busy, strict=True))
                 if k != c)
    return m * busy[c] + bubble, bubble


def megatron_bounds(layers: int, pp: int, v: int, first: int = 0, last: int = 0,
                    embedding: bool = False, loss: bool = False) -> list[int]:
    """The stage cut Megatron-Core builds from `--decoder-first-pipeline-num-layers` (first),
    `--decoder-last-pipeline-num-layers` (last) or `--account-for-embedding-in-pipeline-split`
    / `--account-for-loss-in-pipeline-split` (embedding / loss take one layer's slot), with its
    checks (TransformerConfig.__post_init__): first and last > 0 and divisible by v, the middle
    layers divisible by the middle stages and each middle stage's by v; the account-for
    options need layers + 1 (+ 1) divisible by pp and by pp x v, and exclude first / last."""
    if (first or last) and (embedding or loss):
        raise SplitError("first/last stage layers cannot be combined with "
                         "account-for-embedding/loss (Megatron refuses both)")
    if first < 0 or last < 0:
        raise SplitError("first/last stage layers must be > 0")
    if embedding or loss:
        slots = layers + int(embedding) + int(loss)
        if slots % pp or (slots // pp) % v:
            raise SplitError(f"{layers} layers + {int(embedding) + int(loss)} (embedding/loss) "
                             f"must divide by pp ({pp}) and each stage's {slots / pp:g} by "
                             f"virtual stages ({v})")
        per = slots // pp
        counts = [per] * pp
        counts[0] -= int(embedding)
        counts[-1] -= int(loss)
    else:
        ends = [x for x in (first, last) if x]
        if any(x % v for x in ends):
            raise SplitError(f"first/last stage layers ({first}, {last}) must be multiples of "
                             f"the virtual stages ({v})")
        middle, mid_stages = layers - sum(ends), pp - len(ends)
        if bool(middle) != bool(mid_stages) or middle < 0:
            raise SplitError(f"{middle} middle layers for {mid_stages} middle stages")
        per = middle // mid_stages if mid_stages else 0
        if mid_stages and (middle % mid_stages or per % v):
            raise SplitError(f"the {middle} middle layers must divide by the {mid_stages} middle "
                             f"stages and each stage's by the virtual stages ({v})")
        counts = ([first] if first else []) + [per] * mid_stages + ([last] if last else [])
        if pp == 1:
            counts = [layers]
    if min(counts) < 1:
        raise SplitError(f"a stage would hold no layer: {counts}")
    bounds = [0]
    for n in counts:
        bounds.append(bounds[-1] + n)
    return bounds


def pinned_bounds(layers: int, s) -> list[int]:
    """Megatron's cut of a layout (`Strategy`) whose split flags are pinned."""
    return megatron_bounds(layers, s.pp, s.virtual_stages, s.first_stage_layers,
                           s.last_stage_layers, s.embedding_in_split, s.loss_in_split)


def chunk_counts(n: int, v: int) -> list[int]:
    """A stage's n layers over its v chunks, as evenly as possible: the extra layers go to
    the middle chunks first, then to the last and the first (the fill's and the drain's)."""
    base, extra = divmod(n, v)
    out = [base] * v
    for i in (list(range(1, v - 1)) + [v - 1, 0])[:extra]:
        out[i] += 1
    return out


def megatron_layout(counts: list[int], v: int, mtp: int = 0) -> str:
    """`--pipeline-model-parallel-layout` of a cut: the p x v virtual stages in Megatron's
    order (chunk j of stage k is virtual stage j p + k), E the embedding, t a decoder layer,
    m an MTP layer, L the loss; `|` separates virtual stages. `counts` are the decoder
    layers of each stage (MTP layers not included: they go in the last chunk)."""
    p = len(counts)
    chunks = [chunk_counts(n, v) for n in counts]
    parts = []
    for j in range(v):
        for k in range(p):
            s = ("E" if j == 0 and k == 0 else "") + "t" * chunks[k][j]
            if j == v - 1 and k == p - 1:
                s += "m" * mtp + "L"
            parts.append(s)
    return "|".join(parts)


def dualpipe_pipeline(busy: list[float], bwd: list[float], wgrad: list[float],
                      counts: list[int], m: int, schedule: str) -> tuple[float, float]:
    """[dualpipe] (pipeline, bubble) of DualPipe / DualPipeV on p ranks (DeepSeek-V3 report
    sec. 3.2.1, Table 2; github.com/deepseek-ai/DualPipe): every rank runs its m chunk pairs,
    a forward and another micro-batch's backward overlapped (F&B, the stage's `busy` with the
    paired all-to-all exposure), and idles (PP/2 - 1)(F&B + B - 3W), PP the pipeline stages:
    p for DualPipe (each rank holds stage k and its mirror p - 1 - k), 2p for DualPipeV
    (each rank's layers are its two V chunks, the largest `chunk_share(n, 2)` of them).
    B is the full backward of a chunk, W its weight-gradient part. Each term is taken at
    its slowest stage, so the pipeline is m x slowest + bubble."""
    if schedule == "dualpipe":
        coeff, shares = len(busy) / 2 - 1, [1.0] * len(busy)
    else:
        coeff, shares = len(busy) - 1, [chunk_share(n, 2) for n in counts]
    chunk = max(r * max(0.0, f + b - 3 * w)
                for r, f, b, w in zip(shares, busy, bwd, wgrad, strict=True))
    bubble = coeff * chunk
    return m * max(busy) + bubble, bubble


def mirror(k: int, p: int) -> int:
    """[dualpipe] The stage whose copy DualPipe's rank k also holds."""
    return p - 1 - k
