"""`autopar solve`: search the fastest layout and write its deployment plan."""

from __future__ import annotations

from dataclasses import replace

import click

from .. import api
from ..errors import InputError
from ..plan import write_atomic
from ..plan.files import check_target, default_plan_path, workload_label
from ..plan.mixed import mixed_summary
from ..plan.mixed_slots import slots_summary
from ..plan.mixed_uniform import uniform_summary
from ..plan.report import summary
from ..serve.mixed import mixed_serving_summary
from ..serve.plan import wants_serving
from ..spec import load_model
from ..spec.files import load_any_hardware
from ..spec.units import FP8_RECIPES
from . import options as opt
from .app import main
from .run import Interruptible, Progress, guard
from .serving_flags import apply_targets, serving_options, serving_summary, solve_kwargs


@main.command(epilog=opt.epilog("solve"))
@opt.model_hw
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="plan JSON path (default results/<model>-<hw>-<workload>.json, workload: "
                   "training, prefill, decode or serving)")
@click.option("--json", "as_json", is_flag=True, help="print the plan JSON to stdout")
@click.option("--kind", type=click.Choice(["training", "inference"]), default=None,
              help="workload kind (default: the model file's workload section)")
@click.option("--batch", type=click.IntRange(1, 10_000_000), default=None,
              help="global batch (training) or concurrent sequences (inference)")
@click.option("--seq-len", type=click.IntRange(1, 10_000_000), default=None,
              help="training: tokens per sample")
@click.option("--phase", type=click.Choice(["prefill", "decode", "both"]), default=None,
              help="inference: one prefill, one decode step, or whole requests (serving)")
@opt.request_lengths
@opt.spare_slots
@opt.placement_budget
@opt.degree_pins
@click.option("--cp", type=click.IntRange(1, 100_000), default=None,
              help="pin the context-parallel degree (training: each sequence split over cp "
                   "ranks, Megatron's --context-parallel-size)")
@click.option("--cp-comm", type=click.Choice(["p2p", "all_gather", "a2a"]), default=None,
              help="how attention exchanges KV over the CP group (Megatron's --cp-comm-type; "
                   "default p2p, the ring)")
@click.option("--micro-batch", type=click.IntRange(1, 10_000_000), default=None,
              help="pin the micro-batch size (samples)")
@click.option("--recompute", type=click.Choice(["none", "selective", "full"]), default=None,
              help="pin activation recompute (selective: --recompute-modules, default "
                   "core_attn)")
@click.option("--recompute-modules", default=None, metavar="A,B,..",
              help="pin selective recompute's modules, as Megatron-Core's --recompute-modules: "
                   "core_attn moe_act layernorm mla_up_proj mlp moe shared_experts")
@click.option("--zero", type=click.IntRange(0, 3), default=None,
              help="pin the ZeRO stage (1 optimizer states, 2 + gradients, 3 + weights)")
@click.option("--sequence-parallel/--no-sequence-parallel", default=None,
              help="pin Megatron sequence parallelism on or off")
@click.option("--num-micro-batches", type=click.IntRange(1, 10_000_000), default=None,
              help="gradient-accumulation steps per replica")
@click.option("--virtual-stages", type=click.IntRange(1, 10_000), default=None,
              help="interleaved 1F1B: model chunks per pipeline stage")
@click.option("--first-stage-layers", type=click.IntRange(1, 100_000), default=None,
              help="pin Megatron's --decoder-first-pipeline-num-layers (the rest split evenly)")
@click.option("--last-stage-layers", type=click.IntRange(1, 100_000), default=None,
              help="pin Megatron's --decoder-last-pipeline-num-layers (the rest split evenly)")
@click.option("--embedding-in-split", is_flag=True, default=None,
              help="pin Megatron's --account-for-embedding-in-pipeline-split")
@click.option("--loss-in-split", is_flag=True, default=None,
              help="pin Megatron's --account-for-loss-in-pipeline-split")
@click.option("--overlap-grad-reduce/--no-overlap-grad-reduce", default=None,
              help="DP gradient reduction behind the backward (default on)")
@click.option("--tp-comm-overlap/--no-tp-comm-overlap", default=None,
              help="TP collectives behind the GEMMs (needs sequence parallel; default off)")
@click.option("--flash-attention/--no-flash-attention", default=True, show_default=True,
              help="fused attention kernel; off: unfused masked softmax (software switch)")
@click.option("--async-tp-allreduce/--no-async-tp-allreduce", default=True, show_default=True,
              help="backward TP all-reduce behind the weight-gradient GEMM (Megatron since "
                   "late 2021; software switch)")
@click.option("--fused-grad-accumulation/--no-fused-grad-accumulation", default=True,
              show_default=True, help="gradient accumulation inside the weight-gradient GEMM "
                                      "(Megatron since 2022; software switch)")
