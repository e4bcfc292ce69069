"""A report as a PDF (fpdf2): the summary, then per section a chart and a table.

openpyxl cannot render its charts to images, so the PDF draws its own: bars or a polyline
with fpdf2's primitives, no plotting library. A PDF is for reading, not for a year of hourly
rows. Its cost follows what it shows, not the row count: the chart comes from the section's
chart view (the time unit alone, coarsened by the database until it fits, or the first key
alone), the table from its overview (totals per facility, modality or user over the period)
or else from its first ``TABLE_MAX_ROWS`` rows, and a note says how many rows the xlsx and csv
hold (counted by SQL, never read).
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

from fpdf import FPDF

from pipeline.exports.data import ExportData, Section
from pipeline.exports.schedule import zone

TABLE_MAX_ROWS = 200
CHART_MAX_POINTS = 400


def _text(value: object, number_format: str | None = None) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return f"{value:.1%}" if number_format == "0.0%" else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    # The core fonts are Latin-1; anything else is shown as "?" rather than failing the run.
    return str(value).encode("latin-1", "replace").decode("latin-1")


def _chart(pdf: FPDF, section: Section, points: list[tuple[str, float]]) -> None:
    if not points:
        return
    x0, y0, width, height = pdf.l_margin, pdf.get_y() + 2, pdf.epw, 55
    top = max(v for _, v in points) or 1.0
    pdf.set_draw_color(120, 120, 120)
    pdf.line(x0, y0 + height, x0 + width, y0 + height)
    pdf.line(x0, y0, x0, y0 + height)
    step = width / len(points)
    pdf.set_draw_color(48, 84, 150)
    pdf.set_fill_color(48, 84, 150)
    previous: tuple[float, float] | None = None
    for index, (_, value) in enumerate(points):
        h = height * (value / top)
        if section.chart == "bar":
            pdf.rect(x0 + index * step + step * 0.1, y0 + height - h, step * 0.8, h, style="F")
        else:
            point = (x0 + index * step + step / 2, y0 + height - h)
            if previous is not None:
                pdf.line(*previous, *point)
            previous = point
    pdf.set_font("Helvetica", size=7)
    pdf.set_xy(x0, y0 + height + 1)
    pdf.cell(width / 2, 4, _text(points[0][0]))
    pdf.cell(width / 2, 4, _text(points[-1][0]), align="R")
    pdf.set_xy(x0, y0 - 3)
    pdf.cell(width, 3, f"max {top:,.1f}")
    pdf.set_y(y0 + height + 7)


def _chart_points(section: Section) -> tuple[str | None, list[tuple[object, float]], int]:
    """(series label, points, categories in all) for the section's chart: from its chart view
    (the time unit alone, or the first key alone; a few hundred rows from SQL) when it has
    one, else from its own first rows."""
    source = section.chart_view or section
    if not source.chart_series:
        return None, [], 0
    series = source.chart_series[0]
    points: list[tuple[object, float]] = []
    total = 0
    for row in source.rows():
        total += 1
        if len(points) < CHART_MAX_POINTS and isinstance(row[series], int | float):
            points.append((row[0], float(row[series])))
    return source.columns[series].label, points, total


def _table(pdf: FPDF, section: Section, rows: list[tuple]) -> None:
    pdf.set_font("Helvetica", size=7)
    widths = [pdf.epw / len(section.columns)] * len(section.columns)
    with pdf.table(col_widths=widths, text_align="LEFT", line_height=4) as out:
        out.row([_text(c.label) for c in section.columns])
        for row in rows:
            out.row([_text(v, c.number_format) for v, c in zip(row, section.columns, strict=True)])


def _note(pdf: FPDF, text: str) -> None:
    pdf.set_font("Helvetica", "I", 8)
    pdf.multi_cell(0, 5, _text(text), new_x="LMARGIN", new_y="NEXT")


def _first(section: Section, limit: int) -> tuple[list[tuple], int | None]:
    """Up to ``limit`` rows, and the number of rows in all (counted by SQL when the section
    can, so the rest is never read; else by reading on)."""
    rows: list[tuple] = []
    seen = 0
    stream = section.rows()
    for row in stream:
        seen += 1
        if len(rows) < limit:
            rows.append(row)
        elif section.count is not None:
            break
    close = getattr(stream, "close", None)
    if close is not None:
        close()
    if len(rows) < limit or section.count is None:
        return rows, seen
    return rows, section.count()


def _section(pdf: FPDF, section: Section) -> None:
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 14)
    pdf.cell(0, 9, _text(section.title), new_x="LMARGIN", new_y="NEXT")
    if section.note:
        _note(pdf, section.note)
    label, points, categories = _chart_points(section)
    if points:
        pdf.set_font("Helvetica", size=9)
        by = section.chart_view.columns[0].label if section.chart_view else section.columns[0].label
        pdf.cell(0, 6, _text(f"{label} by {by.lower()}"), new_x="LMARGIN", new_y="NEXT")
        _chart(pdf, section.chart_view or section, points)
        if categories > len(points):
            _note(pdf, f"The chart shows the first {len(points)} of {categories:,}.")
    if section.overview is not None:
        rows, total = _first(section.overview, TABLE_MAX_ROWS)
        _table(pdf, section.overview, rows)
        # The key columns come first; the first charted column is the first measure.
        width = section.chart_series[0] if section.chart_series else 1
        keys = " and ".join(c.label.lower() for c in section.columns[:width])
        everything = section.count() if section.count is not None else None
        more = f" (first {len(rows)} of {total:,})" if total and total > len(rows) else ""
        detail = f"all {everything:,} rows" if everything is not None else "every row"
        _note(pdf, f"Totals over the period{more}; the xlsx and csv hold {detail} by {keys}.")
        return
    rows, total = _first(section, TABLE_MAX_ROWS)
    _table(pdf, section, rows)
    if total and total > len(rows):
        _note(pdf, f"First {len(rows)} of {total:,} rows; the xlsx and csv hold all of them.")


def write_pdf(report: ExportData, path: Path) -> None:
    tz = zone(report.timezone)
    pdf = FPDF(orientation="landscape", format="A4")
    pdf.set_auto_page_break(True, margin=12)
    pdf.set_title(_text(report.name))
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 18)
    pdf.cell(0, 12, _text(report.name), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=10)
    start = report.period_start.astimezone(tz).strftime("%Y-%m-%d %H:%M")
    end = report.period_end.astimezone(tz).strftime("%Y-%m-%d %H:%M")
    pdf.cell(0, 6, f"Period {start} to {end} ({report.timezone})", new_x="LMARGIN", new_y="NEXT")
    pdf.cell(0, 6, _text("Facilities: " + ", ".join(report.facility_names)), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    pdf.set_font("Helvetica", size=10)
    with pdf.table(col_widths=(pdf.epw * 0.6, pdf.epw * 0.4), line_height=6) as out:
        out.row(["Measure", "Value"])
        for label, value, fmt in report.summary:
            out.row([_text(label), _text(value, fmt)])
    for section in report.sections:
        _section(pdf, section)
    pdf.output(str(path))
