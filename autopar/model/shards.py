"""Which slice of each tensor a tensor-parallel rank holds (Megatron column/row split)."""

from __future__ import annotations


def split(n: int, parts: int, index: int) -> tuple[int, int]:
    """Contiguous near-equal split of range(n): the first n % parts pieces are one longer."""
    base, extra = divmod(n, parts)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def tp_shard(component: str, role: str, dims: dict[str, int], tp: int, rank: int) -> dict:
    """The shard of `component` on TP rank `rank`: dimension, [start, end) and its extent."""
    if role == "replicated" or tp == 1 and role not in ("vocab",):
        dim = _dim(component, role)
        return {"dim": dim, "start": 0, "end": dims.get(dim, 0), "of": dims.get(dim, 0),
                "replicated": role == "replicated"}
    dim = _dim(component, role)
    n = dims[dim]
    if component == "qkv" and "kv_heads" in dims:  # query heads split; KV heads split or copied
        a, b = split(n, tp, rank)
        kv = dims["kv_heads"]
        if kv >= tp:
            ka, kb = split(kv, tp, rank)
        else:
            ka = rank * kv // tp
            kb = ka + 1
        return {"dim": dim, "start": a, "end": b, "of": n,
                "kv_heads": {"start": ka, "end": kb, "of": kv, "copies": max(1, tp // kv)}}
    a, b = split(n, tp, rank)
    return {"dim": dim, "start": a, "end": b, "of": n}


def _dim(component: str, role: str) -> str:
    if role == "vocab":
        return "vocab"
    if role == "heads" or component == "qkv":
        return "heads"
    if component == "out":
        return "rows"  # row-parallel: input features (heads x head_dim)
    if role == "column":
        return "columns"
    if role == "row":
        return "rows"
    return "none"
