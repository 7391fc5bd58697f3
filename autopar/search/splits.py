"""[pipeline-split] The stage cuts Megatron-Core states with its split flags, and whether a
pinned set of them is one it accepts: what a `--framework megatron` run searches instead of
a free cut, so that its plan exports exactly."""

from __future__ import annotations

from functools import lru_cache

from ..cost.pipeline import SplitError, megatron_bounds


@lru_cache(maxsize=256)
def megatron_split_options(layers: int, pp: int, vs: tuple[int, ...]) -> list[dict]:
    """[pipeline-split] The stage cuts a Megatron run can state, as split flags: the
    embedding and / or loss counted as layers where that divides evenly, and for each
    virtual-stage count the most balanced first / last stage layers Megatron accepts (the
    even split among them, stated as first = last = layers / pp). A Megatron plan's cut is
    then Megatron's own, so its export is exact."""
    out: list[dict] = []
    for emb, loss in ((True, True), (False, True), (True, False)):
        opt = {"embedding_in_split": emb, "loss_in_split": loss}
        if any(split_ok(layers, pp, v, opt) for v in vs):
            out.append(opt)
    per = -(-layers // pp)
    for v in vs:
        best: dict[int, list[dict]] = {}
        for first in range(0, 2 * per + v, v):
            for last in range(0, 2 * per + v, v):
                if not first and not last:
                    continue
                try:
                    counts = megatron_bounds(layers, pp, v, first, last)
                except SplitError:
                    continue
                worst = max(b - a for a, b in zip(counts, counts[1:], strict=False))
                best.setdefault(worst, []).append({"first_stage_layers": first,
                                                   "last_stage_layers": last})
        if best:
            for opt in best[min(best)][:2]:
                if opt not in out:
                    out.append(opt)
    return out


def split_ok(layers: int, pp: int, v: int, flags: dict) -> bool:
    try:
        megatron_bounds(layers, pp, v, flags.get("first_stage_layers", 0),
                        flags.get("last_stage_layers", 0), flags.get("embedding_in_split", False),
                        flags.get("loss_in_split", False))
    except SplitError:
        return False
    return True
