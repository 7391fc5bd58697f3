"""Expert placement of MoE layers over an EP group: CP-SAT against the frameworks' baselines.

Public: PlacementProblem and Placement, place_experts (one layer), place_layers (many),
route_loads (the routing rule), check_placement, lower_bound, and the greedy and round_robin
baselines. Modules, in import order: problem, core (the integer instance), baselines, flat and
hier (the CP-SAT models), improve (swap descent, LNS windows), place (one layer), layers.
"""

from .baselines import greedy, round_robin  # noqa: F401
from .layers import place_layers  # noqa: F401
from .place import place_experts  # noqa: F401
from .problem import (  # noqa: F401
    Placement,
    PlacementProblem,
    check_placement,
    lower_bound,
    route_loads,
)
