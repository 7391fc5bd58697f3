"""Training options: each changes time and memory by the amount a hand calculation gives."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner
from conftest import PROBLEMS

from autopar.cli import main
from autopar.cost.calibration import Calibration, parse_calibration
from autopar.cost.comm import all_reduce, group_link, reduce_scatter
from autopar.cost.evaluate import adam_traffic, evaluate, in_flight
from autopar.cost.layer import FLASH_BWD, MoEState, Problem
from autopar.cost.strategy import Strategy, StrategyError
from autopar.cost.tp_overlap import PIPELINE_SPLITS
from autopar.errors import InputError
from autopar.model.components import EW_BWD, layer_components
from autopar.plan import PHASES
from autopar.schema.gpus import gpu_records
from autopar.spec import GB, GPUSpec, HardwareSpec, LinkSpec, ModelSpec, Workload

H, A, F, V, L, S = 1024, 8, 4096, 1000, 8, 256
GPT = ModelSpec(name="gpt", layers=L, hidden=H, heads=A, kv_heads=A, head_dim=H // A,
                ffn_hidden=F, gated_mlp=False, vocab=V, dropout=True)
FAST = LinkSpec(1e15, 0.0)  # communication that costs nothing, to isolate a term


def hw(gpus: int = 1, per_node: int | None = None, intra: LinkSpec = FAST,
       inter: LinkSpec = FAST, fp8: bool = False, hbm: float = 2e12) -> HardwareSpec:
    peaks = {"bf16": 1e15, **({"fp8": 2e15} if fp8 else {})}
    gpu = GPUSpec("g", 1e6 * GB, peaks, hbm, gemm_eff=0.8, nvlink_eff=0.8)
    n = per_node or gpus
    return HardwareSpec("h", gpu, gpus // n, n, intra, inter, reserved_bytes=0.0)


def problem(gpus: int = 1, batch: int = 8, **kw) -> Problem:
    wl = Workload("training", batch=batch, seq_len=S, precision=kw.pop("precision", None))
    return Problem(GPT, hw(gpus, **kw.pop("hw", {})), wl, **kw)


def run(p: Problem, s: Strategy, bounds: list[int] | None = None):
    bounds = bounds or [round(k * L / s.pp) for k in range(s.pp + 1)]
    return evaluate(p, s, bounds, [MoEState()] * L)


def strat(gpus: int = 1, **kw) -> Strategy:
    kw.setdefault("num_micro_batches", 8 // kw.get("dp", 1) // kw.get("micro_batch", 1))
    return Strategy(gpus, **kw)


# --------------------------------------------------------------------------- memory
@pytest.mark.parametrize("zero,shard", [(0, (1, 1, 1)), (1, (1, 1, 4)), (2, (1, 4, 4)),
                                        (3, (4, 4, 4))])
def test_zero_stage_shards_weights_grads_states_over_dp(zero, shard):
    p = problem(4)
    base = run(p, strat(4, dp=4)).stages[0].memory
    mem = run(p, strat(4, dp=4, zero=zero)).stages[0].memory
    assert mem.weights == pytest.approx(base.weights / shard[0])
    assert mem.gradients == pytest.approx(base.gradients / shard[1])
    assert mem.optimizer == pytest.approx(base.optimizer / shard[2])
    # Adam in mixed precision: fp32 master + m + v = 12 bytes per parameter before sharding
    assert base.optimizer == pytest.approx(base.weights / 2 * 12)


def test_full_recompute_keeps_the_layer_input_and_runs_one_more_forward():
    p = problem()
    none = run(p, strat(micro_batch=8, num_micro_batches=1))
    full = run(p, strat(micro_batch=8, num_micro_batches=1, recompute="full"))
    lc = full.stages[0].layer_costs[0]
    assert lc.recompute == pytest.approx(lc.compute_fwd)
    assert full.step_time - none.step_time == pytest.approx(
        sum(c.compute_fwd for c in full.stages[0].layer_costs), rel=1e-9)
    assert lc.act_bytes == 8 * S * H * 2  # the input of each layer, bf16
    assert lc.act_bytes_none == none.stages[0].layer_costs[0].act_bytes


def test_sequence_parallel_splits_the_replicated_activations_by_tp():
    p = problem(4)
    plain = run(p, strat(4, tp=4)).stages[0].layer_costs[0]
    sp = run(p, strat(4, tp=4, sequence_parallel=True)).stages[0].layer_costs[0]
    T, b = S, 2  # one sample per micro-batch
    # norms' inputs (2), QKV and FC1 inputs (2), dropout masks after out and fc2 (2 x 1 byte)
    replicated = T * (4 * b * H + 2 * H)
    assert plain.act_bytes_none - sp.act_bytes_none == pytest.approx(replicated * (1 - 1 / 4))
    assert sp.tp_bytes == plain.tp_bytes  # RS + AG move what an all-reduce moves


def test_interleaving_shrinks_the_bubble_by_v_and_holds_more_in_flight():
    p = problem(4, batch=8)
    one = run(p, strat(4, pp=4, num_micro_batches=8))
    two = run(p, strat(4, pp=4, num_micro_batches=8, virtual_stages=2))
    assert two.bubble == pytest.approx(one.bubble / 2, rel=1e-4)  # stages equal, p2p free
    assert one.step_time - two.step_time == pytest.approx(one.bubble / 2, rel=1e-4)
    # stage 0 holds p (1 + (p - 1) / (p v)) micro-batches' worth instead of p
    assert in_flight(two.strategy, 0, True) == pytest.approx(4 * (1 + 3 / (4 * 2)))
    a1, a2 = one.stages[0].memory.activations, two.stages[0].memory.activations
    assert a2 / a1 == pytest.approx(1 + 3 / (4 * 2))


def test_interleaving_sends_one_activation_per_chunk_boundary():
    slow = LinkSpec(1e9, 0.0)
    p = problem(4, hw={"intra": slow})
    one = run(p, strat(4, pp=4, num_micro_batches=8)).stages[1]
    two = run(p, strat(4, pp=4, num_micro_batches=8, virtual_stages=2)).stages[1]
    send = S * H * 2 / 1e9 / 0.8  # one micro-batch's activations at 80% of the link
    assert one.p2p_fwd == pytest.approx(send) and two.p2p_fwd == pytest.approx(2 * send)


def test_interleaving_needs_micro_batches_in_multiples_of_pp():
    with pytest.raises(StrategyError, match="multiple of pp"):
        Strategy(4, pp=4, num_micro_batches=6, virtual_stages=2)


def test_more_micro_batches_amortise_the_bubble():
    p = problem(4, batch=16)
    few = run(p, strat(4, pp=4, micro_batch=4, num_micro_batches=4))
    many = run(p, strat(4, pp=4, micro_batch=1, num_micro_batches=16))
    per_mb = [st.busy for st in many.stages]
    assert many.bubble == pytest.approx(sum(per_mb) - max(per_mb))
    assert many.bubble / many.step_time < few.bubble / few.step_time


# --------------------------------------------------------------------------- time
def test_fp8_halves_gemm_time_when_compute_bound():
    fast = {"fp8": True, "hbm": 1e14}  # HBM fast enough that every GEMM is compute-bound
    bf = problem(hw=fast)
    f8 = problem(hw=fast, precision="fp8")
    s = strat(micro_batch=8, num_micro_batches=1)
    c_bf = {c.name: c for c in run(bf, s).stages[0].layer_costs[0].components}
    c_f8 = {c.name: c for c in run(f8, s).stages[0].layer_costs[0].components}
    for name in ("qkv", "out", "fc1", "fc2"):
        gemm_bf = c_bf[name].time_s - c_bf[name].ew_s
        gemm_f8 = c_f8[name].time_s - c_f8[name].ew_s
        assert gemm_f8 == pytest.approx(gemm_bf / 2)
    assert c_f8["attn"].time_s == c_bf["attn"].time_s  # attention stays 16-bit


def test_fp8_falls_back_to_16_bit_where_the_gpu_has_none():
    s = strat(micro_batch=8, num_micro_batches=1)
    plain = run(problem(), s).step_time
    assert run(problem(precision="fp8"), s).step_time == pytest.approx(plain)


def test_unoverlapped_gradient_reduce_is_fully_exposed():
    p = problem(4, hw={"intra": LinkSpec(1e10, 0.0)})
    on = run(p, strat(4, dp=4, zero=1)).stages[0]
    off = run(p, strat(4, dp=4, zero=1, overlap_grad_reduce=False)).stages[0]
    assert off.dp_sync == on.dp_sync > 0
    assert off.dp_exposed == pytest.approx(off.dp_sync)
    assert on.dp_exposed == pytest.approx(max(0.0, on.dp_sync - on.bwd))


def test_tp_overlap_hides_communication_behind_the_gemms():
    """[tp-overlap] The userbuffers hide most of the TP collectives but not for free: the
    pieces run as smaller GEMMs, the pipelined and bulk ones on S - 16 SMs, and the last
    piece's reduce-scatter waits."""
    p = problem(4, hw={"intra": LinkSpec(1e11, 0.0)})
    p = replace(p, hw=replace(p.hw, gpu=replace(p.hw.gpu, sms=108)))
    plain = run(p, strat(4, tp=4, sequence_parallel=True)).stages[0].layer_costs[0]
    over = run(p, strat(4, tp=4, sequence_parallel=True, overlap_tp_comm=True))
    lc = over.stages[0].layer_costs[0]
    assert plain.tp_fwd / 2 / PIPELINE_SPLITS <= lc.tp_fwd < plain.tp_fwd
    assert lc.tp_bwd < plain.tp_bwd
    sms = p.hw.gpu.sms
    gemm = {c.name: c.time_s - c.ew_s for c in lc.components}
    base = {c.name: c.time_s - c.ew_s for c in plain.components}
    bwd = {c.name: c.bwd_s for c in lc.components}
    base_bwd = {c.name: c.bwd_s for c in plain.components}
    for c in lc.components:
        if c.role == "row":  # pipelined forward on S - 16 SMs, smaller pieces
            assert gemm[c.name] >= base[c.name] * sms / (sms - 16) * (1 - 1e-9)
        if c.role == "column":  # ring-exchange forward; bulk backward on S - 16 SMs
            assert gemm[c.name] >= base[c.name] * (1 - 1e-9)
            assert bwd[c.name] > base_bwd[c.name]
    assert lc.compute_fwd > plain.compute_fwd
    with pytest.raises(StrategyError, match="sequence_parallel"):
        Strategy(4, tp=4, overlap_tp_comm=True)


