"""Error types that the CLI turns into one clear message and exit code 2."""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable


class ConfigError(Exception):
    """Bad user input, found before any run starts.

    Each problem is a (file, field, message) triple; the CLI prints them all at once.
    """

    def __init__(self, problems: list[tuple[str, str, str]]):
        self.problems = problems
        super().__init__(self.render())

    @classmethod
    def one(cls, file: str, field: str, message: str) -> "ConfigError":
        return cls([(file, field, message)])

    def render(self) -> str:
        lines = []
        for file, field, message in self.problems:
            where = f"{file}: " if file else ""
            where += f"`{field}`: " if field else ""
            lines.append(f"{where}{message}")
        return "\n".join(lines)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean `x`?' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" Did you mean `{close[0]}`?" if close else ""


def allowed(choices: Iterable[str]) -> str:
    """Render an 'Allowed: a, b, c.' suffix."""
    return "Allowed: " + ", ".join(sorted(str(c) for c in choices)) + "."


_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 120
_SHOWN.maxlist = _SHOWN.maxdict = _SHOWN.maxtuple = _SHOWN.maxset = 8
_SHOWN.maxlevel = 4


def shown(value: object) -> str:
    """`repr(value)` cut to a readable length (a 100,000-value list read from YAML stays one short line)."""
    return _SHOWN.repr(value)
