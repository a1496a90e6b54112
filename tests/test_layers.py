"""The import graph of `harness`: no module reaches itself through its imports (deferred ones included);
the layers themselves are `lint-imports`' contract (pyproject.toml), which `make test` runs first."""

from __future__ import annotations

import grimp


def test_no_import_cycles_in_harness():
    graph = grimp.build_graph("harness")
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph.modules):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" → ".join(c) for c in cycles)
