"""Where results are written: default file names that are safe whatever a model calls itself,
and a check of an output path made before any work is done, so that a run never ends by
replacing a device node, a FIFO or a directory, or in a traceback over a read-only folder."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from ..errors import InputError

RESULTS_DIR = Path("results")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def safe_name(text: str, fallback: str = "plan", limit: int = 96) -> str:
    """One file-name component: path separators, NUL, spaces and other odd characters become
    '-', leading dots and dashes go (no '..', no hidden file, no option look-alike)."""
    name = _UNSAFE.sub("-", text).strip(".-")[:limit].strip(".-")
    return name or fallback


def default_plan_path(model: str, hardware: str, workload: str) -> Path:
    """`results/<model>-<hw>-<workload>.json`: the workload label (training, prefill, decode,
    serving) keeps a model's training and serving plans apart."""
    stem = "-".join(safe_name(x) for x in (model, hardware, workload))
    return RESULTS_DIR / f"{stem}.json"


def check_target(path: str | Path, option: str = "--out") -> Path:
    """Refuse, before the work starts, an output path that is not a regular file or a new
    file in a directory this process can write (missing folders are fine where their nearest
    existing ancestor is writable; they are created when the file is written)."""
    p = Path(path)
    if "\0" in str(path):
        raise InputError(option, "", f"{str(path)!r}: a path cannot contain a NUL byte")
    if p.exists() or p.is_symlink():
        if not p.is_file():
            kind = "a directory" if p.is_dir() else "not a regular file"
            raise InputError(option, "", f"{p}: {kind}; give the path of a plan file")
        if not os.access(p, os.W_OK):
            raise InputError(option, "", f"{p}: the file is not writable")
    folder = p.parent
    while not folder.exists():
        if folder == folder.parent:
            break
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(option, "", f"{p}: {folder} is not a directory")
    try:  # the sure test is to try (permissions, read-only mounts, ACLs, root)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise InputError(option, "", f"{p}: cannot write in {folder}: "
                                     f"{exc.strerror or exc}") from None
    return p


def file_mode(path: Path) -> int:
    """The mode a written file gets: an existing file's own, else 0666 less the umask (what
    open() would give), not the 0600 of a temporary file."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def workload_label(kind: str, phase: str, serving: bool) -> str:
    """training, prefill, decode or serving (whole requests, targets, frontier or pools)."""
    if kind == "training":
        return "training"
    return "serving" if serving else phase


def require_extra(module: str, extra: str, option: str) -> None:
    """Say before any work that an option needs an optional extra that is not installed."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise InputError(option, "", f"needs {module}, which is not installed: "
                                     f"pip install 'autopar[{extra}]'")
