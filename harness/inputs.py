"""Untrusted input made safe: YAML read within bounds, and names that become path components.

An experiment or sweep file is read with caps on its size, on the values its YAML aliases expand to and
on its nesting depth, so a hostile or broken file (a "billion laughs" of nested aliases, a binary file,
ten thousand open brackets) is refused with a message in milliseconds instead of growing for minutes.
Names that ftbench joins to a folder (experiments, sweeps, runs) must be one safe path component, and
every path built from one is checked to stay inside its root.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import ConfigError

#: the largest experiment or sweep file read (bytes)
MAX_BYTES = 1 << 20
#: the most values (YAML nodes: scalars, lists, mappings) a file may stand for, each alias (`*name`)
#: counted as the nodes of its anchor: a real experiment holds a few hundred
MAX_NODES = 100_000
#: the deepest nesting of lists and mappings, through aliases too
MAX_DEPTH = 64
#: the most runs `ftbench run` expands a grid to (and `ftbench search` asks trials for) without `--max-runs N`
MAX_RUNS = 5000

#: an experiment or sweep name: one path component of safe characters
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MAX_NAME = 100
NAME_RULE = (f"letters, digits, `.`, `_` and `-`, starting with a letter or digit, at most {MAX_NAME} "
             "characters (it names a folder under the results root)")


class TooLarge(ConfigError):
    """Input refused for its size, the values its aliases expand to, or its depth (not for its syntax)."""


class InputLimit(yaml.YAMLError):
    """The YAML is larger, more expanded or deeper than the caps allow."""

    def __init__(self, message: str, mark=None):
        super().__init__(message)
        self.problem, self.problem_mark = message, mark


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses nesting past MAX_DEPTH and more than MAX_NODES composed nodes
    (the events are parsed lazily, so it stops reading there)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent, index):
        if self._depth >= MAX_DEPTH:
            raise InputLimit(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise InputLimit(f"holds more than {MAX_NODES} values", self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded(node: yaml.Node, level: int, memo: dict[int, tuple[int, int]], active: set[int]) -> tuple[int, int]:
    """(nodes, height) of `node` with every alias expanded, computed once per distinct node: nothing is
    expanded in memory. Raises InputLimit past MAX_DEPTH or on an alias inside its own anchor."""
    key = id(node)
    if key in active:
        raise InputLimit("an alias (`*name`) refers to a list or mapping that contains it (a recursive "
                         "structure)", node.start_mark)
    if key not in memo:
        if level > MAX_DEPTH:
            raise InputLimit(f"nested deeper than {MAX_DEPTH} levels once its aliases (`*name`) are expanded",
                             node.start_mark)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        active.add(key)
        count, height = 1, 0
        for child in children:
            n, h = _expanded(child, level + 1, memo, active)
            count, height = count + n, max(height, h)
        active.discard(key)
        memo[key] = (count, height + 1)
    count, height = memo[key]
    if level + height - 1 > MAX_DEPTH:
        raise InputLimit(f"nested deeper than {MAX_DEPTH} levels once its aliases (`*name`) are expanded",
                         node.start_mark)
    return count, height


def _largest(node: yaml.Node, memo: dict[int, tuple[int, int]]) -> tuple[str, tuple[Any, yaml.Node]]:
    """The dotted key, through mappings, of the deepest value that alone stands for more than MAX_NODES,
    with (the mark where its key is written, the value)."""
    path, mark = "", (node.start_mark, node)
    while isinstance(node, yaml.MappingNode):
        pairs = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)]
        key, value = max(pairs, key=lambda kv: memo[id(kv[1])][0], default=(None, None))
        if key is None or memo[id(value)][0] <= MAX_NODES:
            break
        path, mark, node = f"{path}.{key.value}" if path else str(key.value), (key.start_mark, value), value
    return path, mark


def _lines(node: yaml.Node, prefix: str, out: dict[str, int], seen: set[int]) -> None:
    """Record the line (1-based) of every mapping key and list item as a dotted field
    (`base.method.methods[0].r`), walking each node once."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                name = f"{prefix}.{key.value}" if prefix else str(key.value)
                out.setdefault(name, key.start_mark.line + 1)
                _lines(value, name, out, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out.setdefault(f"{prefix}[{i}]", item.start_mark.line + 1)
            _lines(item, f"{prefix}[{i}]", out, seen)


@dataclass(frozen=True)
class YamlDoc:
    """A parsed YAML document and the line of each of its fields (dotted, as problems name them)."""

    data: Any
    lines: dict[str, int] = field(default_factory=dict)


def parse_yaml(text: str, *, source: str, field: str = "") -> YamlDoc:
    """Parse YAML `text` within MAX_NODES and MAX_DEPTH (aliases expanded).

    Raises:
        TooLarge: too many values or too deep (a ConfigError).
        ConfigError: malformed YAML, or a value YAML cannot build (a date such as 2024-13-01); the
            message names `source`, the line and column.
    """
    loader = None
    try:
        loader = _BoundedLoader(text)  # its reader refuses control characters (NUL, ...) right here
        node = loader.get_single_node()
        if node is None:
            return YamlDoc(None)
        memo: dict[int, tuple[int, int]] = {}
        count, _ = _expanded(node, 1, memo, set())
        if count > MAX_NODES:
            where, mark = _largest(node, memo)
            raise InputLimit(f"{f'`{where}` ' if where else 'the file '}stands for {memo[id(mark[1])][0]:,} values "
                             f"once its aliases (`*name`) are expanded; at most {MAX_NODES:,} are read (write the "
                             "values out, or use fewer aliases)", mark[0])
        lines: dict[str, int] = {}
        _lines(node, "", lines, set())
        return YamlDoc(loader.construct_document(node), lines)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if isinstance(exc, InputLimit):
            raise TooLarge.one(source, field, f"{where}{problem}") from None
        raise ConfigError.one(source, field, f"malformed YAML: {where}{problem}") from None
    except (ValueError, OverflowError, TypeError, RecursionError) as exc:  # a value YAML parsed but cannot build
        raise ConfigError.one(source, field, f"a value cannot be read: {type(exc).__name__}: {exc}"[:300]) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | Path) -> YamlDoc:
    """Read a YAML file of at most MAX_BYTES of UTF-8 text (`parse_yaml`).

    Raises:
        ConfigError: a missing file, one too large, a binary (not UTF-8) file, or anything `parse_yaml` raises.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError.one(source, "", "file not found")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError.one(source, "", f"cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        size = path.stat().st_size
        raise TooLarge.one(source, "", f"is {size:,} bytes; an experiment or sweep file may hold at most "
                              f"{MAX_BYTES:,} bytes (1 MiB)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError.one(source, "", f"is not UTF-8 text (a binary file?): byte 0x{raw[exc.start]:02x} at "
                              f"offset {exc.start}") from None
    return parse_yaml(text, source=source)


# --- names ---------------------------------------------------------------------------------------------

def name_problem(name: Any) -> str | None:
    """Why `name` cannot name a folder (None: it can)."""
    if not isinstance(name, str) or not NAME.match(name) or len(name) > MAX_NAME:
        return f"must be {NAME_RULE}, but got {str(name)[:80]!r}"
    return None


def check_name(name: Any, *, file: str = "", field: str = "name") -> str:
    """`name` when it is one safe path component.

    Raises:
        ConfigError: any other name (a path, `..`, a space, an empty name, ...).
    """
    problem = name_problem(name)
    if problem:
        raise ConfigError.one(file, field, problem)
    return name


def inside(root: str | Path, *parts: str, file: str = "", field: str = "") -> Path:
    """`root/part/...`, refused unless each part is one path component and the joined path (`..` resolved)
    stays inside `root`. Symbolic links are the owner's to place and are not followed.

    Raises:
        ConfigError: a part that is empty, absolute, `.`/`..`, holds a separator or a NUL, or leaves `root`.
    """
    root = Path(root)
    for part in parts:
        text = str(part)
        if text in ("", ".", "..") or "/" in text or "\\" in text or "\0" in text:
            raise ConfigError.one(file, field, f"`{text[:80]}` must be one folder name (no `/`, `..` or NUL)")
    path = root.joinpath(*parts)
    base, full = os.path.abspath(root), os.path.abspath(path)
    if os.path.commonpath([base, full]) != base or full == base:
        raise ConfigError.one(file, field, f"{path} is not inside {root}")
    return path
