"""Report sections; every module in this package registers one section (`register(name, order)`)."""

from __future__ import annotations

import importlib
import pkgutil

import pandas as pd

from harness.report.context import ReportContext
from harness.report.document import Section
from harness.report.sections.base import REPORT_SECTIONS, ReportSection, ordered, register

__all__ = ["DOMAIN_SECTIONS", "REPORT_SECTIONS", "ReportSection", "build_sections", "domain_sections", "ordered",
           "register"]

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

#: the sections on runs across data sources
DOMAIN_SECTIONS = ("transfer", "adaptation", "multitask", "continual", "routing")


def build_sections(ctx: ReportContext, names: list[str] | tuple[str, ...] | None = None) -> list[Section]:
    """Every registered section's output (only those of `names` when given), in report order."""
    return [section for entry in ordered(names) for section in entry.build(ctx)]


def domain_sections(df: pd.DataFrame) -> list[Section]:
    """The sections on runs across data sources that have runs in `df` (from `load_runs`), in report order."""
    return build_sections(ReportContext("", df), DOMAIN_SECTIONS)
