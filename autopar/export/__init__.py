"""Launch configurations of a plan: the vLLM and SGLang flags (and YAML) a serving plan
translates to, with what they cannot express marked inexact."""

from .engines import ENGINES, export_text, launch_from_plan, launch_section

__all__ = ["ENGINES", "export_text", "launch_from_plan", "launch_section"]
