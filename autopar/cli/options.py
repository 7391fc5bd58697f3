"""Command-line options that several commands share, defined once so that `solve` and
`frontier` spell, range-check and explain them the same way, and the exit codes that every
command's help lists."""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from ..errors import InputError
from ..search.deadline import MAX_TIME_LIMIT_S, check_time_limit
from ..search.placement import check_budget
from ..spec import parse_workload

EXIT_CODES = {
    "solve": "0 plan written; 2 bad input (one line naming the file, the field and the "
             "problem); 3 infeasible (why, and the smallest change that fits); 70 internal "
             "error; 130 / 143 interrupted by SIGINT / SIGTERM (nothing written)",
    "frontier": "0 frontier written; 2 bad input; 3 no feasible point (why, and what would "
                "fit); 70 internal error; 130 / 143 interrupted (nothing written)",
    "check": "0 sound (warnings only); 1 errors found; 2 unusable input; 70 internal error",
    "export": "0 configuration printed; 2 bad input (not an autopar plan, or not one the "
              "engine can launch); 70 internal error",
    "scale": "0 every size written (an infeasible size is a row with its reason); 2 bad "
             "input (a size that is not whole nodes, a bad file) or an --out that holds a run "
             "without --resume; 70 internal error",
    "sweep": "0 every point written (infeasible points are rows, not failures); 2 bad study "
             "file or an --out that holds a sweep without --resume; 70 internal error",
    "recommend": "0 a GPU type meets the target (the answer and the runner-up printed); 2 "
                 "bad input (a bad target names its field); 3 no GPU type meets it within "
                 "--max-nodes (the most reached printed); 70 internal error",
    "place": "0 placed (the JSON printed, the map written to --out); 2 bad input (one line "
             "naming the file, the field and the problem); 70 internal error; 130 / 143 "
             "interrupted (nothing written)",
    "verify": "0 the plan ran and matched one process within the tolerance; 1 it did not, "
              "or its shards do not cover a tensor (the layer and tensor named); 2 bad input "
              "or torch not installed (the extra to install); 70 internal error",
    "trace": "0 trace written; 2 bad input (not an autopar plan, or one whose layout the cost "
             "model cannot re-evaluate); 70 internal error",
    "explain": "0 explained; 2 bad input (not an autopar plan, or one that cannot be "
               "re-evaluated); 70 internal error",
    "plot": "0 pictures written; 2 bad input or the plot extra (matplotlib) not installed; 70 "
            "internal error",
    "calibrate": "0 calibration written; 2 bad input (one line naming the file, the line or "
                 "field and the problem) or aiconfigurator-core not installed; 70 internal "
                 "error",
}


def epilog(command: str) -> str:
    """The exit-code paragraph of a command's --help."""
    return "Exit codes: " + EXIT_CODES[command]


def _stack(*decorators: Callable) -> Callable:
    def apply(f: Callable) -> Callable:
        for d in reversed(decorators):
            f = d(f)
        return f
    return apply


def model_hw(f: Callable) -> Callable:
    """--model and --hw, both required."""
    return _stack(
        click.option("--model", "model_path", required=True, type=click.Path(),
                     help="model YAML (with an optional workload section), HF config.json, "
                          "or an HF checkpoint folder (only its config.json is read)"),
        click.option("--hw", "hw_path", required=True, type=click.Path(dir_okay=False),
                     help="hardware YAML"),
    )(f)


def request_lengths(f: Callable) -> Callable:
    """Inference request shape and routing."""
    return _stack(
        click.option("--input-len", type=click.IntRange(1, 10_000_000), default=None,
                     help="inference: prompt tokens per request (ISL)"),
        click.option("--output-len", type=click.IntRange(0, 10_000_000), default=None,
                     help="inference: generated tokens per request (OSL)"),
        click.option("--expert-load", default=None,
                     help="expert routing: uniform | zipf:S[:SEED] | FILE "
                          "(docs/expert-load.md)"),
    )(f)


def spare_slots(f: Callable) -> Callable:
    return click.option("--spare-slots", type=click.IntRange(0, 1024), default=None,
                        help="extra expert slots per GPU for replicas of hot experts "
                             "(default: searched under skew)")(f)


def _or_exit(check: Callable[[float, str], float], value: float, flag: str) -> float:
    """A flag's value checked as it is parsed, before any work: refused in one line, exit 2."""
    try:
        return check(value, flag)
    except InputError as exc:
        click.echo(f"autopar: error: {exc}", err=True)
        sys.exit(exc.exit_code)


