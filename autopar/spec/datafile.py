"""Read a YAML or JSON input file as plain, bounded data, or fail with one line.

Every file autopar reads (model, HF config, hardware, calibration, expert load, plan) comes
through here, so every one gets the same limits: a hostile or broken file is an InputError
naming the file and where it breaks, never a traceback (RecursionError, Python's integer
digit limit, a UnicodeDecodeError) and never a silently different reading (a duplicate key
that overrides the first, NaN). The limits below are the only ones; the parsers do not set
their own.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.events import AliasEvent
from yaml.nodes import ScalarNode

from ..errors import InputError

MAX_FILE_BYTES = 10 * 1024 * 1024  # any input file but an expert-load profile
MAX_PROFILE_BYTES = 50 * 1024 * 1024  # measured expert loads with co-activation matrices
MAX_DEPTH = 64  # nesting of lists and mappings; real inputs and plans are under 10 deep
# YAML values, counting what anchors and aliases expand to (a "billion laughs" file is a few
# hundred bytes); pure-Python YAML parses ~50k values/s, so this also bounds the time spent.
MAX_YAML_VALUES = 200_000
MAX_INT_DIGITS = 100  # far above any count or size autopar reads, far below Python's 4300
MAX_KEY_CHARS = 256
MERGE_TAG = "tag:yaml.org,2002:merge"


class _Unreadable:
    """Stands in for a value the parser cannot turn into plain data (an integer too long),
    so that the walk after parsing can name the field that holds it."""

    def __init__(self, problem: str, key: str | None = None) -> None:
        self.problem = problem
        self.key = key  # the key within this mapping that the problem is about


# --------------------------------------------------------------------------- bytes
def read_bytes(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The file's bytes: a regular file or a pipe (never a device or a directory), capped
    while reading so that neither a huge file nor an endless stream is taken in whole."""
    src = str(path)
    try:
        st = os.stat(path)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise InputError(src, "", f"cannot read file: {kind}")
        with open(path, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except InputError:
        raise
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise InputError(src, "", f"cannot read file: {getattr(exc, 'strerror', None) or exc}"
                         ) from None
    if len(raw) > max_bytes:
        raise InputError(src, "", f"file too large: over the {max_bytes} byte limit")
    return raw


def read_text(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> str:
    """The file as UTF-8 text (a leading byte-order mark dropped)."""
    raw = read_bytes(path, max_bytes)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = raw[exc.start]
        raise InputError(str(path), f"line {line}, column {col}",
                         f"cannot read file: not UTF-8 text (byte 0x{byte:02x})") from None


def read_data(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> Any:
    """Parse a file as plain data: JSON for a `.json` name, YAML otherwise (JSON is YAML)."""
    text = read_text(path, max_bytes)
    src = str(path)
    data = parse_json(text, src) if Path(path).suffix.lower() == ".json" else parse_yaml(text, src)
    if data is None:
        raise InputError(src, "", "file is empty (no YAML or JSON document)")
    return data


# --------------------------------------------------------------------------- JSON
def parse_json(text: str, source: str) -> Any:
    """JSON with duplicate keys refused, integers bounded and nesting bounded."""
    try:
        data = json.loads(text, object_pairs_hook=_json_object, parse_int=_json_int)
    except json.JSONDecodeError as exc:
        raise InputError(source, "", f"invalid JSON at line {exc.lineno}, column {exc.colno}: "
                                     f"{exc.msg}") from None
    except RecursionError:
        raise InputError(source, "", f"invalid JSON at {_too_deep(text)}: nested deeper than "
                                     f"{MAX_DEPTH} levels") from None
    check_plain(data, source)
    return data


def _too_deep(text: str) -> str:
    """Where JSON nesting first passes MAX_DEPTH (strings skipped), for the error message."""
    depth = 0
    for tok in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', text):
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(tok.group(), 0)
        if depth > MAX_DEPTH:
            at = tok.start()
            line, col = text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)
            return f"line {line}, column {col}"
    return "end of file"


class _DuplicateKey(ValueError):
    def __init__(self, key: str, line: int, first: int) -> None:
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


def _json_object(pairs: list[tuple[str, Any]]) -> Any:
    out = dict(pairs)
    if len(out) != len(pairs):  # a marker, so that the walk names the object's path
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        return _Unreadable("duplicate key (each key may appear once in an object)", dup)
    return out


def _json_int(text: str) -> Any:
    return int(text) if len(text) <= MAX_INT_DIGITS + 1 else _too_long(text)


def _too_long(text: str) -> _Unreadable:
    return _Unreadable(f"an integer of {sum(c.isdigit() for c in text)} digits "
                       f"(at most {MAX_INT_DIGITS})")


# --------------------------------------------------------------------------- YAML
class _Loader(yaml.SafeLoader):
    """The safe loader (data, never code) with nesting and expansion bounded and duplicate
    keys refused: PyYAML's own loader keeps the last of two equal keys without a word."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._values = 0
        self._sizes: dict[str, int] = {}  # anchor -> values its node expands to

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            self._count(self._sizes.get(event.anchor, 1), event)
            return super().compose_node(parent, index)
        if self._depth > MAX_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                event.start_mark)
        before = self._values
        self._count(1, event)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if event.anchor is not None:
            self._sizes[event.anchor] = self._values - before
        return node

    def _count(self, n: int, event: Any) -> None:
        self._values += n
        if self._values > MAX_YAML_VALUES:
            raise ComposerError(None, None, f"more than {MAX_YAML_VALUES} values (aliases "
                                            "counted as what they expand to)", event.start_mark)

    def compose_mapping_node(self, anchor: Any) -> Any:
        """Refuse a key given twice, on the mapping as written (before `<<` merges, whose
        keys may be overridden: that is what a merge means)."""
        node = super().compose_mapping_node(anchor)
        first: dict[Any, int] = {}
        for i, (key_node, _) in enumerate(node.value):
            if not isinstance(key_node, ScalarNode) or key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node)  # a scalar: "yes" and "true" are one key
            try:
                j = first.setdefault(key, i)
            except TypeError:
                continue
            if j != i:
                raise _DuplicateKey(_show_key(key), key_node.start_mark.line + 1,
                                    node.value[j][0].start_mark.line + 1)
        return node

    def construct_yaml_int(self, node: Any) -> Any:
        text = self.construct_scalar(node)
        if len(text) > MAX_INT_DIGITS + 1:
            return _too_long(text)
        return super().construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def parse_yaml(text: str, source: str, int_keys: bool = False) -> Any:
    """YAML through the safe loader with the limits above (`int_keys`: integer mapping keys
    allowed, as in TensorRT-LLM's per-layer tables)."""
    loader = None
    try:
        loader = _Loader(text)  # the reader refuses control characters here
        data = loader.get_single_data()
    except _DuplicateKey as exc:
        raise InputError(source, exc.key, f"duplicate key at line {exc.line} (first at line "
                                          f"{exc.first}); each key may appear once") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise InputError(source, "", f"invalid YAML at line {line}: character "
                                     f"U+{exc.character:04X} is not allowed") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise InputError(source, "", f"invalid YAML{where}: {problem}") from None
    except RecursionError:  # a merge-key chain, say: the composer's depth bound missed it
        raise InputError(source, "", f"nested deeper than {MAX_DEPTH} levels") from None
    finally:
        if loader is not None:
            loader.dispose()
    check_plain(data, source, int_keys)
    return data


# --------------------------------------------------------------------------- the walk
_PLAIN_KINDS = {"date": "a date", "datetime": "a timestamp", "bytes": "binary data",
                "set": "a set"}


def check_plain(data: Any, source: str, int_keys: bool = False) -> None:
    """Refuse what is not plain, bounded data, naming the field: nesting over MAX_DEPTH
    (which also catches a YAML alias that contains itself), a non-string or overlong key,
    an integer over MAX_INT_DIGITS digits, NaN or infinity, and YAML-only types (dates,
    binary, sets) that no autopar field takes."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        here = path or "(top level)"
        if depth > MAX_DEPTH:  # (a YAML alias inside itself nests forever)
            raise InputError(source, here if len(here) <= 60 else here[:57] + "...",
                             f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for k in value:
                if int_keys and type(k) is int and k.bit_length() < 64:
                    continue
                if not isinstance(k, str) or len(k) > MAX_KEY_CHARS or not k.isprintable():
                    shown = _show_key(k)
                    raise InputError(source, f"{path}.{shown}" if path else shown,
                                     f"a key must be a string of at most {MAX_KEY_CHARS} "
                                     f"printable characters, got {type(k).__name__} {shown}")
            # children pushed last-first, so that the first problem in the file is reported
            stack.extend((v, f"{path}.{k}" if path else k, depth + 1)
                         for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((value[i], f"{path}[{i}]", depth + 1)
                         for i in range(len(value) - 1, -1, -1))
        elif isinstance(value, _Unreadable):
            key = value.key if value.key is None else _show_key(value.key)
            field = here if key is None else f"{path}.{key}" if path else key
            raise InputError(source, field, value.problem)
        elif isinstance(value, bool) or value is None or isinstance(value, str):
            continue
        elif isinstance(value, int):
            if value.bit_length() > MAX_INT_DIGITS * 3.33:
                raise InputError(source, here, f"an integer over {MAX_INT_DIGITS} digits")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise InputError(source, here, f"{value} is not a finite number")
        else:
            kind = _PLAIN_KINDS.get(type(value).__name__, type(value).__name__)
            raise InputError(source, here, f"{kind} is not plain data (expected a string, "
                                           "number, boolean, list or mapping)")


def _show_key(key: Any) -> str:
    text = repr(key) if not isinstance(key, str) or not key.isprintable() else key
    return text if len(text) <= 60 else text[:57] + "..."
