"""A report as an Excel workbook (openpyxl, write-only) and as CSV files.

openpyxl (write-only mode) builds the workbook: summary sheet, styles, column widths, frozen
header rows, autofilter and native charts, which only reference cell ranges and are added
once the row count is known. The data rows of each section stream from the database straight
into a temporary file as sheet XML (pipeline/exports/formats/sheet_xml, ~10x faster than openpyxl's per-cell
writer) and are inserted into the saved package, so a year of hourly rows never sits in
memory and the build stays at the process's baseline memory plus buffers.

Formula injection: any text cell starting with ``=``, ``+``, ``-``, ``@`` (or a tab or
carriage return) would be evaluated by Excel or a spreadsheet opening the CSV. Facility
names, modalities, user e-mails and report names come from clients, so every text value is
written as a string cell in xlsx (never a formula) and prefixed with ``'`` in CSV (OWASP).
"""

from __future__ import annotations

import contextlib
import csv
import tempfile
from collections.abc import Iterable, Iterator
from datetime import date, datetime
from pathlib import Path

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.chart import BarChart, LineChart, Reference
from openpyxl.styles import Font, PatternFill
from openpyxl.utils import get_column_letter

from pipeline.exports.data import ExportData, Section
from pipeline.exports.formats.sheet_xml import RowWriter, splice

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# A chart over more points than this is unreadable and slow to open: it shows the first ones.
CHART_MAX_POINTS = 2000
_HEADER_FONT = Font(bold=True, color="FFFFFF")
_HEADER_FILL = PatternFill("solid", fgColor="305496")
_ROWS_BUFFER = 1 << 20


def is_formula_like(value: object) -> bool:
    return isinstance(value, str) and value.startswith(FORMULA_PREFIXES)


def _text_cell(ws, value: str) -> WriteOnlyCell:  # noqa: ANN001
    cell = WriteOnlyCell(ws, value=value)
    # openpyxl types a value starting with "=" as a formula; a plain string it stays.
    cell.data_type = "s"
    return cell


def _cell(ws, value: object, number_format: str | None) -> object:  # noqa: ANN001
    if isinstance(value, str):
        return _text_cell(ws, value)
    cell = WriteOnlyCell(ws, value=value)
    if number_format and value is not None:
        cell.number_format = number_format
    return cell


def _header(ws, labels: Iterable[str]) -> list:  # noqa: ANN001
    cells = []
    for label in labels:
        cell = _text_cell(ws, label)
        cell.font = _HEADER_FONT
        cell.fill = _HEADER_FILL
        cells.append(cell)
    return cells


def _sheet_title(title: str, used: set[str]) -> str:
    clean = "".join(c for c in title if c not in "[]:*?/\\")[:31] or "Sheet"
    name, n = clean, 2
    while name in used:
        name = f"{clean[:28]} {n}"
        n += 1
    used.add(name)
    return name


def _add_chart(ws, section: Section, rows: int) -> None:  # noqa: ANN001
    if not section.chart or not section.chart_series or rows == 0:
        return
    last = 1 + min(rows, CHART_MAX_POINTS)
    chart = LineChart() if section.chart == "line" else BarChart()
    chart.title = section.title
    chart.height, chart.width = 9, 22
    for index in section.chart_series:
        data = Reference(ws, min_col=index + 1, min_row=1, max_row=last)
        chart.add_data(data, titles_from_data=True)
    chart.set_categories(Reference(ws, min_col=1, min_row=2, max_row=last))
    anchor = get_column_letter(len(section.columns) + 2) + "2"
    ws.add_chart(chart, anchor)


def _batches(sections: list[Section]) -> Iterator[list[Section]]:
    """Consecutive sections fed by one shared statement together; any other section alone."""
    batch: list[Section] = []
    for section in sections:
        source = section.shared[0] if section.shared else None
        if batch and (source is None or batch[0].shared is None or batch[0].shared[0] is not source):
            yield batch
            batch = []
        batch.append(section)
    if batch:
        yield batch


def _write_batch(batch: list[Section], writers: list[RowWriter]) -> None:
    source = batch[0].shared[0] if batch[0].shared else None
    places = [s.shared[1] if s.shared else None for s in batch]
    if source is None or places != list(range(len(source.widths))):
        # Not every section of the shared statement is here: each reads its own rows.
        for section, writer in zip(batch, writers, strict=True):
            writer.write(section.rows())
        return
    write_rows = [writer.write_row for writer in writers]
    split = source.split
    for row in source.rows():
        for write_row, part in zip(write_rows, split(row), strict=True):
            write_row(part)


