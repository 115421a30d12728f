"""Errors a user can cause. The CLI prints them as one line and exits with their ``exit_code``."""

from __future__ import annotations

__all__ = [
    "CellSkipped",
    "ValbenchError",
    "UsageError",
    "UnknownNameError",
    "ConfigError",
    "DatasetError",
    "RunDirectoryError",
    "BudgetExceeded",
    "ConformanceError",
    "CellTimeout",
    "printable",
]


def printable(text: str) -> str:
    """``text`` with control characters (newlines, terminal escapes) escaped: one safe line.

    Messages quote paths, column names and labels from users' files; none reaches a terminal
    raw.
    """
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


class ValbenchError(Exception):
    """Base of every error valbench raises on purpose; its message says what to do."""

    exit_code = 2


class UsageError(ValbenchError):
    """A value given on the command line, in a config file or to an API is invalid."""


class UnknownNameError(UsageError):
    """A method or dataset name is not registered."""

    def __init__(self, kind: str, name: str, valid: list[str]) -> None:
        import difflib

        self.kind, self.name, self.valid = kind, name, sorted(valid)
        # A typo's nearest names first ("knn-shaply", "Random"), then the whole list.
        lowered = {v.lower(): v for v in self.valid}
        if name.lower() in lowered:  # only the letter case differs: that name alone
            close = [name.lower()]
        else:
            close = difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.75)
        hint = f"did you mean {' or '.join(repr(lowered[c]) for c in close)}? " if close else ""
        super().__init__(
            f"unknown {kind} {name!r}; {hint}valid {kind}s: "
            f"{', '.join(self.valid) or '(none registered)'}"
        )


class ConfigError(UsageError):
    """A config file cannot be read or has unknown or invalid keys."""


class DatasetError(ValbenchError):
    """A dataset cannot be loaded (missing files, wrong format)."""


class RunDirectoryError(ValbenchError):
    """The output directory cannot be used (not writable, holds another run)."""


class BudgetExceeded(ValbenchError):
    """A method tried to spend more than its :class:`~valbench.types.Budget` allows."""


class ConformanceError(AssertionError):
    """A method breaks the contract checked by :func:`valbench.testing.check_method`."""


class CellSkipped(ValbenchError):
    """A method declines a cell it cannot run as its label promises (an exact enumeration the
    budget cannot cover, say), before spending anything on it: the harness records the cell as
    ``skipped`` with this message instead of a partial result."""


class CellTimeout(ValbenchError):
    """A cell ran past its time limit."""
