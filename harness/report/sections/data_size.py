"""Data-size curves: eval loss against the number of training examples, with a power law fitted per series."""

from __future__ import annotations

from harness.report import figures
from harness.report.context import ReportContext
from harness.report.document import Section, frame_table
from harness.report.sections.base import register


@register("data_size", order=100)
def data_size_section(ctx: ReportContext) -> list[Section]:
    curves = ctx.data_size
    if curves is None:
        return []
    section = Section("Data-size curves", paragraphs=[
        f"Eval loss against the number of training examples, with L(n) = a·n^(-b) + c fitted per series "
        f"(least squares over every seed). Target loss: {curves.target:.3f}; 'n to reach target' reads it off the fit "
        f"(inf: the fitted floor c is above the target)."])
    loose = [name for name, fit in curves.fits.items() if fit is not None and not fit.identified]
    if loose:
        section.paragraphs.append(
            f"Caveat: {', '.join(loose)} {'has' if len(loose) == 1 else 'have'} fewer than 4 distinct n, so the "
            "three parameters pass through the points rather than being estimated from them: read the curve "
            "between the measured sizes, not a, b, c or an 'n to reach target' outside them. Add a fourth size.")
    section.figures.append(("data_size.png", figures.data_size(curves.points, curves.fits, curves.target),
                            "quality against n_train"))
    section.tables.append(frame_table(curves.table, "Power-law fit per series",
                                      {"a": "{:.3g}", "b": "{:.3f}", "c": "{:.3f}", "R²": "{:.3f}",
                                       "RMSE": "{:.4f}", "n to reach target": "{:.0f}"}))
    return [section]