def _data_sheet(wb: Workbook, section: Section, used: set[str]) -> tuple:
    """A section's sheet with its widths, frozen header row and header, and the style id of
    each column: the data rows bypass openpyxl's per-cell writer (pipeline/exports/formats/sheet_xml), one
    style per column, registered in this workbook through a template cell."""
    ws = wb.create_sheet(_sheet_title(section.title, used))
    for index, column in enumerate(section.columns, start=1):
        ws.column_dimensions[get_column_letter(index)].width = column.width
    ws.freeze_panes = "A2"
    ws.append(_header(ws, [c.label for c in section.columns]))
    return ws, [_cell(ws, 0, c.number_format).style_id for c in section.columns]


def write_xlsx(report: ExportData, path: Path) -> dict[str, int]:
    """Write the workbook; returns rows written per sheet."""
    wb = Workbook(write_only=True)
    used: set[str] = set()
    counts: dict[str, int] = {}
    summary = wb.create_sheet(_sheet_title("Summary", used))
    summary.column_dimensions["A"].width = 36
    summary.column_dimensions["B"].width = 22
    summary.freeze_panes = "A2"
    summary.append(_header(summary, ["Report", report.name]))
    summary.append([_text_cell(summary, "Facilities"), _text_cell(summary, ", ".join(report.facility_names))])
    local = report.period_start.astimezone(_zone(report.timezone)).replace(tzinfo=None)
    local_end = report.period_end.astimezone(_zone(report.timezone)).replace(tzinfo=None)
    summary.append([_text_cell(summary, "Period start"), _cell(summary, local, "yyyy-mm-dd hh:mm")])
    summary.append([_text_cell(summary, "Period end (exclusive)"),
                    _cell(summary, local_end, "yyyy-mm-dd hh:mm")])
    summary.append([_text_cell(summary, "Timezone"), _text_cell(summary, report.timezone)])
    summary.append([])
    for label, value, fmt in report.summary:
        summary.append([_text_cell(summary, label), _cell(summary, value, fmt)])
    with tempfile.TemporaryDirectory(prefix="relaypacs-xlsx-") as scratch:
        rows_by_sheet = []
        for batch in _batches(report.sections):
            with contextlib.ExitStack() as files:
                writers = []
                for section in batch:
                    ws, styles = _data_sheet(wb, section, used)
                    rows_file = Path(scratch) / f"rows{len(rows_by_sheet)}.xml"
                    out = files.enter_context(rows_file.open("w", encoding="utf-8", buffering=_ROWS_BUFFER))
                    writers.append(RowWriter(out, styles, first_row=2))
                    rows_by_sheet.append((ws, rows_file))
                _write_batch(batch, writers)
            for section, writer, (ws, _) in zip(batch, writers, rows_by_sheet[-len(batch):], strict=True):
                rows = writer.next_row - 2
                ws.auto_filter.ref = f"A1:{get_column_letter(len(section.columns))}{rows + 1}"
                _add_chart(ws, section, rows)
                counts[section.title] = rows
        package = Path(scratch) / "package.xlsx"
        wb.save(package)
        # ws.path (xl/worksheets/sheetN.xml) is assigned while openpyxl saves the package.
        splice(package, path, {ws.path.lstrip("/"): rows_file for ws, rows_file in rows_by_sheet})
    return counts


def _zone(name: str):  # noqa: ANN202
    from pipeline.exports.schedule import zone

    return zone(name)


def csv_value(value: object) -> object:
    if isinstance(value, str):
        return "'" + value if is_formula_like(value) else value
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="minutes")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return round(value, 4)
    return "" if value is None else value


def csv_lines(section: Section) -> Iterator[list]:
    yield [csv_value(c.label) for c in section.columns]
    for row in section.rows():
        yield [csv_value(v) for v in row]


def write_csv(section: Section, path: Path) -> int:
    rows = -1
    with path.open("w", newline="", encoding="utf-8-sig") as handle:
        writer = csv.writer(handle)
        for line in csv_lines(section):
            writer.writerow(line)
            rows += 1
    return rows
