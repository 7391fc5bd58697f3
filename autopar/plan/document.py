"""The plan as a document: the JSON a `Plan` holds, its serialisation (no NaN or infinity),
writing it atomically over a regular file or a new path, and reading it back (either `gpus`
form). Apart from the builders so that the CLI and the API can write and read plans without
the sections' code, and the builders need not know about files."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..schema.gpus import gpu_records


@dataclass
class Plan:
    """A deployment plan: the JSON document plus the objects it was built from."""

    data: dict[str, Any]

    def to_json(self, indent: int | None = 1) -> str:
        """The plan as JSON; a NaN or infinity anywhere is a bug, raised here (ValueError)
        rather than written as the invalid JSON tokens `NaN` / `Infinity`."""
        return json.dumps(self.data, indent=indent, sort_keys=False, allow_nan=False)

    def write(self, path: str | Path) -> Path:
        return write_atomic(path, self.to_json())

    @property
    def strategy(self) -> dict[str, Any]:
        return self.data["strategy"]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.data["metrics"]

    @property
    def solver(self) -> dict[str, Any]:
        return self.data["solver"]

    def gpu_records(self) -> list[dict[str, Any]]:
        """One record per GPU: the `gpus` patterns expanded (`autopar.schema.gpus`)."""
        return gpu_records(self.data)


def write_atomic(path: str | Path, text: str) -> Path:
    """Write via a temp file and rename, so a reader never sees half a plan; only over a
    regular file or a new path (`files.check_target`), with the mode open() would give."""
    from .files import check_target, file_mode

    p = check_target(path)
    mode = file_mode(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    # The name is drawn before the file exists and the file is made inside the try, so an
    # interrupt at any point (KeyboardInterrupt, the CLI's SIGTERM) finds it and removes it;
    # 64 random bits make the name ours whenever it exists.
    tmp = str(p.parent / f".{p.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.write("\n")
        os.replace(tmp, p)
    except FileExistsError:
        raise  # another writer's temp file: not ours to remove
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return p


def read_plan(path: str | Path) -> dict[str, Any]:
    from ..errors import InputError
    from ..spec import read_data

    data = read_data(path)
    if not isinstance(data, dict):
        raise InputError(str(path), "", "a plan must be a JSON object")
    if "gpus" in data:  # either form, readable as one record per GPU
        gpu_records(data, str(path))
    return data


__all__ = ["Plan", "write_atomic", "read_plan"]
