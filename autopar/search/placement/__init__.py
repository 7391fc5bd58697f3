"""Expert placement of MoE layers over an EP group: CP-SAT against the frameworks' baselines.

Public: PlacementProblem and Placement, place_experts (one layer), place_layers (many),
route_loads (the routing rule), check_placement, lower_bound, and the greedy and round_robin
baselines.
"""

from .problem import (  # noqa: F401
    Placement,
    PlacementProblem,
    check_placement,
    greedy,
    lower_bound,
    place_experts,
    place_layers,
    round_robin,
    route_loads,
)
