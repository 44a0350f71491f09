"""Error types and the message helpers every error in lobsearch uses.

Messages name the file or field, the rule and the value received, and list the valid choices
with the closest match where one exists.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


class LobsearchError(Exception):
    """Base of every error lobsearch raises on purpose."""


class DataError(LobsearchError, ValueError):
    """An export or day file breaks the contract; the message names the file, rule and value."""


class ConfigError(LobsearchError, ValueError):
    """A configuration breaks its schema; ``problems`` lists every problem found in one pass."""

    def __init__(self, source: str, problems: Sequence[str]):
        self.source = source
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")

    def __reduce__(self) -> tuple:
        # an error raised in a Ray worker is pickled to reach the driver: rebuild it from its parts
        return (type(self), (self.source, self.problems))


def closest(value: str, choices: Iterable[str]) -> str | None:
    """The choice most like ``value``, or None when nothing is close."""
    found = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return found[0] if found else None


def unknown_choice(kind: str, value: object, choices: Iterable[str]) -> str:
    """``unknown model 'deeplab'; did you mean 'deeplob'? choices: deeplob, gru, lstm``."""
    choices = sorted(str(c) for c in choices)
    hint = closest(str(value), choices)
    did_you_mean = f"; did you mean {hint!r}?" if hint else ";"
    return f"unknown {kind} {value!r}{did_you_mean} choices: {', '.join(choices)}"
