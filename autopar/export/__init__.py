"""Launch configurations of a plan: the vLLM, SGLang and TensorRT-LLM settings a serving plan
translates to, and the Megatron-LM flags or torchtitan job config of a training plan, with
what they cannot express marked inexact."""

from .engines import ENGINES, KindError, export_text, launch_from_plan, launch_section
from .megatron import megatron_entry, megatron_text
from .placement_maps import MAP_ENGINES, engine_map, read_map  # noqa: F401
from .torchtitan import torchtitan_entry, torchtitan_text
from .trtllm import trtllm_entry, trtllm_text

TARGETS = (*ENGINES, "trtllm", "megatron", "torchtitan")


def export_target(plan: dict, target: str, fmt: str = "command",
                  model_path: str | None = None) -> str:
    """The launch text of a plan for one target (KindError: the wrong plan kind or format)."""
    if target == "megatron":
        if fmt == "toml":
            raise KindError("Megatron-LM takes flags: use --format command or yaml")
        return megatron_text(plan, fmt)
    if target == "torchtitan":
        return torchtitan_text(plan, fmt)
    if target == "trtllm":
        return trtllm_text(plan, fmt, model_path)
    if fmt == "toml":
        raise KindError(f"{target} takes flags or a YAML --config: use --format command or yaml")
    return export_text(plan, target, fmt, model_path)


__all__ = ["ENGINES", "TARGETS", "KindError", "export_target", "export_text",
           "launch_from_plan", "launch_section", "megatron_entry", "megatron_text",
           "torchtitan_entry", "torchtitan_text", "trtllm_entry", "trtllm_text"]