def _placement_budget_value(ctx: click.Context, param: click.Parameter,
                            value: float | None) -> float | None:
    """--placement-budget: finite seconds >= 0."""
    return None if value is None else _or_exit(check_budget, value, "--placement-budget")


def placement_budget(f: Callable) -> Callable:
    """--placement-budget: seconds per MoE layer's expert placement (anytime, then CP-SAT)."""
    return click.option("--placement-budget", type=float, default=None, metavar="SECONDS",
                        callback=_placement_budget_value,
                        help="seconds per MoE layer's expert placement: the anytime "
                             "placement, then CP-SAT in what is left (0: anytime only; "
                             "default: CP-SAT up to a quarter of --time-limit, 1 s at most)")(f)


def decode_hw(f: Callable) -> Callable:
    return click.option("--decode-hw", type=click.Path(dir_okay=False), default=None,
                        help="hardware YAML of the decode pool (implies --disaggregate)")(f)


def degree_pins(f: Callable) -> Callable:
    """--tp --pp --dp --ep --etp: pin a degree; the rest is searched."""
    what = {"tp": "tensor-parallel degree", "pp": "number of pipeline stages",
            "dp": "data-parallel degree", "ep": "expert-parallel degree",
            "etp": "expert tensor-parallel degree"}
    return _stack(*(click.option(f"--{k}", type=click.IntRange(1, 100_000), default=None,
                                 help=f"pin the {v}") for k, v in what.items()))(f)


def framework(f: Callable) -> Callable:
    """--framework: the engine whose rules shape the space (checked by the API, so that a
    bad name is the same one-line error from the CLI and the library)."""
    return click.option(
        "--framework", default="any", show_default=True, metavar="NAME",
        help="search only layouts this framework runs: megatron, torchtitan, deepspeed "
             "(training), vllm, sglang, trtllm (serving), or any (docs/frameworks.md)")(f)


A2A_FLAGS = ("a2a_overlap", "moe_dispatcher", "a2a_fp8", "a2a_node_limit", "a2a_sms",
             "moe_capacity_factor", "moe_pad_to_capacity", "moe_token_drop_policy",
             "pipeline_schedule")


def a2a_pins(f: Callable) -> Callable:
    """The expert all-to-all as engines run it (docs/cost-model.md [a2a-overlap, deepep])."""
    return _stack(
        click.option("--a2a-overlap/--no-a2a-overlap", default=None,
                     help="pin Megatron's combined 1F1B (--overlap-moe-expert-parallel-comm): "
                          "a micro-batch's all-to-all behind another's compute (default: "
                          "searched in training)"),
        click.option("--moe-dispatcher", type=click.Choice(["alltoall", "deepep"]),
                     default=None, help="pin the token dispatcher: NCCL all-to-all or "
                     "DeepEP's node-deduplicated one (Megatron flex, SGLang --moe-a2a-backend "
                     "deepep; default: searched where EP spans NVLink domains)"),
        click.option("--a2a-fp8/--no-a2a-fp8", default=None,
                     help="DeepEP: dispatch in fp8, combine in bf16 (default off)"),
        click.option("--a2a-node-limit", type=click.IntRange(0, 100_000), default=None,
                     help="DeepEP: node-limited routing, each token to at most N NVLink "
                          "domains (DeepSeek-V3: 4; Megatron --moe-router-group-topk; 0 none)"),
        click.option("--a2a-sms", type=click.IntRange(0, 100_000), default=None,
                     help="SMs the overlapped dispatch / combine kernels hold (DeepEP "
                          "num_sms; default 20)"),
        click.option("--moe-capacity-factor", type=click.FloatRange(0, 1e6), default=None,
                     help="training: token dropping, each expert takes at most ceil(F x "
                          "tokens x top_k / experts) of a rank's micro-batch (Megatron "
                          "--moe-expert-capacity-factor; never searched, it changes what the "
                          "experts learn; default 0, dropless; docs/cost-model.md capacity)"),
        click.option("--moe-pad-to-capacity/--no-moe-pad-to-capacity", default=None,
                     help="with a capacity: every expert computes (and the all-to-all sends) "
                          "exactly capacity rows (Megatron --moe-pad-expert-input-to-capacity)"),
        click.option("--moe-token-drop-policy", type=click.Choice(["probs", "position"]),
                     default=None, help="with a capacity: which copies drop, lowest router "
                     "probability or latest position (recorded and exported; costs the same)"),
        click.option("--pipeline-schedule", type=click.Choice(["1f1b", "dualpipe", "dualpipev"]),
                     default=None, help="pin the pipeline schedule: Megatron's 1F1B "
                     "(interleaved with --virtual-stages) or DeepSeek's DualPipe / DualPipeV "
                     "(docs/cost-model.md [dualpipe]; default: searched for MoE on even PP)"),
    )(f)


