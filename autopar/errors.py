"""Error types that the CLI turns into one-line messages and exit codes."""

from __future__ import annotations


class AutoparError(Exception):
    """Base class: every subclass renders as a single line, never a traceback."""

    exit_code = 2


class InputError(AutoparError):
    """A bad input file or value: names the file, the field and what is wrong."""

    exit_code = 2

    def __init__(self, source: str, field: str, problem: str) -> None:
        self.source = source
        self.field = field
        self.problem = problem
        super().__init__(f"{source}: {field}: {problem}" if field else f"{source}: {problem}")


class InfeasibleError(AutoparError):
    """The problem has no feasible layout: says why and what would make it fit."""

    exit_code = 3

    def __init__(self, reason: str, suggestion: str) -> None:
        self.reason = reason
        self.suggestion = suggestion
        super().__init__(f"infeasible: {reason}; {suggestion}")
