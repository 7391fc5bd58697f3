"""autopar against NVIDIA aiconfigurator (PyPI `aiconfigurator` 0.12.x) on the same serving
problems, in both directions: autopar's chosen layouts scored by aiconfigurator's `estimate`,
aiconfigurator's chosen layouts pinned in autopar, plus pure-decode and single-prefill probes
broken down by op. autopar runs with its default calibration (the bundled measured tables)
and with `--calibration defaults` (flat fractions). Writes results/vs-aiconfigurator.md.

    python benchmarks/vs_aiconfigurator.py --aic /tmp/aicvenv/bin/aiconfigurator \
        --workdir /tmp/aicwork [--cases qwen,mixtral,deepseek] [--tpot-ms 30]

aiconfigurator is optional: found on PATH, or given with --aic (a venv's bin/aiconfigurator,
whose python also reads its MoE database). Without it the file records what failed and
autopar's side only. `--workdir` keeps aiconfigurator's answers (searches and estimates)
so a rerun with the same arguments reuses them.
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from autopar.api import load_model, make_problem, solve  # noqa: E402
from autopar.cost.fp8 import gemm_key  # noqa: E402
from autopar.cost.fused_moe import moe_shape  # noqa: E402
from autopar.serve.evaluate import Evaluator, Layout, PhaseCost, decode_time, point  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")
CALIBS = (None, "defaults")  # autopar's default (bundled tables where shipped), flat fractions
WITHIN = 0.25


@dataclass(frozen=True)
class Targets:
    isl: int
    osl: int
    ttft_ms: float
    tpot_ms: float


@dataclass
class Case:
    key: str
    label: str
    model: str
    hw: str
    aic_model: str  # HF id aiconfigurator ships, or a config.json to copy into a folder
    system: str


CASES = (
    Case("qwen", "Qwen3-30B-A3B", "problems/models/qwen3-30b-a3b.yaml", "problems/hw/h100-8x.yaml",
         "Qwen/Qwen3-30B-A3B", "h100_sxm"),
    Case("mixtral", "Mixtral-8x7B", "problems/models/mixtral-8x7b-serve.yaml",
         "problems/hw/h100-8x.yaml", "problems/models/hf/mixtral-8x7b-config.json", "h100_sxm"),
    Case("deepseek", "DeepSeek-V3", "problems/models/deepseek-v3.yaml",
         "problems/hw/h200-2node.yaml", "deepseek-ai/DeepSeek-V3", "h200_sxm"),
)
# op categories both tools' step breakdowns are summed into
CATS = ("attention block", "FFN / experts", "collectives", "norms", "router", "LM head + embed",
        "other")
AIC_DTYPE = {"bf16": "bfloat16"}
MOE_ROWS_PY = """
import glob, json, sys
import pandas as pd
fs = sorted(glob.glob(sys.argv[1] + '/moe/vllm/*/moe_perf.parquet'))
df = pd.read_parquet(fs[-1])
keys = df[['moe_dtype', 'hidden_size', 'inter_size', 'topk', 'num_experts', 'moe_tp_size',
           'moe_ep_size']].drop_duplicates().values.tolist()
