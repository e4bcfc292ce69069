"""A report as a PDF (fpdf2): the summary, then per section a chart and a table.

openpyxl cannot render its charts to images, so the PDF draws its own: bars or a polyline
with fpdf2's primitives, no plotting library. A PDF is for reading, not for a year of hourly
rows: tables stop after ``TABLE_MAX_ROWS`` and say so (the xlsx and csv carry everything);
charts aggregate to at most ``CHART_MAX_POINTS`` points.
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

from fpdf import FPDF

from pipeline.report_data import ReportData, Section
from pipeline.report_schedule import zone

TABLE_MAX_ROWS = 200
CHART_MAX_POINTS = 120


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


def _section(pdf: FPDF, section: Section) -> None:
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 14)
    pdf.cell(0, 9, _text(section.title), new_x="LMARGIN", new_y="NEXT")
    if section.note:
        pdf.set_font("Helvetica", "I", 8)
        pdf.cell(0, 5, _text(section.note), new_x="LMARGIN", new_y="NEXT")
    table: list[tuple] = []
    total_rows = 0
    series = section.chart_series[0] if section.chart_series else None
    # Chart points: per category (first column), summed, then merged down to the cap.
    chart: dict[object, float] = {}
    for row in section.rows():
        total_rows += 1
        if len(table) < TABLE_MAX_ROWS:
            table.append(row)
        if series is not None and isinstance(row[series], int | float):
            chart[row[0]] = chart.get(row[0], 0.0) + float(row[series])
    if series is not None and chart:
        pdf.set_font("Helvetica", size=9)
        pdf.cell(0, 6, _text(section.columns[series].label), new_x="LMARGIN", new_y="NEXT")
        items = list(chart.items())
        size = max(1, -(-len(items) // CHART_MAX_POINTS))
        points = [(items[i][0], sum(v for _, v in items[i:i + size])) for i in range(0, len(items), size)]
        _chart(pdf, section, points)
    pdf.set_font("Helvetica", size=7)
    widths = [pdf.epw / len(section.columns)] * len(section.columns)
    with pdf.table(col_widths=widths, text_align="LEFT", line_height=4) as out:
        out.row([_text(c.label) for c in section.columns])
        for row in table:
            out.row([_text(v, c.number_format) for v, c in zip(row, section.columns, strict=True)])
    if total_rows > len(table):
        pdf.set_font("Helvetica", "I", 8)
        pdf.cell(0, 6, f"First {len(table)} of {total_rows:,} rows; the xlsx and csv hold all of them.",
                 new_x="LMARGIN", new_y="NEXT")


def write_pdf(report: ReportData, path: Path) -> None:
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