@click.option("--zero3-gather", type=click.Choice(["prefetch", "on-demand"]),
              default="prefetch", show_default=True,
              help="how ZeRO-3 gathers parameters: per unit, prefetched (Megatron-FSDP, FSDP2) "
                   "or per tensor, waited for (DeepSpeed 2021; software switch)")
@click.option("--precision", type=click.Choice(["bf16", "fp16", "fp8"]), default=None,
              help="GEMM precision (fp8 where the GPU has fp8 tensor cores)")
@click.option("--fp8-recipe", type=click.Choice(list(FP8_RECIPES)), default=None,
              help="fp8 scaling recipe, as Megatron's --fp8-recipe (needs --precision fp8 or "
                   "a workload with it; default tensorwise)")
@opt.a2a_pins
@opt.framework
@opt.calibration
@opt.time_limit
@opt.solver_controls
@click.option("--quiet", is_flag=True, help="no table and no progress on the terminal")
@serving_options
def solve(model_path, hw_path, out, as_json, kind, batch, seq_len, phase, input_len,
          output_len, expert_load, spare_slots, placement_budget, tp, pp, dp, ep, etp, cp,
          cp_comm, micro_batch, recompute, recompute_modules, zero, sequence_parallel,
          num_micro_batches, virtual_stages, first_stage_layers, last_stage_layers,
          embedding_in_split, loss_in_split, overlap_grad_reduce, tp_comm_overlap, flash_attention,
          async_tp_allreduce, fused_grad_accumulation, zero3_gather, precision, fp8_recipe,
          framework, calibration, time_limit, seed, workers, quiet, **serving) -> None:
    """Find the fastest layout of MODEL on HW and write its deployment plan."""
    a2a = {k: serving.pop(k) for k in opt.A2A_FLAGS}  # all-to-all and schedule pins

    def run():
        mf = load_model(model_path)
        wl = opt.workload_from_flags(mf.workload, "command line", kind, batch, seq_len, phase,
                                  input_len, output_len, expert_load, spare_slots, precision,
                                  fp8_recipe)
        wl = apply_targets(wl, serving)
        if wl is None:
            raise InputError(model_path, "workload",
                             "no workload section; pass --kind and --batch/--seq-len etc.")
        pins = {k: v for k, v in dict(tp=tp, pp=pp, dp=dp, ep=ep, etp=etp, cp=cp,
                                      cp_comm=cp_comm,
                                      micro_batch=micro_batch, recompute=recompute,
                                      recompute_modules=recompute_modules, zero=zero,
                                      sequence_parallel=sequence_parallel,
                                      num_micro_batches=num_micro_batches,
                                      virtual_stages=virtual_stages,
                                      first_stage_layers=first_stage_layers,
                                      last_stage_layers=last_stage_layers,
                                      embedding_in_split=embedding_in_split or None,
                                      loss_in_split=loss_in_split or None,
                                      overlap_grad_reduce=overlap_grad_reduce,
                                      overlap_tp_comm=tp_comm_overlap,
                                      **a2a).items()
                if v is not None}
        calib = opt.read_calibration(calibration)
        hw = load_any_hardware(hw_path)  # a `groups:` file: the mixed plan (api.solve)
        target = None
        if out or not as_json:  # refuse a bad destination before the search, not after it
            label = workload_label(wl.kind, wl.phase, wants_serving(wl) or any(
                solve_kwargs(serving).values()))
            target = check_target(out or default_plan_path(mf.model.name, hw.name, label))
        plan = api.solve(replace(mf, workload=wl), hw, pins=pins, time_limit_s=time_limit,
                         seed=seed, workers=workers, calibration=calib, progress=progress,
                         flash_attention=flash_attention, async_tp_allreduce=async_tp_allreduce,
                         fused_grad_accumulation=fused_grad_accumulation,
                         zero3_gather=zero3_gather, framework=framework,
                         placement_budget_s=placement_budget,
                         **solve_kwargs(serving))
        return plan, target, plan.to_json()

    progress = None if quiet else Progress()
    with Interruptible() as stop:
        plan, path, text = guard(lambda: stop.run(run, progress))
        if progress:
            progress("writing the plan")
            progress.done()
        stop.writing = (path, text)
        if as_json:
            click.echo(text)
            if path:
                guard(lambda: write_atomic(path, text))
            return
        guard(lambda: write_atomic(path, text))
        if not quiet:
            click.echo(slots_summary(plan.data) if plan.data.get("mode") == "ep_slots"
                       else mixed_summary(plan.data) if "mixed_groups" in plan.data
                       else summary(plan.data))
            if plan.data.get("mode") == "uniform":
                click.echo(uniform_summary(plan.data))
            if "serving" in plan.data:
                click.echo(serving_summary(plan.data))
            if "groups_apart" in plan.data:
                click.echo("\n".join(mixed_serving_summary(plan.data)))
        click.echo(f"plan written to {path}", err=True)

