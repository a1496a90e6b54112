"""The report-section interface and its registry: each section is one module that registers itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.registry import Registry
from harness.report.context import ReportContext
from harness.report.document import Section

__all__ = ["REPORT_SECTIONS", "ReportSection", "SectionBuilder", "ordered", "register"]

#: reads the context, returns the sections it has something to say in (none when its runs are absent)
SectionBuilder = Callable[[ReportContext], list[Section]]


@dataclass(frozen=True)
class ReportSection:
    """A registered section: `build` runs at position `order` (ascending) in the report."""

    name: str
    order: int
    build: SectionBuilder


REPORT_SECTIONS: Registry[ReportSection] = Registry("report section")


def register(name: str, order: int) -> Callable[[SectionBuilder], SectionBuilder]:
    """Decorator: register `build(ctx) -> list[Section]` as section `name` at position `order`.

    Raises:
        ValueError: `name` or `order` is already taken (two sections at one position have no defined order).
    """

    def wrap(build: SectionBuilder) -> SectionBuilder:
        taken = {REPORT_SECTIONS.get(n).order: n for n in REPORT_SECTIONS if n != name}
        if order in taken:
            raise ValueError(f"report section `{name}`: order must be unique, but got order={order}, "
                             f"already taken by `{taken[order]}`")
        REPORT_SECTIONS.register(name, ReportSection(name, order, build))
        return build

    return wrap


def ordered(names: list[str] | tuple[str, ...] | None = None) -> list[ReportSection]:
    """The registered sections in report order; only `names` when given (unknown names raise UnknownName)."""
    chosen = [REPORT_SECTIONS.get(n) for n in (REPORT_SECTIONS if names is None else names)]
    return sorted(chosen, key=lambda s: s.order)
