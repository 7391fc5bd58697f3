"""autopar: find the parallel layout of a transformer on a GPU cluster that minimizes step
latency, and emit it as a deployment plan whose every figure can be recomputed."""

__version__ = "0.1.0"
