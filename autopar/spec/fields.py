"""Typed, range-checked reading of one mapping from an input file.

Every failure is an InputError naming the file, the dotted field path and the problem, and a
mapping with keys nobody asked for is rejected by `finish()`: an unknown key is a typo until
proven otherwise.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping
from typing import Any

from ..errors import InputError

MISSING = object()
MAX_INT = 10**15  # bounds every integer so hostile inputs cannot make loops explode


class Fields:
    """Reads fields from `data`, remembering which keys were consumed."""

    def __init__(self, source: str, data: Any, path: str = "") -> None:
        if not isinstance(data, Mapping):
            raise InputError(source, path or "(top level)",
                             f"expected a mapping, got {_kind(data)}")
        self.source = source
        self.data = data
        self.path = path
        self.used: set[str] = set()

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, problem: str) -> InputError:
        return InputError(self.source, self.field(key), problem)

    def has(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def _get(self, key: str, default: Any) -> Any:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if default is MISSING:
                raise self.error(key, "missing required field")
            return default
        return self.data[key]

    def int(self, key: str, lo: int = 0, hi: int = MAX_INT, default: Any = MISSING) -> Any:
        value = self._get(key, default)
        if value is default and default is not MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise self.error(key, f"expected an integer, got {_kind(value)} {_show(value)}")
        if not lo <= value <= hi:
            raise self.error(key, f"{value} is out of range [{lo}, {hi}]")
        return value

    def float(self, key: str, lo: float = 0.0, hi: float = 1e30, default: Any = MISSING) -> Any:
        value = self._get(key, default)
        if value is default and default is not MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"expected a number, got {_kind(value)} {_show(value)}")
        value = float(value)
        if not math.isfinite(value) or not lo <= value <= hi:
            raise self.error(key, f"{value} is out of range [{lo}, {hi}]")
        return value

    def bool(self, key: str, default: Any = MISSING) -> Any:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {_kind(value)} {_show(value)}")
        return value

    def str(self, key: str, choices: tuple[str, ...] | None = None, default: Any = MISSING) -> Any:
        value = self._get(key, default)
        if value is default and default is not MISSING:
            return value
        if not isinstance(value, str):
            raise self.error(key, f"expected a string, got {_kind(value)} {_show(value)}")
        if len(value) > 256:
            raise self.error(key, "string longer than 256 characters")
        if choices is not None and value not in choices:
            raise self.error(key, f"{_show(value)} is not one of {', '.join(choices)}")
        return value

    def int_list(self, key: str, lo: int = 0, hi: int = MAX_INT, default: Any = MISSING) -> Any:
        value = self._get(key, default)
        if value is default and default is not MISSING:
            return value
        if not isinstance(value, list) or len(value) > 100_000:
            raise self.error(key, f"expected a list of integers, got {_kind(value)}")
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, int) or not lo <= item <= hi:
                raise self.error(f"{key}[{i}]",
                                 f"expected an integer in [{lo}, {hi}], got {_show(item)}")
        return tuple(value)

    def float_list(self, key: str, lo: float = 0.0, hi: float = 1e30,
                   default: Any = MISSING) -> Any:
        value = self._get(key, default)
        if value is default and default is not MISSING:
            return value
        if not isinstance(value, list) or len(value) > 100_000:
            raise self.error(key, f"expected a list of numbers, got {_kind(value)}")
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not (
                    math.isfinite(item) and lo <= item <= hi):
                raise self.error(f"{key}[{i}]", f"expected a number in [{lo}, {hi}], got "
                                                f"{_show(item)}")
        return tuple(float(x) for x in value)

    def text(self, key: str) -> str:
        """Free text (notes, assumptions): a string or a list of strings, at most 64 KiB."""
        value = self._get(key, "")
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in items):
            raise self.error(key, "expected text or a list of strings")
        joined = "\n".join(items)
        if len(joined) > 65536:
            raise self.error(key, "text longer than 64 KiB")
        return joined

    def section(self, key: str, default: Any = MISSING) -> Any:
        value = self._get(key, default)
        if value is default and default is not MISSING:
            return value
        return Fields(self.source, value, self.field(key))

    def finish(self) -> None:
        unknown = sorted(str(k) for k in self.data if str(k) not in self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key" + _near(unknown[0], self.used))


def _near(key: str, known: set[str]) -> str:
    import difflib

    match = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxdict = 4
_REPR.maxlevel = 2


def _show(value: Any) -> str:
    """A value as it appears in an error: abridged, so that a megabyte list or string in
    the wrong field still gives a short line."""
    return _REPR.repr(value)


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            type(None): "nothing"}.get(
        type(value), type(value).__name__
    )
