"""Uneven shards inside a group of GPUs of unequal speed or memory: attention heads (whole
GQA key-value groups) and FFN columns of a mixed tensor-parallel group, expert slots per GPU
of an expert-parallel group. Pure functions: the time of a sharded layer is set by its
slowest rank, units_i / speed_i, so each assignment minimises max_i units_i / speed_i
under each GPU's cap (what its memory holds).

The mixed pipeline (`hetero`) keeps every stage on one GPU type, so its own TP and EP groups
split evenly; these are what a stage that must span types (or a node with one slower
card) would run, and what `check.mixed` verifies a stated uneven split against."""

from __future__ import annotations

import heapq
from dataclasses import dataclass


class SplitError(ValueError):
    """An uneven split that cannot exist (fewer units than ranks, caps too small)."""


def apportion(units: int, speeds: list[float], caps: list[int] | None = None,
              floor: int = 1) -> list[int]:
    """`units` whole units over ranks of `speeds`, each rank at least `floor` and at most
    caps[i], minimising the slowest rank's units / speed. Greedy (each next unit to the
    rank that would finish it first) is exact for this separable min-max: the k-th unit's
    finishing time on a rank only grows with k. Ties go to the lower rank."""
    n = len(speeds)
    if n == 0 or any(s <= 0 for s in speeds):
        raise SplitError("every rank needs a positive speed")
    caps = list(caps) if caps is not None else [units] * n
    if len(caps) != n:
        raise SplitError(f"{len(caps)} caps for {n} ranks")
    if floor * n > units:
        raise SplitError(f"{units} units cannot give {n} ranks {floor} each")
    if any(c < floor for c in caps) or sum(caps) < units:
        raise SplitError(f"the ranks hold {sum(caps)} units (caps {caps}); {units} needed")
    out = [floor] * n
    heap = [((out[i] + 1) / speeds[i], i) for i in range(n) if out[i] < caps[i]]
    heapq.heapify(heap)
    for _ in range(units - floor * n):
        _, i = heapq.heappop(heap)
        out[i] += 1
        if out[i] < caps[i]:
            heapq.heappush(heap, ((out[i] + 1) / speeds[i], i))
    return out


def slowest_rank(units: list[int], speeds: list[float]) -> float:
    """The sharded layer's time in units of one unit on a speed-1 GPU: its slowest rank."""
    return max(u / s for u, s in zip(units, speeds, strict=True))


@dataclass(frozen=True)
class HeadSplit:
    q_heads: list[int]  # per TP rank
    kv_heads: list[int]


def split_heads(heads: int, kv_heads: int, speeds: list[float]) -> HeadSplit:
    """Attention heads over a mixed TP group: whole key-value groups (GQA: heads / kv_heads
    query heads share one KV head, and must stay on its rank), apportioned by speed."""
    if kv_heads <= 0 or heads % kv_heads:
        raise SplitError(f"{heads} heads do not form {kv_heads} key-value groups")
    groups = apportion(kv_heads, speeds)
    per = heads // kv_heads
    return HeadSplit([g * per for g in groups], groups)


def split_columns(columns: int, speeds: list[float], quantum: int = 128) -> list[int]:
    """FFN columns (FC1's outputs, FC2's inputs) over a mixed TP group, in whole tiles of
    `quantum` columns (a GEMM tile; a ragged tile wastes its rank's tensor cores)."""
    if columns % quantum:
        raise SplitError(f"{columns} columns are not whole tiles of {quantum}")
    return [t * quantum for t in apportion(columns // quantum, speeds)]


def expert_slots(experts: int, speeds: list[float], memory_bytes: list[float],
                 expert_bytes: float, fixed_bytes: list[float] | None = None) -> list[int]:
    """Expert slots per GPU of an EP group: each GPU holds what its memory has room for
    (after `fixed_bytes`: dense weights, activations) and takes experts by speed, so a GPU
    with half the memory never holds more than its memory allows, and a faster one more."""
    fixed = fixed_bytes or [0.0] * len(speeds)
    caps = [max(0, int((m - f) // expert_bytes)) for m, f in zip(memory_bytes, fixed,
                                                                   strict=True)]
    return apportion(experts, speeds, caps)