print(json.dumps({'file': fs[-1].split('/systems/data/')[-1], 'keys': keys}))
"""


# ----------------------------------------------------------------------------- aiconfigurator
class Aic:
    def __init__(self, exe: str, workdir: str):
        self.exe, self.workdir = exe, workdir

    def model_path(self, c: Case) -> str:
        if not c.aic_model.endswith(".json"):
            return c.aic_model
        d = os.path.join(self.workdir, c.key)
        os.makedirs(d, exist_ok=True)
        shutil.copy(os.path.join(ROOT, c.aic_model), os.path.join(d, "config.json"))
        return d

    def run(self, args: list[str], timeout: int = 900) -> tuple[str, float]:
        """One CLI call; its output is kept in the workdir under a hash of the arguments."""
        path = os.path.join(self.workdir, "out-" + hashlib.sha1(
            " ".join(args).encode()).hexdigest()[:16] + ".txt")
        if os.path.exists(path):
            return open(path).read(), 0.0
        t0 = time.perf_counter()
        r = subprocess.run([self.exe, "cli", *args, "--no-color"], capture_output=True,
                           text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        out = r.stdout + r.stderr
        if r.returncode:
            raise RuntimeError(f"aiconfigurator {' '.join(args[:1])} exited {r.returncode}: "
                               + out.strip().splitlines()[-1][:300])
        with open(path, "w") as f:
            f.write(f"# aiconfigurator cli {' '.join(args)}\n# wall {wall:.1f} s\n{out}")
        return out, wall

    def default(self, c: Case, t: Targets, gpus: int) -> dict:
        save = os.path.join(self.workdir, f"{c.key}-default-{t.isl}-{t.osl}-{t.tpot_ms:g}")
        out, wall = self.run(["default", "--model-path", self.model_path(c), "--system",
                              c.system, "--total-gpus", str(gpus), "--isl", str(t.isl), "--osl",
                              str(t.osl), "--ttft", str(t.ttft_ms), "--tpot", str(t.tpot_ms),
                              "--backend", "vllm", "--save-dir", save])
        if not wall:
            m = re.search(r"^# wall ([\d.]+)", out, re.M)
            wall = float(m.group(1)) if m else 0.0
        m = re.search(r"All experiments completed in ([\d.]+) seconds", out)
        best = {}
        for mode in ("agg", "disagg"):
            files = glob.glob(os.path.join(save, "**", mode, "best_config_topn.csv"),
                              recursive=True)
            rows = list(csv.DictReader(open(files[0]))) if files else []
            best[mode] = rows[0] if rows else None
        w = re.search(r"Best Experiment Chosen: (\w+) at ([\d.]+) tokens/s/gpu", out)
        return {"wall_s": wall, "search_s": float(m.group(1)) if m else None, **best,
                "chosen": w.group(1) if w else None}

    def estimate(self, c: Case, t: Targets, mode: str, w: dict, bs: int,
                 ctx: int | None = None) -> dict:
        """One `cli estimate` of autopar's `bs` sequences a replica: TTFT / TPOT /
        tokens/s/GPU, each step's ops (ms per step, with aiconfigurator's data source), the
        MoE quant mode and any capacity warning. Where its silicon tables lack the layout it
        is rerun with `--database-mode HYBRID` (silicon where measured, speed-of-light x
        empirical factors elsewhere): `db`."""
        args = ["estimate", "--model-path", self.model_path(c), "--system", c.system,
                "--backend", "vllm", "--isl", str(t.isl), "--osl", str(t.osl),
                "--estimate-mode", mode, "--tp", str(w["tp"]), "--pp", str(w["pp"]),
                "--dp", str(w["dp"]), "--etp", str(w["etp"]), "--ep", str(w["ep"]),
                "--bs", str(aic_bs(bs, w["pp"])), "--detail", "time,source"]
        args += ["--ctx-tokens", str(ctx)] if ctx else []
        db = "SILICON"
        try:
            out, _ = self.run(args, timeout=300)
        except RuntimeError as exc:
            if "missing" not in str(exc):
                raise
            db = "HYBRID"
            out, _ = self.run(args + ["--database-mode", db], timeout=300)

        def num(name: str) -> float | None:
            m = re.search(rf"^\s*{name}:\s+([\d,.]+)", out, re.M)
            return float(m.group(1).replace(",", "")) if m else None

        steps: dict[str, dict] = {}
        cur = None
        for line in out.splitlines():
            h = re.match(r"^(\S.*?) \(total = ([\d.]+) ms", line)
            if h:
                cur = steps.setdefault(h.group(1), {"total": float(h.group(2)), "ops": {}})
                continue
            o = re.match(r"^\s+(\w+)(?: \(scaled\))?\s+([\d.]+) ms\s+[\d.]+ ms.*\[(\w+)\]",
                         line)
            if o and cur is not None:
                cur["ops"][o.group(1)] = (float(o.group(2)), o.group(3))
            elif not line.strip():
                cur = None
        q = re.search(r"moe=MoEQuantMode\.(\w+)", out)
        warn = [ln.split("] ", 2)[-1][:160] for ln in out.splitlines()
                if "[W]" in ln and "deprecat" not in ln.lower() and "low-fidelity" not in ln]
        sched = re.search(r"Scheduling: (\d+) mix steps \+ (\d+) gen-only", out)
        return {"ttft_ms": num("TTFT"), "tpot_ms": num("TPOT"),
                "tps_gpu": num("tokens/s/gpu"), "steps": steps,
                "moe_quant": q.group(1) if q else None, "warnings": warn,
                "mix_steps": tuple(int(x) for x in sched.groups()) if sched else None,
                "db": db}

    def moe_rows(self, system: str) -> dict | None:
        """The (dtype, hidden, inter, top-k, experts, tp, ep) its vLLM MoE table measured,
        read with the python of aiconfigurator's own environment; None if that fails."""
        path = os.path.join(self.workdir, f"moe-rows-{system}.json")
        if not os.path.exists(path):
            py = os.path.join(os.path.dirname(self.exe), "python")
            try:
                loc = subprocess.run([py, "-c", "import aiconfigurator_core, os; print("
                                      "os.path.dirname(aiconfigurator_core.__file__))"],
                                     capture_output=True, text=True, check=True, timeout=120)
                data = os.path.join(loc.stdout.strip(), "systems", "data", system)
                r = subprocess.run([py, "-c", MOE_ROWS_PY, data], capture_output=True,
                                   text=True, check=True, timeout=120)
                with open(path, "w") as f:
                    f.write(r.stdout)
            except Exception:
                return None
        d = json.load(open(path))
        d["keys"] = {tuple(k) for k in d["keys"]}
        return d


