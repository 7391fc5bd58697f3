"""Older, coarse plans: checked as far as they go, with the missing detail named.

The plan that started autopar (shared/seed-review.md) states degrees under
`parallel_strategy`, maps GPUs to whole `attention_i` / `mlp_i` blocks under
`tensor_parallel_distribution`, and gives one memory figure, a required TFLOP/s and a
throughput. Those claims are checked against the model and hardware (degrees against the GPU
count, memory against what any layout needs, throughput against peak); what the schema would
hold and this format cannot say (shard ranges, layers, experts) is reported as missing.
"""

from __future__ import annotations

import re
from typing import Any

from ..schema.rules import plan_schema
from ..spec import GB
from .echo import Inputs
from .finding import Findings, close, fmt, is_num
from .flops import model_flops_per_step
from .layout import _ranges
from .recompute import static_bytes_lower_bound

# sections of the schema an older key stands in for (partially)
STANDS_IN = {"strategy": "parallel_strategy", "gpus": "tensor_parallel_distribution",
             "metrics": "throughput"}
_BLOCK = re.compile(r"^(attention|attn|mlp|moe|ffn|experts?)_(\d+)$")


def check_coarse(f: Findings, plan: dict, inp: Inputs) -> None:
    for section in plan_schema()["required"]:
        if section not in plan and STANDS_IN.get(section) not in plan:
            f.error("schema", section, "missing (required by the schema)")
    if inp.model is None or inp.hardware is None or inp.workload is None:
        f.warn("inputs", "inputs", "no model / hardware / workload: only the plan's own "
               "figures can be compared (pass --model and --hw)")
    ps = plan.get("parallel_strategy")
    degrees = _degrees(f, ps, inp) if isinstance(ps, dict) else None
    tpd = plan.get("tensor_parallel_distribution")
    if isinstance(tpd, dict):
        _distribution(f, tpd, degrees or {}, inp)
    m = inp.model
    if m is not None and m.is_moe and "experts" not in plan:
        ep = (degrees or {}).get("ep", 1)
        f.error("detail", "experts", f"no expert placement: which of the {m.experts} experts "
                f"of each of the {m.moe_layer_count} MoE layers sit on which GPU is not stated",
                None, f"{m.experts} experts x {m.moe_layer_count} layers over EP={ep}")
    _memory(f, plan.get("memory_per_gpu_gb"), inp)
    _throughput(f, plan, inp)


def _degrees(f: Findings, ps: dict, inp: Inputs) -> dict[str, int]:
    """Degrees the plan states; tp x dp x pp = GPUs and ep x etp | tp x dp (expert TP, when
    unstated, is Megatron's default: etp = tp)."""
    d: dict[str, int] = {}
    for k, v in ps.items():
        if k in ("tp", "pp", "dp", "ep", "etp"):
            if isinstance(v, int) and not isinstance(v, bool) and v >= 1:
                d[k] = v
            else:
                f.error("schema", f"parallel_strategy.{k}", "a degree is an integer >= 1", v)
    lacking = [k for k in plan_schema()["properties"]["strategy"]["required"] if k not in ps]
    if lacking:
        f.error("detail", "parallel_strategy", "older format: the strategy lacks "
                + ", ".join(lacking), sorted(map(str, ps)), "every key of the schema's strategy")
    hw = inp.hardware
    if hw is None:
        return d
    n = hw.num_gpus
    tp, pp, ep = d.get("tp", 1), d.get("pp", 1), d.get("ep", 1)
    etp = d.get("etp", tp)
    if "dp" in d:
        width = tp * d["dp"]
        if width * pp != n:
            f.error("degrees", "parallel_strategy", "tp x dp x pp must equal the GPU count",
                    f"tp x dp x pp = {tp}x{d['dp']}x{pp} = {width * pp}", n)
    else:
        width = n // pp if n % pp == 0 else 0
        if n % (tp * pp):
            f.error("degrees", "parallel_strategy.tp", "tp x dp x pp must equal the GPU "
                    "count: no whole number of data-parallel replicas fits",
                    f"tp x pp = {tp}x{pp} = {tp * pp}", f"a divisor of {n} GPUs")
    if width and width % (ep * etp):
        why = "" if "etp" in d else " (expert TP unstated: Megatron's default etp = tp)"
        f.error("degrees", "parallel_strategy.ep", "experts fold onto the tp x dp GPUs of a "
                f"stage: EP={ep} x ETP={etp} needs {ep * etp} GPUs per expert group, a stage "
                f"has {width}{why}", f"ep x etp = {ep}x{etp} = {ep * etp}",
                f"a divisor of {width}")
    m = inp.model
    if m is not None:
        if m.heads % tp:
            f.error("divisibility", "parallel_strategy.tp", "attention heads must split "
                    "evenly over TP", f"{m.heads} heads over tp {tp}", "tp dividing the heads")
        if m.is_moe and m.experts % ep:
            f.error("divisibility", "parallel_strategy.ep", "experts do not split evenly over "
                    "EP and the plan lists no placement", f"{m.experts} over ep {ep}",
                    "ep dividing the experts")
    return d


