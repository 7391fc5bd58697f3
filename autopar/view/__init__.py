"""Seeing a plan (docs/seeing-a-plan.md): the modeled step as a Chrome trace (`trace`), why
the layout won (`explain`: runner-ups, binding constraint, sensitivity) and pictures
(`plot`, the `plot` extra). Everything is read from a plan JSON; where per-component times
are needed the layout is re-evaluated with the cost model from the plan's `inputs` echo
(`rebuild`), never re-searched."""

from .reeval import Rebuilt, rebuild
from .trace import step_events, trace_document

__all__ = ["Rebuilt", "rebuild", "step_events", "trace_document"]
