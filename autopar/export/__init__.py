"""Launch configurations of a plan: the vLLM and SGLang flags (and YAML) a serving plan
translates to, and the Megatron-LM flags of a training plan, with what they cannot express
marked inexact."""

from .engines import ENGINES, KindError, export_text, launch_from_plan, launch_section
from .megatron import megatron_entry, megatron_text
from .placement_maps import MAP_ENGINES, engine_map, read_map  # noqa: F401

TARGETS = (*ENGINES, "megatron")

__all__ = ["ENGINES", "TARGETS", "KindError", "export_text", "launch_from_plan",
           "launch_section", "megatron_entry", "megatron_text"]