def test_tp_overlap_pieces_cost_more_where_the_gemm_curve_falls():
    """TP 8 cuts the ring-exchange GEMM into 8 pieces, TP 2 into 2: the same layer's
    column GEMMs lose more to the overlap at TP 8 (smaller pieces run less efficiently)."""
    loss = {}
    for tp in (2, 8):
        p = problem(8, hw={"intra": LinkSpec(1e11, 0.0)})
        args = dict(tp=tp, dp=8 // tp, sequence_parallel=True)
        a = run(p, strat(8, **args)).stages[0].layer_costs[0]
        b = run(p, strat(8, overlap_tp_comm=True, **args)).stages[0].layer_costs[0]
        col = [c.name for c in a.components if c.role == "column"]
        t = {c.name: c.time_s - c.ew_s for c in a.components}
        u = {c.name: c.time_s - c.ew_s for c in b.components}
        loss[tp] = sum(u[n] for n in col) / sum(t[n] for n in col)
    assert loss[8] > loss[2] >= 1.0


@pytest.mark.parametrize("sp", [False, True])
def test_async_tp_allreduce_hides_the_input_gradient_collective_behind_wgrad(sp):
    """Megatron's async TP all-reduce: in the backward, QKV's and FC1's input-gradient
    all-reduce (reduce-scatter under SP) runs behind their weight-gradient GEMMs."""
    link = LinkSpec(2e10, 0.0)  # slow enough that the collective outlasts the small GEMMs
    s = strat(4, tp=4, micro_batch=8, num_micro_batches=1, sequence_parallel=sp)
    sync = run(problem(4, hw={"intra": link}, async_tp_allreduce=False), s)
    lc0 = sync.stages[0].layer_costs[0]
    lc = run(problem(4, hw={"intra": link}), s).stages[0].layer_costs[0]
    T, g = 8 * S, group_link(hw(4, intra=link), list(range(4)))
    cal = Calibration().resolve(hw(4).gpu)
    one = reduce_scatter(T * H * 2, g, cal) if sp else all_reduce(T * H * 2, g, cal)
    gemm = {c.name: c.time_s - c.ew_s for c in lc.components}
    hidden = min(one, gemm["qkv"]) + min(one, gemm["fc1"])
    assert 0 < hidden < lc0.tp_bwd
    assert lc.tp_bwd == pytest.approx(lc0.tp_bwd - hidden)
    assert lc.tp_fwd == lc0.tp_fwd  # the forward all-reduces wait for their result
    # full recompute: its forward's collectives stay exposed, the backward's hide as before
    full = replace(s, recompute="full")
    f0 = run(problem(4, hw={"intra": link}, async_tp_allreduce=False), full)
    f1 = run(problem(4, hw={"intra": link}), full)
    assert f1.stages[0].layer_costs[0].tp_bwd == pytest.approx(
        f0.stages[0].layer_costs[0].tp_bwd - hidden)
    assert f1.step_time < f0.step_time


def test_async_tp_allreduce_changes_nothing_without_tp():
    s = strat(micro_batch=8, num_micro_batches=1)
    assert run(problem(), s).step_time == run(problem(async_tp_allreduce=False), s).step_time


def test_unfused_attention_pays_for_its_score_matrix():
    s = strat(micro_batch=8, num_micro_batches=1)
    flash = run(problem(), s).stages[0].layer_costs[0]
    plain = run(problem(flash_attention=False), s).stages[0].layer_costs[0]
    attn = {c.name: c for c in plain.components}["attn"]
    b, T, ctx, d = 2, 8 * S, S, H // A
    softmax_dropout = A * ctx * (2 * b + 2 * b + 1) + 2 * b * A * d  # per token
    assert attn.ew_s == pytest.approx(T * softmax_dropout / (2e12 * 0.8))
    assert plain.compute_fwd > flash.compute_fwd
    # all of the causal score matrix is computed when not fused
    full = {c.name: c for c in layer_components(GPT, 0, S, True, False)}["attn"]
    half = {c.name: c for c in layer_components(GPT, 0, S, True, True)}["attn"]
    assert full.flops_per_token == 2 * half.flops_per_token


def test_backward_is_twice_the_gemms_and_ew_bwd_times_the_elementwise():
    """Fused attention's backward is 2.5x its forward (FlashAttention-2: 5 matmuls to 2);
    unfused, its two batched GEMMs are 2x like every other."""
    for flash in (True, False):
        lc = run(problem(flash_attention=flash),
                 strat(micro_batch=8, num_micro_batches=1)).stages[0].layer_costs[0]
        gemm = sum((FLASH_BWD if flash and c.role == "heads" else 2) * (c.time_s - c.ew_s)
                   for c in lc.components)
        ew = sum(c.ew_s for c in lc.components)
        assert lc.compute_bwd == pytest.approx(gemm + EW_BWD * ew)


def test_unfused_gradient_accumulation_reads_and_writes_the_main_gradient():
    s = strat(micro_batch=1, num_micro_batches=8)
    fused = run(problem(), s).stages[0]
    unfused = run(problem(fused_grad_accumulation=False), s).stages[0]
    params = sum(c.params for c in unfused.layer_costs[:1])
    per_mb = params * (2 + 2 * 4) / (2e12 * 0.8)  # bf16 gradient in, fp32 main read + write
    extra = unfused.layer_costs[0].compute_bwd - fused.layer_costs[0].compute_bwd
    assert extra == pytest.approx(per_mb)


def test_optimizer_step_moves_its_bytes_at_hbm_speed():
    p = problem(4)
    st = run(p, strat(4, dp=4, zero=1)).stages[0]
    params = sum(c.params for c in st.layer_costs + st.edges)
    # fp32 grads: norm read 4, Adam reads 4 and reads / writes 12 of states, master -> bf16
    assert adam_traffic(p) == 4 + 4 + 2 * 12 + 4 + 2
    assert st.optimizer == pytest.approx(adam_traffic(p) * params / 4 / (2e12 * 0.8))


def test_dp_ring_across_nodes_uses_every_members_nic():
    h = HardwareSpec("h", hw().gpu, 2, 8, LinkSpec(3e11, 0), LinkSpec(2.5e10, 0), 0.0)
    one_per_node = group_link(h, [0, 8])
    four_per_node = group_link(h, [0, 1, 2, 3, 8, 9, 10, 11])
    assert one_per_node.link.bytes_per_s == 2.5e10
    assert four_per_node.link.bytes_per_s == 4 * 2.5e10
    t1 = all_reduce(1e9, one_per_node, {"inter": 1.0})
    assert t1 == pytest.approx(2 * 1 / 2 * 1e9 / 2.5e10)


# --------------------------------------------------------------------------- calibration
def test_calibration_tables_override_the_curves(tmp_path):
    c = parse_calibration({
        "gemm": [{"gflop": 1, "efficiency": 0.4}, {"gflop": 100, "efficiency": 0.8}],
        "collectives": {"intra": [{"group": 8, "bytes": 1e6, "busbw_gbps": 50},
                                  {"group": 8, "bytes": 1e8, "busbw_gbps": 200},
                                  {"group": 2, "bytes": 1e6, "busbw_gbps": 90}]},
        "link_eff": {"inter": 0.5}, "attention_eff": 0.6}, "cal.yaml")
    assert c.gemm_eff(1000, 1000, 500) == pytest.approx(0.4)  # 1 GFLOP
    assert c.gemm_eff(1000, 1000, 5000) == pytest.approx(0.6)  # 10 GFLOP: halfway in log
    assert c.busbw("intra", 8, 1e7) == pytest.approx(125e9)
    assert c.busbw("intra", 3, 1e6) == pytest.approx(90e9)  # nearest measured group size
    assert c.busbw("inter", 8, 1e7) is None and c.link("inter") == 0.5
    g = group_link(HardwareSpec("h", hw().gpu, 1, 8, FAST, FAST, 0.0), list(range(8)))
    assert all_reduce(1e8, g, c) == pytest.approx(2 * 7 / 8 * 1e8 / 200e9)


def test_calibration_defaults_come_from_the_gpu_catalogue():
    p = Problem(GPT, hw(), Workload("training", 8, S))
    assert p.calib.gemm_peak == 0.8 and p.calib.link("intra") == 0.8
    mine = replace(Calibration(gemm_peak=0.5), link_eff={"local": 1, "intra": 0.3,
                                                         "inter": 0.9})
    p = Problem(GPT, hw(), Workload("training", 8, S), mine)
    assert p.calib.gemm_peak == 0.5 and p.calib.link("intra") == 0.3


@pytest.mark.parametrize("bad", [
    {"gemm": [{"gflop": 1, "efficiency": 1.5}]},
    {"gemm": [{"gflop": 1, "efficiency": 0.5}, {"gflop": 1, "efficiency": 0.6}]},
    {"collectives": {"intra": [{"group": 8, "bytes": 1e6}]}},
    {"kernel_floor_us": -1},
    {"kernel_floor_us": 5000},
    {"collectives": {"nvlink": []}},
])
def test_bad_calibration_files_name_the_field(bad):
    with pytest.raises(InputError):
        parse_calibration(bad, "cal.yaml")


def test_example_calibration_file_parses():
    from autopar.spec import read_data

    path = PROBLEMS / "calibration" / "example.yaml"
    c = parse_calibration(read_data(path), str(path))
    assert c.gemm_table and c.collectives["intra"]


# --------------------------------------------------------------------------- plan and CLI
def test_cli_pins_training_options_and_plan_reports_phases(tmp_path, write_yaml):
    hw_path = write_yaml("a100-8node.yaml", {
        "name": "a100-8node", "gpu": {"type": "A100-SXM4-80GB"}, "nodes": 8,
        "gpus_per_node": 8, "intra_node": {"bandwidth_gbps": 300},
        "inter_node": {"bandwidth_gbps": 25}})
    out = tmp_path / "plan.json"
    r = CliRunner().invoke(main, [
        "solve", "--model", str(PROBLEMS / "models" / "llama3-70b.yaml"), "--hw", str(hw_path),
        "--batch", "16", "--seq-len", "4096", "--tp", "8", "--pp", "4", "--dp", "2",
        "--micro-batch", "1", "--virtual-stages", "2", "--recompute", "full",
        "--zero", "1", "--no-overlap-grad-reduce", "--time-limit", "5", "--quiet",
        "--out", str(out)])
    assert r.exit_code == 0, r.output
    plan = json.loads(out.read_text())
    s, t = plan["strategy"], plan["timing"]
    assert (s["virtual_stages"], s["overlap_grad_reduce"], s["num_micro_batches"]) == (2, False, 8)
    assert t["schedule"] == "interleaved-1f1b"
    assert sum(t[k] for k in PHASES) == pytest.approx(t["step_time_s"], rel=1e-9)
    assert t["dp_exposed_s"] > 0  # not overlapped: the whole reduction shows
    assert plan["metrics"]["dominant_term"] == max(PHASES, key=t.get).removesuffix("_s")
    mem = gpu_records(plan)[0]["memory"]
    o = mem["optimizer_states"]
    assert o["master_bytes"] + o["adam_m_bytes"] + o["adam_v_bytes"] == pytest.approx(
        mem["optimizer_bytes"])
    assert o["zero_stage"] == 1 and o["sharded_over"]["dense"] == 2
    assert mem["activations_no_recompute_bytes"] > mem["activations_bytes"] > 0


def test_cli_software_switches_reach_the_cost_model_and_the_plan(tmp_path, write_yaml):
    """--no-async-tp-allreduce / --no-fused-grad-accumulation model older Megatron: the same
    pinned TP 8 layout takes longer, and the plan echoes the switches."""
    hw_path = write_yaml("a100-8node.yaml", {
        "name": "a100-8node", "gpu": {"type": "A100-SXM4-80GB"}, "nodes": 8,
        "gpus_per_node": 8, "intra_node": {"bandwidth_gbps": 300},
        "inter_node": {"bandwidth_gbps": 25}})

    def solve(*flags: str) -> dict:
        out = tmp_path / f"plan{len(flags)}.json"
        r = CliRunner().invoke(main, [
            "solve", "--model", str(PROBLEMS / "models" / "llama3-70b.yaml"),
            "--hw", str(hw_path), "--batch", "8", "--seq-len", "2048",
            "--tp", "8", "--pp", "8", "--dp", "1", "--micro-batch", "1",
            "--recompute", "full", "--zero", "0", "--no-sequence-parallel",
            "--time-limit", "5", "--quiet", "--out", str(out), *flags])
        assert r.exit_code == 0, r.output
        return json.loads(out.read_text())

    new, old = solve(), solve("--no-async-tp-allreduce", "--no-fused-grad-accumulation")
    assert new["inputs"]["options"]["async_tp_allreduce"] is True
    assert old["inputs"]["options"]["async_tp_allreduce"] is False
    assert old["inputs"]["options"]["fused_grad_accumulation"] is False
    assert old["timing"]["tp_comm_exposed_s"] > new["timing"]["tp_comm_exposed_s"]
    assert old["timing"]["step_time_s"] > new["timing"]["step_time_s"]


def test_a100_gemm_default_is_what_the_fit_derives():
    """The catalogue figure must follow the cost model: re-run the fit when either changes."""
    import sys

    sys.path.insert(0, str(PROBLEMS.parent / "benchmarks" / "validation"))
    from fit_a100_gemm import anchor, fit

    from autopar.spec import gpu_catalogue

    a100 = gpu_catalogue()["A100-SXM4-80GB"]
    assert a100["gemm_tflops"] / a100["tflops"]["bf16"] == pytest.approx(fit(anchor()), rel=0.01)
