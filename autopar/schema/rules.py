"""The plan schema's structural rules (required keys, types, enums, minima) without jsonschema.

jsonschema is a test dependency only; `autopar check` needs just enough of the schema to say
which section a partial plan lacks and which value has the wrong type, before any figure is
recomputed from it. Problems repeated over array items are reported once with a count.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Any

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and v.is_integer()),
}


@cache
def plan_schema() -> dict[str, Any]:
    return json.loads(resources.files("autopar").joinpath("schema/plan.schema.json").read_text())


@cache
def mixed_schema() -> dict[str, Any]:
    """The format of a plan over mixed GPU groups (`"mixed_groups": 1`)."""
    return json.loads(resources.files("autopar").joinpath("schema/mixed.schema.json")
                      .read_text())


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _resolve(schema: dict, root: dict) -> dict:
    """A `{"$ref": "#/$defs/name"}` as the schema it names (local references only)."""
    while "$ref" in schema:
        node: Any = root
        for key in schema["$ref"].removeprefix("#/").split("/"):
            node = node[key]
        schema = node
    return schema


def _problems(value: Any, schema: dict, path: str, out: list[tuple[str, str]],
              root: dict | None = None) -> None:
    root = root if root is not None else schema
    schema = _resolve(schema, root)
    if "oneOf" in schema:
        alts = [_resolve(a, root) for a in schema["oneOf"]]
        typed = [a for a in alts if "type" not in a or _TYPES[a["type"]](value)]
        if len(typed) == 1:  # the one form this value can be: its own problems, in detail
            _problems(value, typed[0], path, out, root)
            return
        for alt in typed:
            trial: list[tuple[str, str]] = []
            _problems(value, alt, path, trial, root)
            if not trial:
                break
        else:
            kinds = "/".join(a.get("type", "?") for a in alts)
            out.append((path, f"expected {kinds}, got {type(value).__name__}"))
        return
    t = schema.get("type")
    if t and not _TYPES[t](value):
        out.append((path, f"expected {t}, got {type(value).__name__} {value!r:.40}"))
        return
    if "enum" in schema and value not in schema["enum"]:
        out.append((path, f"{value!r:.40} is not one of {schema['enum']}"))
        return
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            out.append((path, f"{value} is below the minimum {schema['minimum']}"))
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            out.append((path, f"{value} must be above {schema['exclusiveMinimum']}"))
    if isinstance(value, dict):
        for key in schema.get("required", ()):
            if key not in value:
                out.append((_join(path, key), "missing (required by the schema)"))
        props = schema.get("properties", {})
        for key, sub in props.items():
            if key in value:
                _problems(value[key], sub, _join(path, key), out, root)
        rest = schema.get("additionalProperties")
        if isinstance(rest, dict):  # a map: every other key's value by one schema
            for key in value:
                if key not in props:
                    _problems(value[key], rest, _join(path, key), out, root)
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            out.append((path, f"{len(value)} items, fewer than {schema['minItems']}"))
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            out.append((path, f"{len(value)} items, more than {schema['maxItems']}"))
        if "items" in schema:
            for i, item in enumerate(value):
                _problems(item, schema["items"], _join(path, i), out, root)


def schema_problems(plan: Any, schema: dict | None = None) -> list[tuple[str, str]]:
    """(path, problem) for each rule broken; one entry per pattern over array items."""
    raw: list[tuple[str, str]] = []
    _problems(plan, schema or plan_schema(), "", raw)
    grouped: dict[tuple[str, str], list[str]] = {}
    for path, msg in raw:
        grouped.setdefault((re.sub(r"\[\d+\]", "[*]", path), msg), []).append(path)
    out = []
    for (pattern, msg), paths in grouped.items():
        if len(paths) == 1:
            out.append((paths[0], msg))
        else:
            out.append((pattern, f"{msg}: {len(paths)} times (first {paths[0]})"))
    return out
