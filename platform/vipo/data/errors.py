"""Bad-input handling shared by every loader: skip-and-count by default, raise in strict mode."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BadSample", "DataError", "SkipLog", "strict_error"]

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """Input data the run cannot use. The message names the file or folder and, where there is one, the fix."""


class BadSample(DataError):
    """One sample (clip, room, shard row) cannot be loaded; ``where`` names the offending file."""

    def __init__(self, where: str | Path, reason: str):
        self.where = str(where)
        self.reason = reason
        super().__init__(f"{self.where}: {reason}")

    def __reduce__(self):
        # Raised in Ray workers: it must unpickle on the driver (the default passes only the message).
        return type(self), (self.where, self.reason)


def strict_error(error: BadSample) -> BadSample:
    """``error`` as strict mode reports it: with the fix (wherever the sample was read, in process or on Ray)."""
    return BadSample(error.where, f"{error.reason} (replace or remove the file, or set strict: false to skip and "
                                  "count bad samples)")


@dataclass
class SkipLog:
    """What was skipped and why, in one process.

    ``counts`` maps a short reason (the text before the first ``:`` of the message) to how many samples it cost;
    ``entries`` keeps the first ``max_entries`` (where, reason) pairs so the files can be named in a summary.
    """

    max_entries: int = 1000
    counts: Counter = field(default_factory=Counter)
    entries: list[tuple[str, str]] = field(default_factory=list)

    def record(self, error: BadSample) -> None:
        self.counts[error.reason.split(":", 1)[0]] += 1
        if len(self.entries) < self.max_entries:
            self.entries.append((error.where, error.reason))
        logger.warning("skipped %s: %s", error.where, error.reason)

    def handle(self, error: BadSample, strict: bool) -> None:
        """Record ``error``, or re-raise it when the user asked for strict mode."""
        if strict:
            raise strict_error(error) from error
        self.record(error)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line per reason, e.g. ``3 × too few frames (first: /data/v1)``."""
        first: dict[str, str] = {}
        for where, reason in self.entries:
            first.setdefault(reason.split(":", 1)[0], where)
        return "\n".join(f"{n} × {reason} (first: {first.get(reason, '?')})" for reason, n in self.counts.items())