def aic_cats(est: dict, step: str) -> dict[str, float] | None:
    """aiconfigurator's ops of one step summed by category, scaled to ms per step (static
    modes print totals over every step they ran)."""
    s = est["steps"].get(step)
    if not s or not s["ops"]:
        return None
    out = dict.fromkeys(CATS, 0.0)
    for op, (ms, _src) in s["ops"].items():
        out[_aic_cat(op.split("_", 1)[1] if "_" in op else op)] += ms
    total = sum(out.values())
    if step == "Generation phase" and total and est["tpot_ms"]:  # totals over its steps
        return {k: v * est["tpot_ms"] / total for k, v in out.items()}
    if step == "Context phase" and est["ttft_ms"]:  # what its ops leave out
        out["other"] += max(0.0, est["ttft_ms"] - total)
    return out


def _aic_cat(op: str) -> str:
    if "norm" in op:
        return "norms"
    if "router" in op:
        return "router"
    if "dispatch" in op or "allreduce" in op or op.endswith("_ar") or "p2p" in op:
        return "collectives"
    if "moe" in op or "ffn" in op or "gemm" in op and ("shared" in op or "mlp" in op):
        return "FFN / experts"
    if "attention" in op or "qkv" in op or "proj" in op or "mla" in op:
        return "attention block"
    if "logits" in op or "embedding" in op:
        return "LM head + embed"
    return "other"


def aic_source(est: dict, step: str) -> str:
    """The data source aiconfigurator read for the step's MoE op, and its op counts."""
    s = est["steps"].get(step) or {"ops": {}}
    moe = [src for op, (_, src) in s["ops"].items() if op.split("_", 1)[-1].startswith("moe")
           and "dispatch" not in op]
    n = sum(1 for _, src in s["ops"].values() if src == "silicon")
    db = "HYBRID: " if est["db"] != "SILICON" else ""
    return f"{db}MoE {'/'.join(moe) or '-'}, {n} of {len(s['ops'])} ops silicon"


# ----------------------------------------------------------------------------- autopar
def worker(lay: Layout) -> tuple[dict, int]:
    """aiconfigurator's worker for an autopar layout: expert groups are whole workers, so the
    EDP replicas are separate workers (attention DP inside a worker = EP x ETP / TP)."""
    edp = lay.tp * lay.dp // (lay.ep * lay.etp)
    return {"tp": lay.tp, "pp": lay.pp, "dp": lay.dp // edp, "ep": lay.ep,
            "etp": lay.etp}, edp