def calibration(f: Callable) -> Callable:
    return click.option("--calibration", type=click.Path(dir_okay=False), default=None,
                        help="YAML of measured efficiencies overriding the defaults; "
                             "'bundled': insist on the measured GEMM / NCCL / fused-MoE "
                             "tables shipped for the GPU type (used by default where they "
                             "exist); 'defaults': the catalogue's flat fractions "
                             "(docs/calibration.md)")(f)


def read_calibration(value: str | None):
    """--calibration's value as make_problem takes it: None, the names 'bundled' and
    'defaults' (resolved against the hardware's GPU type there), or the parsed file
    (./bundled for a file so named)."""
    from ..cost.bundled import BUNDLED, DEFAULTS
    from ..cost.calibration import parse_calibration
    from ..spec.datafile import read_data

    if value is None or value in (BUNDLED, DEFAULTS):
        return value
    return parse_calibration(read_data(value), value)


def solver_controls(f: Callable) -> Callable:
    """CP-SAT seed and workers, recorded in the plan."""
    return _stack(
        click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True,
                     help="CP-SAT random seed (recorded in the plan)"),
        click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
                     help="CP-SAT search workers (1: deterministic)"),
    )(f)


def latency_targets(f: Callable) -> Callable:
    """Serving latency limits."""
    return _stack(
        click.option("--ttft-ms", type=click.FloatRange(0.001, 1e9), default=None,
                     help="time-to-first-token limit (ms): a serving constraint"),
        click.option("--tpot-ms", type=click.FloatRange(0.001, 1e9), default=None,
                     help="time-per-output-token limit (ms): a serving constraint"),
    )(f)


def _time_limit_value(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """--time-limit: a finite number of seconds above 0 (NaN used to reach the plan as
    invalid JSON)."""
    return _or_exit(check_time_limit, value, "--time-limit")


def time_limit(f: Callable) -> Callable:
    """--time-limit: seconds for the whole run, shared by `solve` and `frontier`."""
    return click.option("--time-limit", type=float, default=10.0, show_default=True,
                        callback=_time_limit_value,
                        help="seconds for the whole run (search, placements, plan); a run "
                             "cut short gives the best found so far (a plan says FEASIBLE, "
                             f"with a bound); finite, > 0 and <= {MAX_TIME_LIMIT_S:.0f}")(f)


def workload_from_flags(base, source: str, kind, batch, seq_len, phase, input_len, output_len,
                         expert_load, spare_slots, precision=None, fp8_recipe=None):
    data = {}
    if base is not None:
        data = {"kind": base.kind}
        if base.kind == "training":
            data.update(global_batch=base.batch, seq_len=base.seq_len,
                        optimizer={"grad_dtype": base.grad_dtype,
                                   "master_dtype": base.master_dtype,
                                   "state_dtype": base.state_dtype})
        else:
            data.update(batch=base.batch, phase=base.phase, input_len=base.input_len,
                        output_len=base.output_len, ttft_ms=base.ttft_ms,
                        tpot_ms=base.tpot_ms)
            data.update({k: v for k, v in (("token_budget", base.token_budget),
                                           ("two_batch_overlap", base.two_batch_overlap))
                         if v is not None})
        data.update(expert_load=base.expert_load, spare_slots=base.spare_slots,
                    causal=base.causal)
        if base.precision:
            data["precision"] = base.precision
    if kind:
        if base is not None and kind != base.kind:
            data = {"expert_load": data.get("expert_load", "uniform")}
        data["kind"] = kind
    flags = {"seq_len": seq_len, "phase": phase, "input_len": input_len,
             "output_len": output_len, "expert_load": expert_load, "spare_slots": spare_slots,
             "precision": precision, "fp8_recipe": fp8_recipe}
    if batch is not None:
        data["global_batch" if data.get("kind") == "training" else "batch"] = batch
    data.update({k: v for k, v in flags.items() if v is not None})
    if base is not None and base.fp8_recipe and data.get("precision") == "fp8":
        data.setdefault("fp8_recipe", base.fp8_recipe)  # the file's recipe unless overridden
    if not data:
        return None
    if data.get("kind") != "training":
        data.pop("optimizer", None)
    return parse_workload(data, source)