def _distribution(f: Findings, tpd: dict, d: dict[str, int], inp: Inputs) -> None:
    """GPUs mapped to whole blocks: say which component-level detail is missing."""
    hw, m = inp.hardware, inp.model
    if hw is not None and len(tpd) != hw.num_gpus:
        f.error("degrees", "tensor_parallel_distribution", "one entry per GPU", len(tpd),
                hw.num_gpus)
    holders: dict[str, list[str]] = {}
    layers: set[int] = set()
    for gpu, names in tpd.items():
        for name in names if isinstance(names, list) else [names]:
            holders.setdefault(str(name), []).append(str(gpu))
            hit = _BLOCK.match(str(name))
            if hit:
                layers.add(int(hit.group(2)))
    sample = "; ".join(f"{g}: {', '.join(map(str, v if isinstance(v, list) else [v]))}"
                       for g, v in list(tpd.items())[:2])
    f.error("detail", "tensor_parallel_distribution", "whole blocks per GPU: no QKV heads, "
            "out-projection rows, FC1 columns or FC2 rows, so the column-row split cannot be "
            "checked", sample, "gpus[].components with shard ranges")
    if m is not None:
        absent = sorted(set(range(m.layers)) - layers)
        if absent:
            f.error("detail", "tensor_parallel_distribution", f"layers {_ranges(absent)} are "
                    "on no GPU", f"layers {_ranges(sorted(layers)) or 'none'}",
                    f"layers 0-{m.layers - 1}")
        if not any(k in holders for k in ("embedding", "lm_head")):
            f.error("detail", "tensor_parallel_distribution", f"the embedding and LM head "
                    f"(vocabulary {m.vocab}) are on no GPU", None, "on the first / last stage")
    tp = d.get("tp", 1)
    single = sorted(k for k, v in holders.items() if _BLOCK.match(k) and len(set(v)) < tp)
    if tp > 1 and single:
        k = single[0]
        f.error("shards", "tensor_parallel_distribution", f"TP={tp} splits every attention and "
                f"MLP block over {tp} GPUs, but {len(single)} blocks sit whole on one GPU",
                f"{k} on {', '.join(holders[k])} only", f"on {tp} GPUs, a shard each")


def _memory(f: Findings, claimed: Any, inp: Inputs) -> None:
    if claimed is None:
        return
    if not is_num(claimed):
        f.error("schema", "memory_per_gpu_gb", "a number of GB", claimed)
        return
    hw, m, w = inp.hardware, inp.model, inp.workload
    f.warn("detail", "memory_per_gpu_gb", "one figure for every GPU: no per-GPU breakdown "
           "(weights, gradients, optimizer, activations) to recompute", claimed,
           "gpus[].memory")
    if hw is None:
        return
    if claimed * GB > hw.gpu.memory_bytes:
        f.error("memory", "memory_per_gpu_gb", "over the GPU's capacity", claimed,
                f"<= {hw.gpu.memory_bytes / GB:g}")
    if m is not None and w is not None:
        low = static_bytes_lower_bound(m, w, hw.num_gpus) + hw.reserved_bytes
        if claimed * GB < low:
            what = "weights, gradients and optimizer states" if w.kind == "training" \
                else "weights"
            f.error("memory", "memory_per_gpu_gb", f"below what any layout needs: the {what} "
                    f"of all parameters spread evenly over {hw.num_gpus} GPUs, plus "
                    f"{hw.reserved_bytes / GB:g} GB reserved", claimed,
                    f">= {low / GB:.1f}")


def _throughput(f: Findings, plan: dict, inp: Inputs) -> None:
    thr = plan.get("throughput")
    thr = thr if isinstance(thr, dict) else {}
    samples, tokens = thr.get("samples_per_s"), thr.get("tokens_per_s")
    hw, m, w = inp.hardware, inp.model, inp.workload
    if w is not None and is_num(samples) and is_num(tokens) and not close(
            tokens, samples * w.tokens_per_sample, 1e-6):
        f.error("metrics", "throughput.tokens_per_s", f"samples/s x {w.tokens_per_sample} "
                "tokens per sample", tokens, samples * w.tokens_per_sample)
    if hw is None or m is None or w is None:
        return
    peak = hw.gpu.flops(m.dtype)
    per_token = model_flops_per_step(m, w) / (w.batch * w.tokens_per_sample)
    reachable = hw.num_gpus * peak / per_token
    if not is_num(tokens) and is_num(samples):
        tokens = samples * w.tokens_per_sample
    if is_num(tokens) and tokens > reachable:
        path = "throughput.tokens_per_s" if "tokens_per_s" in thr else "throughput.samples_per_s"
        f.error("throughput", path, f"needs {tokens * per_token / hw.num_gpus / 1e12:.0f} "
                f"TFLOP/s per GPU ({per_token / 1e9:.2f} GFLOP per token), the GPUs peak at "
                f"{peak / 1e12:g}: at most {reachable:,.0f} tokens/s "
                f"({reachable / w.tokens_per_sample:.1f} samples/s) at 100% utilization",
                tokens, f"<= {reachable:.0f}")
    rt = plan.get("required_tflops")
    if rt is None:
        return
    if not is_num(rt):
        f.error("schema", "required_tflops", "a number of TFLOP/s per GPU", rt)
        return
    if rt * 1e12 > peak:
        f.error("throughput", "required_tflops", "above the GPU's peak", rt,
                f"<= {peak / 1e12:g}")
    if is_num(tokens):
        implied = tokens * per_token / hw.num_gpus / 1e12
        if not close(rt, implied, 0.05):
            f.error("throughput", "required_tflops", f"the claimed {fmt(tokens)} tokens/s need "
                    f"{implied:.0f} TFLOP/s per GPU; {rt:g} TFLOP/s per GPU gives "
                    f"{rt * 1e12 * hw.num_gpus / per_token:,.0f} tokens/s", rt,
                    round(implied, 1))
