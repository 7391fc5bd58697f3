"""Serving: the cost of one layout at one concurrency (TTFT, TPOT, KV-cache headroom;
evaluate), the search over layouts and loads with its Pareto frontier (frontier), prefill /
decode pools (disagg), the serving plan (plan) and the frontier as table, JSON and PNG
(report). Formulas: docs/serving.md."""

from .disagg import disagg_search
from .frontier import Targets, serving_search
from .plan import serve, wants_serving, why_not_served

__all__ = ["serve", "wants_serving", "why_not_served", "serving_search", "Targets",
           "disagg_search"]
