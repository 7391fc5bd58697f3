"""`autopar.solve` on a mixed file: the mixed solve (`search.mixed_solve`) and the plan of
its fastest form, the pipeline (`mixed`), the data-parallel shares (`mixed_shares`) or one
layout paced by the slowest type (`mixed_uniform`)."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..cost.fp8 import check_weights
from ..cost.layer import Problem
from ..errors import InfeasibleError, InputError
from ..search import PIN_KEYS, SearchOptions
from ..search.deadline import Deadline
from ..search.mixed_solve import solve_mixed
from ..spec.groups import MIXED_SUPPORT, MixedHardware
from .document import Plan
from .mixed import build_mixed_plan
from .mixed_shares import build_shares_plan
from .mixed_slots import build_slots_plan
from .mixed_uniform import build_uniform_plan


def solve_mixed_plan(p: Problem, hw: MixedHardware, opts: SearchOptions, deadline: Deadline,
                     say: Callable[[str], None]) -> Plan:
    """`autopar.solve` on a mixed file: a training step or one inference step (a prefill or
    a decode step of the workload's batch: the TTFT / TPOT a plan states), each group able
    to run the checkpoint; InfeasibleError when no form fits. A serving search (whole
    requests, TTFT / TPOT targets) plans one type and refuses the file in one line."""
    if p.workload.wants_serving:
        raise InputError("workload", "phase", "solve_mixed_plan plans a training step or one "
                         "prefill / decode step; the serving search on a mixed file is "
                         "serve.mixed.serve_mixed (autopar.solve takes either)")
    if opts.framework != "any" and not MIXED_SUPPORT.get(opts.framework, {}).get(
            "mixed_pipeline"):
        raise InputError("framework", opts.framework, "runs no pipeline over mixed GPU "
                         f"groups (known: {', '.join(MIXED_SUPPORT)}, or any)")
    bad = [k for k in opts.pins if k not in PIN_KEYS]
    if bad:
        raise InputError("pins", bad[0], f"unknown option; known: {', '.join(PIN_KEYS)}")
    for g in hw.groups:
        check_weights(p.model, g.hw, f"{hw.source or hw.name}: group {g.name}")
    say(f"searching pipelines over {len(hw.groups)} GPU groups")
    t0 = time.perf_counter()
    done = solve_mixed(p, hw, opts, deadline)
    r = done.result
    if done.mode == "ep_slots":
        say("building the mixed plan (EP groups across the types, slots by speed)")
        return Plan(build_slots_plan(done.uniform[0], hw, opts, done.slots, done.compared,
                                     opts.framework, time.perf_counter() - t0))
    if done.mode == "uniform":
        say("building the plan paced by the slowest type (faster than every mixed form)")
        q, ur = done.uniform
        return build_uniform_plan(q, hw, opts, ur, done.compared, deadline)
    if done.mode == "dp_shares":
        say("building the mixed plan (data-parallel shares)")
        return Plan(build_shares_plan(p, hw, opts, done.shares, done.compared,
                                      opts.framework, time.perf_counter() - t0))
    if r.best is None:
        alone = [c for c in done.compared.values() if c.get("step_time_s")]
        raise InfeasibleError(f"no pipeline over every group of {hw.name} fits ({r.why})",
                              "a one-type plan fits " + alone[0]["hardware"] if alone
                              else "nor does one with every GPU as the slowest type or on the "
                              "fastest group alone: add GPUs or memory (e.g. a leaner "
                              "optimizer: workload.optimizer)")
    say("building the mixed plan")
    return Plan(build_mixed_plan(done.problems[0], done.problems, opts, r, done.compared,
                                 opts.framework, time.perf_counter() - t0))
