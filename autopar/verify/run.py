"""Run the small model as the plan places it, one CPU process per GPU (torch.distributed,
gloo), and the same model on one process; compare outputs and gradients. Needs torch.

Each process holds its GPU's shards, runs its pipeline stage over its DP replica's
micro-batches (every forward, then every backward, passing activations and their gradients
to the neighbouring stages by send / recv), all-reduces the gradients of replicated weights
over its DP group and the experts' over every GPU holding the same expert shard (replicas
within an EP group and across expert-data-parallel groups alike), and saves what it holds.
The parent slices the reference's tensors the same way and compares.
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..errors import AutoparError
from . import layers as ly
from .shard import groups, local_index, peer, routing, take
from .shrink import Layout

TIMEOUT_S = 120


def batch(lay: Layout, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + 7)
    shape = (lay.samples, lay.seq)
    return (torch.randint(lay.small.vocab, shape, generator=gen),
            torch.randint(lay.small.vocab, shape, generator=gen))


def stage_forward(x, w, lay: Layout, stage: int, comm: ly.Comm, routes: dict):
    s = lay.small
    for L in lay.stage_layers[stage]:
        p = f"L{L}."
        x = ly.attention(x, w, p, s, comm.spans[p + "q"], comm.spans[p + "kv"], comm)
        if s.moe[s.layers.index(L)]:
            x = ly.moe(x, w, p, s, routes[L], comm)
        else:
            x = x + ly.mlp(ly.rms(x, w[p + "norm_mlp"]), w[p + "fc1"], w[p + "fc2"], s.gated,
                           comm)
    return x


def reference(lay: Layout, seed: int) -> dict[str, Any]:
    """The whole small model on one process: logits, loss and every weight's gradient."""
    s = lay.small
    w = {k: v.requires_grad_() for k, v in ly.init_weights(s, seed).items()}
    ids, targets = batch(lay, seed)
    comm = ly.Comm()
    for L in s.layers:
        comm.spans[f"L{L}.q"], comm.spans[f"L{L}.kv"] = (0, s.heads), (0, s.kv_heads)
    everything = {L: ly.Routing({e: [[0]] for e in range(s.experts)},
                                {e: (w[f"L{L}.e{e}.fc1"], w[f"L{L}.e{e}.fc2"])
                                 for e in range(s.experts)})
                  for L, moe in zip(s.layers, s.moe, strict=True) if moe}
    x = ly.embed(ids, w["embedding"], (0, s.vocab), comm)
    for stage in range(lay.pp):
        x = stage_forward(x, w, lay, stage, comm, everything)
    logits = ly.head(x, w["final_norm"], w["embedding" if s.tie else "lm_head"], comm)
    loss = F.cross_entropy(logits.reshape(-1, s.vocab), targets.reshape(-1))
    if lay.training:
        loss.backward()
    return {"logits": logits.detach(), "loss": float(loss.detach()),
            "grads": {k: v.grad for k, v in w.items()} if lay.training else {}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, lay: Layout, seed: int, outdir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        _work(rank, lay, seed, outdir)
    finally:
        dist.destroy_process_group()


def _work(rank: int, lay: Layout, seed: int, outdir: str) -> None:
    s, g = lay.small, lay.gpus[rank]
    gr = groups(lay)
    made = {tuple(r): dist.new_group(r) for r in gr.all()}  # same order on every process

    def mine(d: dict, key) -> tuple[object, list[int]]:
        ranks = d[key]
        return made.get(tuple(ranks)), ranks

    full = ly.init_weights(s, seed)
    index = local_index(lay, g)
    w = {k: take(full[ix[0]], ix).requires_grad_() for k, ix in index.items()}
    tp_group, tp_ranks = mine(gr.tp, (g.stage, g.dp_rank))
    ep_group, ep_ranks = mine(gr.ep, (g.stage, g.edp_rank))
    comm = ly.Comm(tp_group, len(tp_ranks), tp_ranks.index(rank), ep_group, len(ep_ranks),
                   ep_ranks.index(rank), g.spans)
    routes = {L: routing(lay, g, L, ep_ranks, w) for L in lay.stage_layers[g.stage]
              if s.moe[s.layers.index(L)]}
    ids, targets = batch(lay, seed)
    first, last = g.stage == 0, g.stage == lay.pp - 1
    vocab_spans = [lay.gpus[i].spans.get("lm_head", lay.gpus[i].spans.get("embedding"))
                   for i in tp_ranks] if last else None
    per = lay.micro_batches * lay.micro_batch
    tokens = lay.samples * lay.seq
    shape = (lay.micro_batch, lay.seq, s.hidden)
    saved, logits, loss_sum = [], {}, 0.0
    for j in range(lay.micro_batches):
        lo = g.dp_rank * per + j * lay.micro_batch
        if first:
            inp = None
            x = ly.embed(ids[lo:lo + lay.micro_batch], w["embedding"], g.spans.get(
                "embedding", (0, s.vocab)), comm)
        else:
            inp = torch.empty(shape, dtype=ly.DTYPE)
            dist.recv(inp, peer(lay, g, g.stage - 1))
            inp.requires_grad_(lay.training)
            x = inp
        x = stage_forward(x, w, lay, g.stage, comm, routes)
        if last:
            out = ly.head(x, w["final_norm"], w["embedding" if s.tie else "lm_head"], comm,
                          vocab_spans)
            logits[lo] = out.detach()
            loss = F.cross_entropy(out.reshape(-1, s.vocab),
                                   targets[lo:lo + lay.micro_batch].reshape(-1),
                                   reduction="sum") / tokens
            loss_sum += float(loss)
            saved.append((inp, loss))
        else:
            dist.send(x.detach().contiguous(), peer(lay, g, g.stage + 1))
            comm._count("pp send")
            saved.append((inp, x))
    if lay.training:
        for inp, out in saved:
            if last:
                out.backward()
            else:
                grad = torch.empty(shape, dtype=ly.DTYPE)
                dist.recv(grad, peer(lay, g, g.stage + 1))
                out.backward(grad)
            if not first:
                dist.send(inp.grad.contiguous(), peer(lay, g, g.stage - 1))
                comm._count("pp send")
        _sync(lay, g, w, gr, made, comm)
    torch.save({"grads": {k: v.grad for k, v in w.items()} if lay.training else {},
                "logits": logits, "loss": loss_sum if last and comm.tp_rank == 0 else 0.0,
                "calls": comm.calls}, Path(outdir) / f"rank{rank}.pt")


def is_expert(name: str) -> bool:
    """`L3.e5.fc1`: a routed expert's weight."""
    parts = name.split(".")
    return len(parts) == 3 and parts[1][:1] == "e" and parts[1][1:].isdigit()


def _sync(lay: Layout, g, w: dict, gr, made: dict, comm: ly.Comm) -> None:
    """Data-parallel gradient all-reduce: replicated weights over the DP group; each MoE
    layer's experts over the GPUs of the stage with the same ETP rank, as one [experts x
    shard] buffer, so replicas and expert-data-parallel copies add up alike; KV heads that
    TP ranks share over those ranks; the tied embedding over its first- and last-stage
    copies."""
    dp_group = made.get(tuple(gr.dp[(g.stage, g.tp_rank)]))
    edp_group = made.get(tuple(gr.expert_dp[(g.stage, g.etp_rank)]))
    for v in w.values():
        if v.grad is None:  # a weight no token reached: its gradient is zero, and every
            v.grad = torch.zeros_like(v)  # copy must still take part in the all-reduce
    for k, v in w.items():
        if not is_expert(k) and dp_group is not None:
            dist.all_reduce(v.grad, group=dp_group)
            comm._count("dp all-reduce")
    for L, (ids, _) in g.experts.items():
        if edp_group is None or not ids:
            continue
        e0 = w[f"L{L}.e{ids[0]}.fc1"], w[f"L{L}.e{ids[0]}.fc2"]
        n1, n2 = e0[0].numel(), e0[1].numel()
        buf = torch.zeros(lay.small.experts, n1 + n2, dtype=ly.DTYPE)
        for e in ids:
            a, b = w[f"L{L}.e{e}.fc1"], w[f"L{L}.e{e}.fc2"]
            buf[e, :n1] = a.grad.reshape(-1)
            buf[e, n1:] = b.grad.reshape(-1)
        dist.all_reduce(buf, group=edp_group)
        comm._count("expert grad all-reduce")
        for e in ids:
            a, b = w[f"L{L}.e{e}.fc1"], w[f"L{L}.e{e}.fc2"]
            a.grad.copy_(buf[e, :n1].view_as(a))
            b.grad.copy_(buf[e, n1:].view_as(b))
    for L in lay.stage_layers[g.stage]:  # KV heads copied over TP ranks (fewer than TP):
        ranks = gr.kv.get((g.stage, g.dp_rank, L, g.spans[f"L{L}.kv"]))  # each copy saw
        if ranks:  # only its own query heads
            for k in (f"L{L}.k", f"L{L}.v"):
                dist.all_reduce(w[k].grad, group=made[tuple(ranks)])
            comm._count("kv-copy grad all-reduce")
    tie = gr.tie.get((g.tp_rank, g.dp_rank))
    if tie and tuple(tie) in made and "embedding" in w:
        dist.all_reduce(w["embedding"].grad, group=made[tuple(tie)])


def distributed(lay: Layout, seed: int) -> tuple[list[dict], float]:
    """Start one process per GPU of the plan (`python -m autopar.verify.run`, so nothing
    depends on how the caller's own program was started) and collect what each holds."""
    world = len(lay.gpus)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(x for x in (pkg_root, os.environ.get("PYTHONPATH"))
                                         if x)}
    with tempfile.TemporaryDirectory(prefix="autopar-verify-") as tmp:
        with open(Path(tmp) / "layout.pkl", "wb") as fh:
            pickle.dump(lay, fh)
        t0 = time.perf_counter()
        port = _free_port()
        procs = []
        for r in range(world):
            err = open(Path(tmp) / f"rank{r}.err", "wb")  # noqa: SIM115 (closed below)
            procs.append((subprocess.Popen(
                [sys.executable, "-m", "autopar.verify.run", tmp, str(r), str(world),
                 str(port), str(seed)], env=env, stdout=err, stderr=err,
                stdin=subprocess.DEVNULL), err))
        failed = _wait(procs, t0 + TIMEOUT_S)
        wall = time.perf_counter() - t0
        if failed is not None:
            text = (Path(tmp) / f"rank{failed[0]}.err").read_text(errors="replace")
            last = [x for x in text.splitlines() if x.strip()][-1:] or [failed[1]]
            raise VerifyRunError(f"process {failed[0]} of {world}: {last[0].strip()}")
        return [torch.load(Path(tmp) / f"rank{r}.pt") for r in range(world)], wall


class VerifyRunError(AutoparError):
    """A worker process failed or the run timed out (a bug or the machine: exit 70)."""

    exit_code = 70


def _wait(procs: list, deadline: float) -> tuple[int, str] | None:
    """Wait for every worker; on the first failure or at the deadline end the others (only
    the processes started here, by their handles). The failed rank and why, or None."""
    failed = None
    try:
        pending = dict(enumerate(p for p, _ in procs))
        while pending and failed is None:
            for r, p in list(pending.items()):
                code = p.poll()
                if code is None:
                    continue
                del pending[r]
                if code != 0:
                    failed = (r, f"exit code {code}")
            if time.perf_counter() > deadline and failed is None:
                failed = (min(pending), f"timed out after {TIMEOUT_S} s")
            time.sleep(0.02)
    finally:
        for p, err in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            err.close()
    return failed


def _main(argv: list[str]) -> None:
    tmp, rank, world, port, seed = argv[0], *map(int, argv[1:5])
    with open(Path(tmp) / "layout.pkl", "rb") as fh:
        lay = pickle.load(fh)
    _worker(rank, world, port, lay, seed, tmp)


if __name__ == "__main__":
    _main(sys.argv[1:])
