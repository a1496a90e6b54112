"""Markdown tables generated from the registries into the docs pages, and the check that they did not drift.

A page holds a generated block between two markers::

    <!-- generated: methods -->
    | name | ... |
    <!-- end generated -->

`write()` replaces each block's body with what its generator returns now; `check()` names every
block whose body differs. A generator is a function of no arguments returning Markdown, registered
by name in `GENERATORS` (one line: `GENERATORS.register("objectives", objectives_table)`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.registry import Registry, UnknownName

__all__ = ["GENERATORS", "Drift", "check", "datasets_table", "methods_table", "metrics_table", "objectives_table", "pages", "render",
           "tasks_table", "write"]

#: block name → function returning that block's Markdown (a table, ending without a newline)
GENERATORS: Registry[Callable[[], str]] = Registry("generated docs block")

START = "<!-- generated: {name} -->"
END = "<!-- end generated -->"
_START = re.compile(r"<!-- generated: (?P<name>[^ ]+) -->\n")
_BLOCK = re.compile(r"(?P<start><!-- generated: (?P<name>[^ ]+) -->\n)(?P<body>.*?)(?P<end><!-- end generated -->)",
                    re.S)


@dataclass(frozen=True)
class Drift:
    """One generated block that is not what its generator returns now (or cannot be generated)."""

    page: str
    block: str
    reason: str = "differs from its registry"

    def __str__(self) -> str:
        return f"{self.page}: block `{self.block}` {self.reason}"


def _cell(value: object) -> str:
    """Text safe in a Markdown table cell: pipes escaped, newlines folded."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "yes" if flag else "–"


def method_options(cls) -> str:
    """A method's options with their defaults, as `ftbench methods` prints them."""
    return ", ".join(f"{k}={f.default!r}" if not f.is_required() else f"{k} (required)"
                     for k, f in cls.Options.model_fields.items())


def _stack_role(name: str, cls) -> str:
    role = cls.stack_role  # a property on `peft`: its role depends on the config class it is given
    if isinstance(role, property):
        return "per config class"
    if name == "stack":
        return "(the stack)"
    return role or "not in stacks"


def methods_table() -> str:
    """Every registered method: what it trains, its options and defaults, and how it behaves."""
    from harness.methods import METHODS

    rows = []
    for name in METHODS.names():
        cls = METHODS.get(name)
        options = method_options(cls)
        rows.append([f"`{name}`", cls.description, f"`{options}`" if options else "–",
                     _yes(cls.requires_4bit), _yes(cls.merges), _yes(cls.supports_packing),
                     _stack_role(name, cls)])
    return _table(["name", "what it trains", "options (defaults)", "4-bit base", "merges", "packing",
                   "stack role"], rows)


def datasets_table() -> str:
    """Every registered data set: what it holds, its version, and its domain and in-domain task."""
    from harness.data import DATASETS

    rows = []
    for name in DATASETS.names():
        cls = DATASETS.get(name)
        rows.append([f"`{name}`", cls.description, cls.version, _yes(cls.pairs), cls.domain or "–",
                     f"`{cls.eval_task}`" if cls.eval_task else "–"])
    return _table(["name", "what", "version", "preference pairs", "domain", "in-domain task"], rows)


def tasks_table() -> str:
    """Every built-in lm-eval task: what it scores, its version and its primary metric."""
    from harness.tasks import LOCAL_TASKS

    rows = []
    for name in LOCAL_TASKS.names():
        cls = LOCAL_TASKS.get(name)
        rows.append([f"`{name}`", cls.description, cls.version, f"`{cls.primary_metric}`",
                     "higher" if cls.higher_is_better else "lower"])
    return _table(["task", "what", "version", "primary metric", "better"], rows)


def objectives_table() -> str:
    """Every registered objective: what it trains toward, its options and defaults, its report sections."""
    from harness.objectives import OBJECTIVES

    rows = []
    for name in OBJECTIVES.names():
        cls = OBJECTIVES.get(name)
        options = ", ".join(f"{k}={f.default!r}" for k, f in cls.Options.model_fields.items() if k != "name")
        rows.append([f"`{name}`", cls.description, f"`{options}`" if options else "–",
                     ", ".join(cls.report_sections) or "–", ", ".join(f"`{m}`" for m in cls.metrics) or "–"])
    return _table(["name", "trains toward", "options (defaults)", "report sections", "always records"], rows)


def metrics_table() -> str:
    """The metric vocabulary: every declared key with its unit, direction, seed aggregation and device semantics."""
    import harness.objectives  # noqa: F401  (objective and task modules declare their own metrics on import)
    import harness.tasks  # noqa: F401
    from harness.metrics import METRICS

    return METRICS.markdown().rstrip("\n")


GENERATORS.register("methods", methods_table)
GENERATORS.register("metrics", metrics_table)
GENERATORS.register("objectives", objectives_table)
GENERATORS.register("datasets", datasets_table)
GENERATORS.register("tasks", tasks_table)


def render(text: str, page: str = "<text>") -> tuple[str, list[Drift]]:
    """Regenerate every block of a page's text.

    Args:
        text: the page's Markdown.
        page: the page's name, for messages.

    Returns:
        The text with every block's body regenerated, and the blocks that differed or could not be
        generated (an unknown block name, a start marker without its end).
    """
    drifts: list[Drift] = []

    def body(match: re.Match) -> str:
        name = match["name"]
        try:
            fresh = GENERATORS.get(name)().rstrip("\n") + "\n"
        except UnknownName as exc:
            drifts.append(Drift(page, name, f"cannot be generated: {exc}"))
            return match[0]
        if match["body"] != fresh:
            drifts.append(Drift(page, name))
        return match["start"] + fresh + match["end"]

    out = _BLOCK.sub(body, text)
    if len(_START.findall(text)) != len(_BLOCK.findall(text)):
        drifts.append(Drift(page, "?", f"has a `{START.format(name='NAME')}` marker without its `{END}`"))
    return out, drifts


def pages(root: Path | str = ".") -> list[Path]:
    """The pages that may hold generated blocks: README.md and docs/*.md under `root`."""
    root = Path(root)
    found = [root / "README.md"] if (root / "README.md").is_file() else []
    return found + sorted((root / "docs").glob("*.md"))


def check(root: Path | str = ".") -> list[Drift]:
    """Every generated block under `root` that differs from its registry (nothing is written)."""
    drifts: list[Drift] = []
    for path in pages(root):
        drifts += render(path.read_text(encoding="utf-8"), str(path.relative_to(root)))[1]
    return drifts


def write(root: Path | str = ".") -> tuple[list[Path], list[Drift]]:
    """Rewrite every generated block under `root`.

    Returns:
        The pages rewritten, and the blocks that could not be generated (left as they were).
    """
    changed: list[Path] = []
    broken: list[Drift] = []
    for path in pages(root):
        text = path.read_text(encoding="utf-8")
        fresh, drifts = render(text, str(path.relative_to(root)))
        broken += [d for d in drifts if d.reason != Drift.reason]
        if fresh != text:
            path.write_text(fresh, encoding="utf-8")
            changed.append(path)
    return changed, broken
