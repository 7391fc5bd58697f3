"""The small model's layers, written once for the reference and for a shard of it.

A layer takes its weights (full, or the slices one GPU holds) and a `Comm` that does the
plan's collectives: Megatron's conjugate pair for tensor parallelism (`f`: identity forward,
all-reduce of the gradient backward, before a column-parallel GEMM; `g`: all-reduce forward,
identity backward, after a row-parallel one), the TP group's split and gather of the tokens
a rank dispatches, and the expert all-to-all. The reference runs the same code with a Comm
whose groups are one process, so the two differ only by the placement. Needs torch.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .shrink import Small

DTYPE = torch.float64


class _AllReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _AllReduceBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def _gather_rows(x, group, sizes: list[int]):
    """All-gather of row blocks of the given sizes (gloo gathers equal blocks: padded)."""
    pad = torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype)
    pad[: x.shape[0]] = x
    parts = [torch.empty_like(pad) for _ in sizes]
    dist.all_gather(parts, pad, group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


class _Gather(torch.autograd.Function):
    """All-gather rows over the TP group (forward); each rank's own rows of the gradient,
    which is the same on every rank (backward)."""

    @staticmethod
    def forward(ctx, x, group, sizes, rank):
        ctx.lo, ctx.hi = sum(sizes[:rank]), sum(sizes[:rank + 1])
        return _gather_rows(x, group, sizes)

    @staticmethod
    def backward(ctx, grad):
        return grad[ctx.lo:ctx.hi].clone(), None, None, None


class _Split(torch.autograd.Function):
    """Own rows of a TP-replicated tensor (forward); the rows' gradients all-gathered, so
    the replicated input gets its whole gradient on every rank (backward)."""

    @staticmethod
    def forward(ctx, x, group, sizes, rank):
        ctx.group, ctx.sizes, ctx.rank = group, sizes, rank
        lo = sum(sizes[:rank])
        return x[lo:lo + sizes[rank]].clone()

    @staticmethod
    def backward(ctx, grad):
        return _gather_rows(grad, ctx.group, ctx.sizes), None, None, None


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, send, recv):
        ctx.group, ctx.send, ctx.recv = group, send, recv
        out = torch.empty((sum(recv), *x.shape[1:]), dtype=x.dtype)
        dist.all_to_all_single(out, x.contiguous(), recv, send, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        out = torch.empty((sum(ctx.send), *grad.shape[1:]), dtype=grad.dtype)
        dist.all_to_all_single(out, grad.contiguous(), ctx.send, ctx.recv, group=ctx.group)
        return out, None, None, None


@dataclass
class Comm:
    """The groups one GPU takes part in (None: a group of one, nothing to exchange)."""

    tp_group: object = None
    tp: int = 1
    tp_rank: int = 0
    ep_group: object = None
    ep_size: int = 1
    ep_index: int = 0  # this GPU's index in the EP group
    spans: dict = field(default_factory=dict)  # Gpu.spans: this GPU's heads per layer
    calls: dict[str, int] = field(default_factory=dict)

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def f(self, x):
        if self.tp_group is None:
            return x
        return _AllReduceBackward.apply(x, self.tp_group)

    def g(self, x):
        if self.tp_group is None:
            return x
        self._count("tp all-reduce")
        return _AllReduce.apply(x, self.tp_group)

    def sizes(self, n: int) -> list[int]:
        base, extra = divmod(n, self.tp)
        return [base + (1 if i < extra else 0) for i in range(self.tp)]

    def split(self, x):
        if self.tp_group is None:
            return x
        return _Split.apply(x, self.tp_group, self.sizes(x.shape[0]), self.tp_rank)

    def gather(self, x, n: int, sizes: list[int] | None = None):
        if self.tp_group is None:
            return x
        return _Gather.apply(x, self.tp_group, sizes or self.sizes(n), self.tp_rank)

    def all_to_all(self, x, send: list[int], recv: list[int]):
        if self.ep_group is None:
            return x
        self._count("ep all-to-all")
        return _AllToAll.apply(x, self.ep_group, send, recv)

    def counts(self, send: list[int]) -> list[int]:
        if self.ep_group is None:
            return list(send)
        out = torch.empty(self.ep_size, dtype=torch.int64)
        dist.all_to_all_single(out, torch.tensor(send, dtype=torch.int64), group=self.ep_group)
        return out.tolist()

    def ids(self, x, send: list[int], recv: list[int]):
        if self.ep_group is None:
            return x
        out = torch.empty(sum(recv), dtype=x.dtype)
        dist.all_to_all_single(out, x.contiguous(), recv, send, group=self.ep_group)
        return out


# --------------------------------------------------------------------------- weights
def init_weights(s: Small, seed: int) -> dict[str, torch.Tensor]:
    """The full small model, each tensor drawn from its own seeded stream (by name), so the
    draw does not depend on which tensors exist or in what order they are made."""
    def draw(name: str, *shape: int, fan_in: int | None = None, norm: bool = False):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        t = torch.randn(*shape, generator=gen, dtype=DTYPE)
        return 1.0 + 0.1 * t if norm else t / math.sqrt(fan_in or shape[-1])

    h, hd = s.hidden, s.head_dim
    up = 2 if s.gated else 1
    w = {"embedding": draw("embedding", s.vocab, h, fan_in=1),
         "final_norm": draw("final_norm", h, norm=True)}
    if not s.tie:
        w["lm_head"] = draw("lm_head", s.vocab, h)
    for L, moe in zip(s.layers, s.moe, strict=True):
        p = f"L{L}."
        w[p + "norm_attn"] = draw(p + "norm_attn", h, norm=True)
        w[p + "q"] = draw(p + "q", s.heads * hd, h)
        w[p + "k"] = draw(p + "k", s.kv_heads * hd, h)
        w[p + "v"] = draw(p + "v", s.kv_heads * hd, h)
        w[p + "out"] = draw(p + "out", h, s.heads * hd)
        w[p + "norm_mlp"] = draw(p + "norm_mlp", h, norm=True)
        mlps = [("", s.ffn)] if not moe else ([("shared_", s.shared_ffn)] if s.shared else [])
        for prefix, f in mlps:
            w[p + prefix + "fc1"] = draw(p + prefix + "fc1", up * f, h)
            w[p + prefix + "fc2"] = draw(p + prefix + "fc2", h, f)
        if moe:
            w[p + "router"] = draw(p + "router", s.experts, h)
            for e in range(s.experts):
                q = f"{p}e{e}."
                w[q + "fc1"] = draw(q + "fc1", up * s.expert_ffn, h)
                w[q + "fc2"] = draw(q + "fc2", h, s.expert_ffn)
    return w


def rows_index(full_rows: int, span: tuple[int, int], gated: bool) -> torch.Tensor:
    """Rows of an FC1 weight a column shard [a, b) holds (gated: gate rows and up rows)."""
    a, b = span
    idx = list(range(a, b))
    if gated:
        half = full_rows // 2
        idx += [half + i for i in range(a, b)]
    return torch.tensor(idx, dtype=torch.int64)


# --------------------------------------------------------------------------- layers
def rms(x, w):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-6) * w


def _act(y, gated: bool):
    if not gated:
        return F.gelu(y)
    a, b = y.chunk(2, dim=-1)
    return F.silu(a) * b


def attention(x, w: dict, p: str, s: Small, q_span, kv_span, comm: Comm):
    """Column-parallel QKV over this rank's query heads and their KV heads, causal
    attention, row-parallel output projection with one all-reduce."""
    n, t, _ = x.shape
    hd, group = s.head_dim, s.heads // s.kv_heads
    h_in = comm.f(rms(x, w[p + "norm_attn"]))
    nq, nkv = q_span[1] - q_span[0], kv_span[1] - kv_span[0]
    q = (h_in @ w[p + "q"].T).view(n, t, nq, hd).transpose(1, 2)
    k = (h_in @ w[p + "k"].T).view(n, t, nkv, hd).transpose(1, 2)
    v = (h_in @ w[p + "v"].T).view(n, t, nkv, hd).transpose(1, 2)
    kv_of = torch.tensor([i // group - kv_span[0] for i in range(*q_span)], dtype=torch.int64)
    k, v = k[:, kv_of], v[:, kv_of]
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    o = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v
    o = o.transpose(1, 2).reshape(n, t, nq * hd)
    return x + comm.g(o @ w[p + "out"].T)


def mlp(x, fc1, fc2, gated: bool, comm: Comm):
    """Column-parallel FC1, row-parallel FC2, one all-reduce."""
    return comm.g(_act(comm.f(x) @ fc1.T, gated) @ fc2.T)


@dataclass(frozen=True)
class Routing:
    """Where a GPU sends each expert's tokens: for every expert, the EP group members
    (indices) of the replica it picks, one list per replica, in the order the routing rule
    takes them (each member: all ETP ranks of that replica's EP rank)."""

    replicas: dict[int, list[list[int]]]
    local: dict[int, tuple[torch.Tensor, torch.Tensor]]  # expert -> its (fc1, fc2) here


def moe(x, w: dict, p: str, s: Small, route: Routing, comm: Comm):
    """Router (replicated), top-k, this TP rank's share of the tokens dispatched by
    all-to-all to a replica of each chosen expert (round robin over the replicas the rule
    allows), expert FFNs on their ETP shard, combined back by the reverse all-to-all with
    the gate weights, then the TP group's shares gathered; plus the shared experts."""
    n, t, h = x.shape
    h_in = rms(x, w[p + "norm_mlp"])
    flat = h_in.reshape(n * t, h)
    probs = (flat @ w[p + "router"].T).softmax(-1)
    top, idx = probs.topk(s.top_k, dim=-1)
    gates = top / top.sum(-1, keepdim=True)
    xs, gs = comm.split(flat), comm.split(gates)
    lo = sum(comm.sizes(n * t)[:comm.tp_rank])
    ids = idx[lo:lo + xs.shape[0]].reshape(-1)
    tok = torch.arange(xs.shape[0]).repeat_interleave(s.top_k)
    turn: dict[int, int] = {}
    dest = [[] for _ in range(comm.ep_size)]
    for j, e in enumerate(ids.tolist()):
        reps = route.replicas[e]
        k = turn.get(e, 0)
        turn[e] = k + 1
        for member in reps[k % len(reps)]:
            dest[member].append(j)
    order = torch.tensor([j for d in dest for j in d], dtype=torch.int64)
    send = [len(d) for d in dest]
    recv = comm.counts(send)
    got = comm.all_to_all(xs[tok[order]], send, recv)
    got_ids = comm.ids(ids[order], send, recv)
    y = torch.zeros_like(got)
    for e, (fc1, fc2) in route.local.items():
        rows = (got_ids == e).nonzero().flatten()
        if rows.numel():
            y = y.index_add(0, rows, _act(got[rows] @ fc1.T, s.gated) @ fc2.T)
    back = comm.all_to_all(y, recv, send)
    pairs = torch.zeros(ids.numel(), h, dtype=x.dtype).index_add(0, order, back)
    routed = torch.zeros_like(xs).index_add(0, tok, pairs * gs.reshape(-1, 1))
    out = comm.gather(routed, n * t).reshape(n, t, h)
    if s.shared:
        out = out + mlp(h_in, w[p + "shared_fc1"], w[p + "shared_fc2"], s.gated, comm)
    return x + out


def embed(ids, table, span: tuple[int, int], comm: Comm):
    """Vocab-parallel embedding: rows outside this rank's span are zero, then all-reduce."""
    a, b = span
    inside = (ids >= a) & (ids < b)
    local = torch.where(inside, ids - a, torch.zeros_like(ids))
    out = table[local] * inside.unsqueeze(-1)
    return comm.g(out)


def head(x, w_final, table, comm: Comm, spans: list[tuple[int, int]] | None = None):
    """Final norm, vocab-parallel LM head; the TP ranks' logits (vocab `spans`, in TP rank
    order) gathered and put in vocab order."""
    y = comm.f(rms(x, w_final)) @ table.T
    n, t, v = y.shape
    if comm.tp_group is None or not spans:
        return y
    sizes = [b - a for a, b in spans]
    parts = comm.gather(y.permute(2, 0, 1).reshape(v, n * t), 0, sizes)
    order = torch.tensor([i for a, b in spans for i in range(a, b)], dtype=torch.int64)
    parts = parts[order.argsort()]
    return parts.reshape(-1, n, t).permute(1, 2, 0)
