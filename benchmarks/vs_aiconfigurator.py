"""autopar against NVIDIA aiconfigurator (PyPI `aiconfigurator` 0.12.x) for the same serving
problems: both tools' chosen layouts, search times and predictions, and both tools'
predictions for the same layouts. Writes results/vs-aiconfigurator.md.

    python benchmarks/vs_aiconfigurator.py [--aic PATH] [--cases qwen,mixtral,deepseek]

aiconfigurator is optional: found on PATH, or given with --aic (e.g. a venv's
bin/aiconfigurator). Without it the file records what failed and autopar's side only.
"""

from __future__ import annotations

import argparse
import csv
import glob
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
from autopar.serve.evaluate import Evaluator, Layout, decode_time, point  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")
TTFT_MS, TPOT_MS = 2000.0, 50.0


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
        t0 = time.perf_counter()
        r = subprocess.run([self.exe, "cli", *args, "--no-color"], capture_output=True,
                           text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        out = r.stdout + r.stderr
        if r.returncode:
            raise RuntimeError(f"aiconfigurator {' '.join(args[:1])} exited {r.returncode}: "
                               + out.strip().splitlines()[-1][:300])
        return out, wall

    def default(self, c: Case, isl: int, osl: int, gpus: int) -> dict:
        save = os.path.join(self.workdir, f"{c.key}-default")
        cached = os.path.join(self.workdir, f"{c.key}-default.json")
        if os.path.exists(cached):  # a previous run's search (--workdir reuses it)
            return json.load(open(cached))
        out, wall = self.run(["default", "--model-path", self.model_path(c), "--system",
                              c.system, "--total-gpus", str(gpus), "--isl", str(isl), "--osl",
                              str(osl), "--ttft", str(TTFT_MS), "--tpot", str(TPOT_MS),
                              "--backend", "vllm", "--save-dir", save])
        m = re.search(r"All experiments completed in ([\d.]+) seconds", out)
        best = {}
        for mode in ("agg", "disagg"):
            files = glob.glob(os.path.join(save, "**", mode, "best_config_topn.csv"),
                              recursive=True)
            rows = list(csv.DictReader(open(files[0]))) if files else []
            best[mode] = rows[0] if rows else None
        w = re.search(r"Best Experiment Chosen: (\w+) at ([\d.]+) tokens/s/gpu", out)
        res = {"wall_s": wall, "search_s": float(m.group(1)) if m else None, **best,
               "chosen": w.group(1) if w else None}
        with open(cached, "w") as f:
            json.dump(res, f)
        return res

    def estimate(self, c: Case, isl: int, osl: int, mode: str, w: dict, bs: int) -> dict:
        args = ["estimate", "--model-path", self.model_path(c), "--system", c.system,
                "--backend", "vllm", "--isl", str(isl), "--osl", str(osl), "--estimate-mode",
                mode, "--tp", str(w["tp"]), "--pp", str(w["pp"]), "--dp", str(w["dp"]),
                "--etp", str(w["etp"]), "--ep", str(w["ep"]), "--bs", str(bs)]
        out, _ = self.run(args, timeout=300)

        def num(name: str) -> float | None:
            m = re.search(rf"^\s*{name}:\s+([\d,.]+)", out, re.M)
            return float(m.group(1).replace(",", "")) if m else None

        return {"ttft_ms": num("TTFT"), "tpot_ms": num("TPOT"),
                "tps_gpu": num("tokens/s/gpu")}


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
    per = tp * pp * dp
    return Layout(tp, pp, dp * (gpus // per), int(row["moe_ep"]), int(row["moe_tp"]))


def _f(v, nd: int = 1) -> str:
    return "-" if v is None else f"{v:,.{nd}f}"


def _delta(a, b) -> str:
    if a is None or b is None or not b:
        return "-"
    return f"{(a - b) / b:+.0%}"


def run(cases: list[Case], aic: Aic | None, failure: str) -> str:
    lines = ["# autopar vs NVIDIA aiconfigurator", "",
             "Generated by `python benchmarks/vs_aiconfigurator.py`. Same model, GPU, GPU count, "
             f"ISL / OSL (the model files'), TTFT <= {TTFT_MS:g} ms and TPOT <= {TPOT_MS:g} ms; "
             "aiconfigurator with `--backend vllm` (its default perf database for that "
             "backend), autopar with its default (uncalibrated) cost model. tokens/s/GPU counts "
             "output tokens over all GPUs.", ""]
    if aic is None:
        lines += ["**aiconfigurator could not be run:** " + failure,
                  "Only autopar's side is filled in below.", ""]
    same, decode_rows, prefill_rows, choice_rows = [], [], [], []
    for c in cases:
        mf = load_model(os.path.join(ROOT, c.model))
        wl = replace(mf.workload, phase="both", ttft_ms=TTFT_MS, tpot_ms=TPOT_MS)
        mf = replace(mf, workload=wl)
        hw = os.path.join(ROOT, c.hw)
        t0 = time.perf_counter()
        plan = solve(mf, hw, time_limit_s=5.0, disaggregate=True)
        t_ap = time.perf_counter() - t0
        p = make_problem(mf, hw)
        G, isl, osl = p.hw.num_gpus, wl.input_len, wl.output_len
        sv = plan.data["serving"]
        pt = sv["point"]
        lay = Layout(**pt["layout"])
        dis = sv["disaggregated"]
        choice_rows.append(
            f"| {c.label} | autopar | {t_ap:.1f} | agg {lay.describe()} x{pt['per_replica']} "
            f"| {_f(pt['ttft_s'] * 1e3)} | {_f(pt['tpot_s'] * 1e3, 2)} | "
            f"{_f(pt['tokens_per_s_per_gpu'], 0)} | " + (
                f"{dis['best']['prefill_gpus']}P+{dis['best']['decode_gpus']}D: "
                f"{_f(dis['best']['tokens_per_s_per_gpu'], 0)}" if dis["best"] else
                "none fits / meets the targets") + f" | {dis['winner']} |")
        ev = Evaluator(p)
        a = None
        if aic is not None:
            try:
                a = aic.default(c, isl, osl, G)
            except Exception as exc:  # one failing case must not hide the others
                choice_rows.append(f"| {c.label} | aiconfigurator | - | failed: "
                                   f"{str(exc)[:200]} | | | | | |")
        if a is not None:
            ag, dg = a["agg"], a["disagg"]
            choice_rows.append(
                f"| {c.label} | aiconfigurator | {_f(a['search_s'])} ({_f(a['wall_s'])} wall) | "
                + (f"agg {ag['parallel']} bs {ag['bs']} x{int(G / int(ag['num_total_gpus']))} "
                   f"| {_f(float(ag['ttft']))} | {_f(float(ag['tpot']), 2)} | "
                   f"{_f(float(ag['tokens/s/gpu']), 0)}" if ag else "agg: none | - | - | -")
                + " | " + (f"{dg['(p)workers']}x P {dg['(p)parallel']} + {dg['(d)workers']}x D "
                           f"{dg['(d)parallel']}: {_f(float(dg['tokens/s/gpu']), 0)}" if dg
                           else "none") + f" | {a['chosen']} |")
            if ag:  # aiconfigurator's layout and batch, scored by autopar
                al = layout_of(ag, G)
                mine = point(ev, al, int(ag["bs"]))
                same.append(_same_row(c.label, f"aic's: {al.describe()} bs {ag['bs']}", mine,
                                      float(ag["ttft"]), float(ag["tpot"]),
                                      float(ag["tokens/s/gpu"])))
            w, _ = worker(lay)  # autopar's layout and batch, scored by aiconfigurator
            try:
                e = aic.estimate(c, isl, osl, "agg", w, pt["per_replica"])
                mine = point(ev, lay, pt["per_replica"])
                same.append(_same_row(c.label, f"autopar's: {lay.describe()} bs "
                                      f"{pt['per_replica']}", mine, e["ttft_ms"],
                                      e["tpot_ms"], e["tps_gpu"]))
            except Exception as exc:
                same.append(f"| {c.label} | autopar's {lay.describe()} | aiconfigurator "
                            f"failed: {str(exc)[:150]} | | | | | | | | |")
        # pure decode steps and a single prefill, same layouts, both tools
        probes = [(Layout(8, 1, G // 8, 1, 8), 1), (Layout(8, 1, G // 8, 1, 8), 64),
                  (lay, pt["per_replica"])]
        if a is not None and a["agg"]:
            probes.append((layout_of(a["agg"], G), int(a["agg"]["bs"])))
        for pl, bs in probes:
            dec = ev.phase(pl, "decode", bs)
            if dec is None or not dec.evaluation.feasible:
                continue
            t_me = decode_time(dec, min(pl.pp, bs)) * 1e3
            t_aic = None
            if aic is not None:
                try:
                    t_aic = aic.estimate(c, isl, osl, "static_gen", worker(pl)[0],
                                         bs)["tpot_ms"]
                except Exception:
                    t_aic = None
            decode_rows.append(f"| {c.label} | {pl.describe()} | {bs} | {_f(t_me, 2)} | "
                               f"{_f(t_aic, 2)} | {_delta(t_me, t_aic)} |")
        for pl in {lay, Layout(8, 1, G // 8, 1, 8)}:
            pre = ev.phase(pl, "prefill", 1)
            if pre is None:
                continue
            t_aic = None
            if aic is not None:
                try:
                    t_aic = aic.estimate(c, isl, osl, "static_ctx", worker(pl)[0], 1)["ttft_ms"]
                except Exception:
                    t_aic = None
            prefill_rows.append(f"| {c.label} | {pl.describe()} | {isl} | "
                                f"{_f(pre.latency * 1e3)} | {_f(t_aic)} | "
                                f"{_delta(pre.latency * 1e3, t_aic)} |")
    lines += ["## Chosen deployments and search time", "",
              "| case | tool | search s | aggregated choice | TTFT ms | TPOT ms | tokens/s/GPU | "
              "disaggregated best (tokens/s/GPU) | winner |",
              "|---|---|---|---|---|---|---|---|---|", *choice_rows, "",
              "## Both tools on the same layouts (aggregated serving, same batch per replica)",
              "", "| case | layout | autopar TTFT | aic TTFT | autopar TPOT | aic TPOT | "
              "autopar tok/s/GPU | aic tok/s/GPU | TPOT diff | tok/s/GPU diff |",
              "|---|---|---|---|---|---|---|---|---|---|", *same, "",
              "## Pure decode step (TPOT, ms; aiconfigurator `static_gen`)", "",
              "| case | layout | batch per replica | autopar | aiconfigurator | diff |",
              "|---|---|---|---|---|---|", *decode_rows, "",
              "## One prefill (TTFT, ms; aiconfigurator `static_ctx`, batch 1)", "",
              "| case | layout | ISL | autopar | aiconfigurator | diff |",
              "|---|---|---|---|---|---|", *prefill_rows, ""]
    return "\n".join(lines)


def _same_row(label: str, what: str, mine, ttft, tpot, tps) -> str:
    if mine is None:
        return f"| {label} | {what} | does not fit autopar's memory model | | | | | | | |"
    return (f"| {label} | {what} | {_f(mine.ttft_s * 1e3)} | {_f(ttft)} | "
            f"{_f(mine.tpot_s * 1e3, 2)} | {_f(tpot, 2)} | {_f(mine.tokens_per_s_per_gpu, 0)} | "
            f"{_f(tps, 0)} | {_delta(mine.tpot_s * 1e3, tpot)} | "
            f"{_delta(mine.tokens_per_s_per_gpu, tps)} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--aic", default=None, help="the aiconfigurator executable")
    ap.add_argument("--cases", default="qwen,mixtral,deepseek")
    ap.add_argument("--workdir", default=None,
                    help="aiconfigurator's output folder (default: a new temporary one); "
                         "searches already saved there are reused")
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
    text = run(cases, aic, failure)
    if os.path.exists(a.notes):
        text += "\n" + open(a.notes).read()
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
