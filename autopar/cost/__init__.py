"""The cost model: achieved efficiencies (calibration), alpha-beta collectives on the links a
group spans (comm), one layer's compute, communication, parameters and activations on one GPU
(layer), and stages, per-GPU memory and the step time of a layout composed from them
(evaluate). `Strategy` is the layout being costed. Formulas: docs/cost-model.md."""

from .calibration import Calibration, parse_calibration
from .evaluate import Evaluation, evaluate
from .layer import LayerCost, MoEState, Problem, layer_cost
from .strategy import Strategy, StrategyError

__all__ = ["Calibration", "parse_calibration", "Problem", "Strategy", "StrategyError",
           "MoEState", "LayerCost", "layer_cost", "Evaluation", "evaluate"]
