"""Expert placement of MoE layers over an EP group: CP-SAT against the frameworks' baselines.

Public: PlacementProblem and Placement, place_experts (one layer, with an optional budget),
place_layers (many), route_loads (the routing rule), check_placement, lower_bound,
check_budget, the greedy and round_robin baselines and eplb (DeepSeek's balancer, ported).
Modules, in import order: problem, core (the integer instance), baselines, eplb, flat and
hier (the CP-SAT models), improve (swap descent, LNS windows), anytime (the solver-free
placement that is ready first), place (one layer), layers, rebalance (full slot tables for
the engines and whether a new placement is worth moving to).
"""

from .baselines import greedy, round_robin  # noqa: F401
from .eplb import eplb  # noqa: F401
from .layers import place_layers  # noqa: F401
from .place import check_budget, place_experts  # noqa: F401
from .problem import (  # noqa: F401
    Placement,
    PlacementProblem,
    check_placement,
    lower_bound,
    route_loads,
)