def layout_of(row: dict, gpus: int) -> Layout:
    """autopar's layout for an aiconfigurator worker replicated over all GPUs."""
    tp, pp, dp = int(row["tp"]), int(row["pp"]), int(row["dp"])
    return Layout(tp, pp, dp * (gpus // (tp * pp * dp)), int(row["moe_ep"]),
                  int(row["moe_tp"]))


def ap_cats(ph: PhaseCost) -> dict[str, float]:
    """autopar's step (one micro-batch through every stage) summed by category, in ms."""
    out = dict.fromkeys(CATS, 0.0)
    for st in ph.evaluation.stages:
        for lc in st.layer_costs:
            for c in lc.components:
                out[_ap_cat(c.name)] += c.time_s * 1e3
            out["collectives"] += (lc.tp_fwd + lc.ep_fwd) * 1e3
        for e in st.edges:
            for c in e.components:
                out["norms" if "norm" in c.name else "LM head + embed"] += c.time_s * 1e3
            out["collectives"] += e.tp_fwd * 1e3
        out["collectives"] += st.p2p_fwd * 1e3
    return out


def _ap_cat(name: str) -> str:
    if "norm" in name:
        return "norms"
    if name == "router":
        return "router"
    if name.startswith(("expert", "shared", "fc")):
        return "FFN / experts"
    return "attention block"


def moe_table_state(p, lay: Layout) -> str:
    """Whether autopar's fused-MoE table measured this shape at this (ETP, EP), per the
    dtype its experts run in."""
    shape = moe_shape(p.model)
    dtype = gemm_key(p, p.gemm_dtype)  # the key the cost model reads (fp8_block: DeepSeek)
    table = p.calib.kernels.moe.get(dtype) if shape else None
    if table is None:
        return f"{dtype}: GEMMs (no fused-MoE table)"
    if (shape, lay.etp, lay.ep) in table.series:
        return f"{dtype} table, measured"
    return f"{dtype} table, {table.source(shape)}" if table.source(shape) != "table" else \
        f"{dtype} table, shape at other tp/ep"


def aic_has(rows: dict | None, quant: str | None, p, lay: Layout) -> str:
    if rows is None or quant is None or moe_shape(p.model) is None:
        return "?"
    key = (AIC_DTYPE.get(quant, quant), *moe_shape(p.model), lay.etp, lay.ep)
    return "yes" if key in rows["keys"] else "no"


def _f(v, nd: int = 1) -> str:
    return "-" if v is None else f"{v:,.{nd}f}"


def _d(a, b) -> float | None:
    return None if a is None or b is None or not b else (a - b) / b


def _ds(a, b) -> str:
    d = _d(a, b)
    return "-" if d is None else f"{d:+.0%}" + ("" if abs(d) <= WITHIN else " **x**")


def _vs(a, b, nd: int = 1) -> str:
    return f"{_f(a, nd)} / {_f(b, nd)} ({_ds(a, b)})"


@dataclass
class Side:
    """autopar under one calibration for one case: problem, evaluator, plan, search time."""

    name: str
    p: object
    ev: Evaluator
    plan: object
    wall_s: float

    @property
    def point(self) -> dict:
        return self.plan.data["serving"]["point"]

    @property
    def layout(self) -> Layout:
        return Layout(**{k: v for k, v in self.point["layout"].items() if k != "spare_slots"},
                      spare=self.point["layout"].get("spare_slots", 0))


def sides(c: Case, t: Targets, limit: float) -> list[Side]:
    mf = load_model(os.path.join(ROOT, c.model))
    wl = replace(mf.workload, phase="both", input_len=t.isl, output_len=t.osl,
                 ttft_ms=t.ttft_ms, tpot_ms=t.tpot_ms)
    mf = replace(mf, workload=wl)
    hw = os.path.join(ROOT, c.hw)
    out = []
    for cal in CALIBS:
        t0 = time.perf_counter()
        plan = solve(mf, hw, time_limit_s=limit, disaggregate=True, calibration=cal)
        wall = time.perf_counter() - t0
        p = make_problem(mf, hw, calibration=cal)
        out.append(Side("autopar" if cal is None else "autopar flat", p, Evaluator(p), plan,
                        wall))
    if out[0].layout.ep > 1 and out[0].layout.etp > 1:
        # vLLM runs experts either all-EP or all-TP within an engine (EP x ETP is neither),
        # and aiconfigurator has no data for the mix: autopar's best among what vLLM runs
        best, wall = None, 0.0
        for pins in ({"etp": 1}, {"ep": 1}):
            t0 = time.perf_counter()
            plan = solve(mf, hw, time_limit_s=limit, pins=pins)
            wall += time.perf_counter() - t0
            if best is None or (plan.data["serving"]["point"]["tokens_per_s_per_gpu"] >
                                best.data["serving"]["point"]["tokens_per_s_per_gpu"]):
                best = plan
        out.append(Side("autopar vLLM-runnable", out[0].p, out[0].ev, best, wall))
    return out


def _sp(ev: Evaluator, lay: Layout, bs: int):
    sp = point(ev, lay, bs)
    return (None, None, None) if sp is None else (sp.ttft_s * 1e3, sp.tpot_s * 1e3,
                                                  sp.tokens_per_s_per_gpu)


def run(cases: list[Case], aic: Aic | None, failure: str, t: Targets, limit: float) -> str:
    lines = ["# autopar vs NVIDIA aiconfigurator", "",
             "Generated by `python benchmarks/vs_aiconfigurator.py --tpot-ms "
             f"{t.tpot_ms:g}`. Same model, GPU, GPU count, ISL {t.isl} / OSL {t.osl}, TTFT <= "
             f"{t.ttft_ms:g} ms and TPOT <= {t.tpot_ms:g} ms; aiconfigurator 0.12 with "
             "`--backend vllm` (its vLLM 0.24 perf database), autopar with its default "
             "calibration (the measured kernel tables bundled for H100 / H200) and, as "
             "`flat`, with `--calibration defaults` (the catalogue's flat efficiencies). "
             "tokens/s/GPU counts output tokens over all GPUs. `a / b (d)`: autopar / "
             f"aiconfigurator and autopar's difference; **x** marks |d| > {WITHIN:.0%}.", ""]
    if aic is None:
        lines += ["**aiconfigurator could not be run:** " + failure,
                  "Only autopar's side is filled in below.", ""]
    head, choice, dec_rows, pre_rows, brk, ttft_rows, srcs = [], [], [], [], [], [], []
    n_in = n_all = 0
    for c in cases:
        sd = sides(c, t, limit)
        ap, flat = sd[0], sd[1]
        G = ap.p.hw.num_gpus
        for s in sd:
            pt = s.point
            dis = s.plan.data["serving"].get("disaggregated") or {"best": None, "winner": "-"}
            cal = s.plan.data["inputs"]["calibration"]
            choice.append(
                f"| {c.label} | {s.name} | {s.wall_s:.1f} | agg {s.layout.describe()} x"
                f"{pt['per_replica']} | {_f(pt['ttft_s'] * 1e3)} | {_f(pt['tpot_s'] * 1e3, 2)} "
                f"| {_f(pt['tokens_per_s_per_gpu'], 0)} | " + (
                    f"{dis['best']['prefill_gpus']}P+{dis['best']['decode_gpus']}D: "
                    f"{_f(dis['best']['tokens_per_s_per_gpu'], 0)}" if dis["best"] else
                    "none meets the targets") + f" | {dis['winner']} |")
            srcs.append(f"| {c.label} | {s.name} | {json.dumps(cal.get('gemm_source', 'curve'))}"
                        f" | {json.dumps(cal.get('moe_source', '-'))} |")
        a, rows = None, None
        if aic is not None:
            try:
                a = aic.default(c, t, G)
                rows = aic.moe_rows(c.system)
            except Exception as exc:  # one failing case must not hide the others
                choice.append(f"| {c.label} | aiconfigurator | - | failed: {str(exc)[:200]} "
                              "| | | | | |")
        ag = a["agg"] if a else None
        if a is not None:
            dg = a["disagg"]
            choice.append(
                f"| {c.label} | aiconfigurator | {_f(a['search_s'])} ({_f(a['wall_s'])} wall) | "
                + (f"agg {ag['parallel']} bs {ag['bs']} x{int(G / int(ag['num_total_gpus']))} "
                   f"| {_f(float(ag['ttft']))} | {_f(float(ag['tpot']), 2)} | "
                   f"{_f(float(ag['tokens/s/gpu']), 0)}" if ag else "agg: none | - | - | -")
                + " | " + (f"{dg['(p)workers']}x P {dg['(p)parallel']} + {dg['(d)workers']}x D "
                           f"{dg['(d)parallel']}: {_f(float(dg['tokens/s/gpu']), 0)}" if dg
                           else "none") + f" | {a['chosen']} |")
        # ---- headline: both directions
        todo = []  # (direction, layout, batch, aic figures or None)
        if ag:
            todo.append(("aic's layout in autopar", layout_of(ag, G), replica_bs(ag),
                         (float(ag["ttft"]), float(ag["tpot"]), float(ag["tokens/s/gpu"])),
                         int(float(ag["ctx_tokens"]))))
        for s in sd:
            if s is flat and (s.layout, s.point["per_replica"]) == (
                    ap.layout, ap.point["per_replica"]):
                continue
            chunk = s.point.get("iteration", {}).get("schedule", {}).get("chunk")
            todo.append((f"{s.name}'s layout in aic", s.layout, s.point["per_replica"], None,
                         chunk))
        for direction, lay, bs, fig, ctx in todo:
            est = None
            if aic is not None:
                try:
                    est = aic.estimate(c, t, "agg", worker(lay)[0], bs, ctx)
                except Exception as exc:
                    why = (f"no aiconfigurator data: its MoE table has no ETP{lay.etp} x EP"
                           f"{lay.ep} rows and HYBRID no fallback (vLLM runs EP 1 or all)"
                           if "not implemented" in str(exc) else str(exc)[:150])
                    head.append(f"| {c.label} | {direction} | {lay.describe()} bs {bs} | "
                                f"{why} | | | | | | |")
                    continue
            if fig is None:
                fig = (est["ttft_ms"], est["tpot_ms"], est["tps_gpu"]) if est else (None,) * 3
            mine, fl = _sp(ap.ev, lay, bs), _sp(flat.ev, lay, bs)
            if mine[0] is None:
                head.append(f"| {c.label} | {direction} | {lay.describe()} bs {bs} | does not "
                            "fit autopar's memory model | | | | | | |")
                continue
            ok = sum(1 for x, y in zip(mine, fig, strict=True)
                     if _d(x, y) is not None and abs(_d(x, y)) <= WITHIN)
            n_in, n_all = n_in + ok, n_all + 3
            head.append(
                f"| {c.label} | {direction} | {lay.describe()} bs {bs} | {_vs(mine[0], fig[0])} "
                f"| {_vs(mine[1], fig[1], 2)} | {_vs(mine[2], fig[2], 0)} | {ok} of 3 | "
                f"{_ds(fl[0], fig[0])} / {_ds(fl[1], fig[1])} / {_ds(fl[2], fig[2])} | "
                f"{aic_has(rows, est and est['moe_quant'], ap.p, lay)}; "
                f"{aic_source(est, 'Gen-Only Step') if est else '-'} | "
                f"{moe_table_state(ap.p, lay)} |")
            sp = point(ap.ev, lay, bs)
            it = sp.iteration or {}
            mix = est["steps"].get("Mix Step", {}).get("total") if est else None
            ovh = 0.8 * ap.p.model.layers
            qf = fig[0] / (mix + ovh) if mix and fig[0] else None
            ttft_rows.append(
                f"| {c.label} | {direction}: {lay.describe()} bs {bs}, ctx_tokens {ctx} | "
                f"{_f(sp.ttft_s * 1e3)} | "
                f"{_f(sp.tpot_s * 5e2)} | {_f(it.get('queue_s', 0) * 1e3)} | "
                f"{_f(it.get('chunks_s', 0) * 1e3)} ({it.get('schedule', {}).get('chunks', '-')}"
                f" x {it.get('schedule', {}).get('chunk', '-')} tok) | {_f(fig[0])} | "
                f"{_f(mix)} | {_f(ovh)} | {_f(qf, 2)} |")
        # ---- probes
        tp8 = Layout(8, 1, G // 8, 1, 8)
        dprobes = [(tp8, 1), (tp8, 64)] + [(s.layout, s.point["per_replica"]) for s in sd]
        if ag:
            dprobes.append((layout_of(ag, G), replica_bs(ag)))
        for pl, bs in dict.fromkeys(dprobes):
            ph = [s.ev.phase(pl, "decode", bs) for s in (ap, flat)]
            if ph[0] is None or not ph[0].evaluation.feasible:
                continue
            tm = [decode_time(x, x.evaluation.strategy.num_micro_batches) * 1e3 for x in ph]
            est = _try(aic, c, t, "static_gen", pl, bs)
            ta = est["tpot_ms"] if est else None
            dec_rows.append(f"| {c.label} | {pl.describe()} | {bs} | {_f(tm[0], 2)} | "
                            f"{_f(tm[1], 2)} | {_f(ta, 2)} | {_ds(tm[0], ta)} | "
                            f"{_ds(tm[1], ta)} | "
                            f"{aic_has(rows, est and est['moe_quant'], ap.p, pl)}; "
                            f"{aic_source(est, 'Generation phase') if est else '-'} | "
                            f"{moe_table_state(ap.p, pl)} |")
            brk += _brk(c.label, f"{pl.describe()} decode bs {bs}", ap_cats(ph[0]),
                        est and aic_cats(est, "Generation phase"))
        for pl in dict.fromkeys([tp8] + [s.layout for s in sd]
                                + ([layout_of(ag, G)] if ag else [])):
            ph = [s.ev.phase(pl, "prefill", 1) for s in (ap, flat)]
            if ph[0] is None:
                continue
            tm = [x.latency * 1e3 for x in ph]
            est = _try(aic, c, t, "static_ctx", pl, 1)
            ta = est["ttft_ms"] if est else None
            pre_rows.append(f"| {c.label} | {pl.describe()} | {t.isl} | {_f(tm[0])} | "
                            f"{_f(tm[1])} | {_f(ta)} | {_ds(tm[0], ta)} | {_ds(tm[1], ta)} | "
                            f"{aic_source(est, 'Context phase') if est else '-'} |")
            brk += _brk(c.label, f"{pl.describe()} prefill {t.isl}", ap_cats(ph[0]),
                        est and aic_cats(est, "Context phase"))
    cat_head = " | ".join(CATS)
    lines += [
        f"## Headline: both directions, aggregated serving ({n_in} of {n_all} figures within "
        f"{WITHIN:.0%})", "",
        "aiconfigurator's chosen layout and batch pinned in autopar (its figures from its own "
        "search), and autopar's chosen layout and batch scored by `aiconfigurator cli estimate "
        "--estimate-mode agg`. `flat`: autopar under `--calibration defaults` on the same "
        "point (diffs only). `aic MoE rows`: whether aiconfigurator's vLLM MoE table holds "
        "this model's expert shape at this expert TP / EP in the dtype it runs; then the "
        "source it reports for the decode step's MoE op and how many of the step's ops were "
        "read from silicon data. `autopar MoE`: the bundled fused-MoE table autopar read.", "",
        "| case | direction | layout, batch per replica | TTFT ms | TPOT ms | tokens/s/GPU | "
        "within 25 % | flat: TTFT / TPOT / tok/s diff | aic MoE rows; source | autopar MoE |",
        "|---|---|---|---|---|---|---|---|---|---|", *head, "",
        "## Chosen deployments and search time", "",
        "| case | tool | search s | aggregated choice | TTFT ms | TPOT ms | tokens/s/GPU | "
        "disaggregated best (tokens/s/GPU) | winner |",
        "|---|---|---|---|---|---|---|---|---|", *choice, "",
        "Tables autopar read (plan `inputs.calibration.gemm_source` / `moe_source`):", "",
        "| case | autopar | gemm_source | moe_source |", "|---|---|---|---|", *srcs, "",
        "## TTFT under aggregated load, by part", "",
        "autopar (`serving-chunked`): TTFT = TPOT / 2 + queue + chunks. aiconfigurator (vLLM "
        "backend, `run_agg`): TTFT = (mix step x ceil(ISL / ctx_tokens) + 0.8 ms x layers) x "
        "queuing factor, the factor min(1 + log2(b) / 8, 2); the factor below is TTFT / (mix "
        "step + dispatch). ctx_tokens: aiconfigurator's prompt tokens per mix step, its "
        "search's for its own choice and autopar's chunk for autopar's.", "",
        "| case | point | autopar TTFT | TPOT / 2 | queue | chunks | aic TTFT | aic mix step | "
        "aic dispatch overhead | aic factor |", "|---|---|---|---|---|---|---|---|---|---|",
        *ttft_rows, "",
        "## Pure decode step (TPOT, ms; aiconfigurator `static_gen`)", "",
        "| case | layout | batch per replica | autopar | autopar flat | aiconfigurator | diff | "
        "flat diff | aic MoE rows; source | autopar MoE |",
        "|---|---|---|---|---|---|---|---|---|---|", *dec_rows, "",
        f"## One prefill (TTFT, ms; aiconfigurator `static_ctx`, batch 1, ISL {t.isl})", "",
        "| case | layout | ISL | autopar | autopar flat | aiconfigurator | diff | flat diff | "
        "aic source |", "|---|---|---|---|---|---|---|---|---|", *pre_rows, "",
        "## The probes by op (ms per step, all layers; autopar default calibration)", "",
        "autopar: `layer_cost` components of the evaluated step summed by kind (MLA "
        "projections and rotary in the attention block; TP all-reduce, EP all-to-all and PP "
        "sends under collectives). aiconfigurator: its `--detail time` ops of the same step, "
        "summed the same way (static_gen totals scaled to one step).", "",
        f"| case | step | tool | {cat_head} | total |", "|---" * (len(CATS) + 4) + "|", *brk, ""]
    return "\n".join(lines)


def aic_bs(bs: int, pp: int) -> int:
    """aiconfigurator's `--bs` for autopar's `bs` sequences a replica: its batch is one
    pipeline stage's (it keeps `pp` such batches in flight and scales throughput by `pp`,
    `base_backend`), autopar's the replica's, split into micro-batches over the stages."""
    return max(1, round(bs / max(pp, 1)))


def replica_bs(row: dict) -> int:
    """autopar's sequences a replica for an aiconfigurator result row (bs x pp)."""
    return int(row["bs"]) * int(row.get("pp", 1) or 1)


def _try(aic: Aic | None, c: Case, t: Targets, mode: str, lay: Layout, bs: int) -> dict | None:
    if aic is None:
        return None
    try:
        return aic.estimate(c, t, mode, worker(lay)[0], bs)
    except Exception:
        return None


def _brk(label: str, what: str, mine: dict, theirs: dict | None) -> list[str]:
    out = [f"| {label} | {what} | autopar | " + " | ".join(_f(mine[k], 2) for k in CATS)
           + f" | {_f(sum(mine.values()), 2)} |"]
    if theirs:
        out.append(f"| {label} | {what} | aic | " + " | ".join(_f(theirs[k], 2) for k in CATS)
                   + f" | {_f(sum(theirs.values()), 2)} |")
    return out

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--aic", default=None, help="the aiconfigurator executable")
    ap.add_argument("--cases", default="qwen,mixtral,deepseek")
    ap.add_argument("--isl", type=int, default=4000)
    ap.add_argument("--osl", type=int, default=1000)
    ap.add_argument("--ttft-ms", type=float, default=2000.0)
    ap.add_argument("--tpot-ms", type=float, default=30.0)
    ap.add_argument("--time-limit", type=float, default=5.0, help="autopar's, per solve")
    ap.add_argument("--workdir", default=None,
                    help="aiconfigurator's output folder (default: a new temporary one); "
                         "answers already saved there are reused")
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "vs-aiconfigurator.md"))
    ap.add_argument("--notes", default=os.path.join(os.path.dirname(__file__),
                                                    "vs_aiconfigurator_notes.md"),
                    help="hand-written explanations appended to the tables")
    a = ap.parse_args()
    exe = a.aic or shutil.which("aiconfigurator")
    aic, failure = None, ""
    if exe is None:
        failure = ("`aiconfigurator` is not installed here (`pip install aiconfigurator` "
                   "failed or was not run)")
    else:
        try:
            subprocess.run([exe, "version"], capture_output=True, check=True, timeout=120)
            work = a.workdir or tempfile.mkdtemp(prefix="aic-")
            os.makedirs(work, exist_ok=True)
            aic = Aic(exe, work)
        except Exception as exc:
            failure = f"`{exe} version` failed: {exc}"
    cases = [c for c in CASES if c.key in a.cases.split(",")]
    t = Targets(a.isl, a.osl, a.ttft_ms, a.tpot_ms)
    text = run(cases, aic, failure, t, a.time_limit)
    if os.path.exists(a.notes):
        text += "\n" + open(a.notes).read()
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
