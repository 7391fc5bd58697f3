"""`autopar check --framework`: the target framework's rules (`spec.frameworks`, the same
tables the search filters its enumeration with) against a plan's layout, one finding per
rule the plan breaks, naming the layout field and where the rule comes from."""

from __future__ import annotations

from typing import Any

from ..spec import ModelSpec, Workload
from ..spec.frameworks import framework_choice, layout_values, load_framework
from .finding import Findings


def plan_framework(plan: dict, given: str | None) -> str | None:
    """The framework to check against: the one given, else the one the plan records."""
    if given is not None:
        return framework_choice(given, "command line")
    rec = plan.get("strategy", {}).get("framework") if isinstance(plan.get("strategy"),
                                                                    dict) else None
    return rec.get("name") if isinstance(rec, dict) else None


def check_framework(f: Findings, plan: dict, name: str, m: ModelSpec | None,
                    w: Workload | None) -> None:
    """Every rule of framework `name` the plan's strategy breaks, as an error."""
    fw = load_framework(name, "command line")
    if fw is None:
        return
    s: dict[str, Any] = plan["strategy"]
    rec = s.get("framework")
    if isinstance(rec, dict) and rec.get("name") not in (None, name):
        f.warn("framework", "strategy.framework.name", f"the plan was searched for "
               f"{rec.get('name')}, checked here against {name}", rec.get("name"), name)
    kind = w.kind if w is not None else plan.get("inputs", {}).get("workload", {}).get("kind")
    if kind is not None and kind not in fw.kinds:
        f.error("framework", "inputs.workload.kind", f"{fw.title} runs "
                f"{' and '.join(fw.kinds)} workloads, not {kind}", kind, list(fw.kinds))
        return
    if m is None:
        f.warn("framework", "inputs.model", f"no model: {fw.title}'s rules on layers and "
               "experts are not checked (pass --model)")
        return
    train = w is not None and w.kind == "training"
    values = layout_values(s, m.layers, m.experts, w.seq_len if train else 0, m.heads,
                           w.batch if train else 0)
    for r in fw.broken(values):
        f.error("framework", f"strategy.{r.field}",
                f"{fw.name} refuses it (rule {r.id}): {r.why} [{r.source}]",
                values[r.field], f"not ({r.forbid})")
