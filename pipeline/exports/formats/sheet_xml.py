"""Worksheet rows as SpreadsheetML, written straight to a file and spliced into the package
that openpyxl saved.

Why: openpyxl's write-only mode still makes a cell object and runs its per-cell writer for
every value (measured here: ~13 us per cell, ~65 us per 5-column row, lxml on or off), so a
year of hourly rows for 50 facilities (2 sheets x 438k rows x 5 columns) took 57-90 s. The
rows of a sheet are the only part that grows with the data, and they are a small, fixed
vocabulary of XML: numbers, dates as serial numbers and inline strings, each with a style
index. So openpyxl still builds the whole workbook (summary sheet, styles, column widths,
frozen header, autofilter, native charts, relationships, content types) with each data sheet
holding only its header row, and this module writes the data rows and inserts them before
that sheet's ``</sheetData>`` when the package is copied to its final path.

Text is always an inline string (``t="inlineStr"``), never a formula, whatever it starts with
(formula injection), XML-escaped, with the control characters XML 1.0 forbids removed
(openpyxl would refuse the whole workbook for one of them in a facility name).
"""

from __future__ import annotations

import math
import shutil
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import IO
from xml.sax.saxutils import escape

from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.utils import get_column_letter
from openpyxl.utils.datetime import to_excel

SHEET_DATA_END = b"</sheetData>"
# Level 1 deflate: the sheet XML is very repetitive, so it still shrinks ~10x, at a fraction
# of level 6's time (the default, which took ~3 s on 2 x 110 MB of rows).
ROWS_COMPRESSLEVEL = 1
_COPY_CHUNK = 1 << 20
# Excel opens no sheet with more rows than this (header included); a longer one would be a
# file the QA manager cannot open, so the run fails with a reason instead.
EXCEL_MAX_ROWS = 1_048_576


class SheetTooLarge(ValueError):
    """A section has more rows than one Excel sheet holds."""


@lru_cache(maxsize=8192)
def _text_cell(value: str) -> str:
    # The part after r="..": facility names, modalities and e-mails repeat on every row.
    text = escape(ILLEGAL_CHARACTERS_RE.sub("", value))
    space = ' xml:space="preserve"' if text != text.strip() else ""
    return f' t="inlineStr"><is><t{space}>{text}</t></is></c>'


@lru_cache(maxsize=8192)
def _serial(value: date | datetime | time | timedelta) -> str:
    # One bucket (an hour, a day) is on one row per facility: each is converted once.
    if getattr(value, "tzinfo", None) is not None:
        raise TypeError("Excel has no time zones: convert to wall time in the report's zone first")
    return repr(to_excel(value))


def _number(value: float) -> str | None:
    # Excel has no NaN or infinity: such a value is an empty cell, not a corrupt file.
    return repr(value) if math.isfinite(value) else None


class RowWriter:
    """Writes rows of plain values (int, float, Decimal, bool, str, date, datetime, None) as
    ``<row>`` elements, one style index per column (from openpyxl's ``cell.style_id``)."""

    def __init__(self, out: IO[str], style_ids: Sequence[int], first_row: int) -> None:
        self._write = out.write
        # Per column, the fixed pieces around the row number: '<c r="B', then '" s="3"><v>'
        # for a number or '" s="3"' before an inline string. Joining pieces is ~40% faster
        # than formatting each cell (measured), and a year of hourly rows has 4.4M cells.
        self._columns = []
        for index, style_id in enumerate(style_ids, start=1):
            style = f' s="{style_id}"' if style_id else ""
            self._columns.append((f'<c r="{get_column_letter(index)}', f'"{style}><v>', f'"{style}'))
        self.next_row = first_row

    def write(self, rows: Iterable[Sequence[object]]) -> int:
        """Writes ``rows``; returns how many."""
        first, write_row = self.next_row, self.write_row
        for row in rows:
            write_row(row)
        return self.next_row - first

    def write_row(self, row: Sequence[object]) -> None:
        columns, r = self._columns, self.next_row
        if r > EXCEL_MAX_ROWS:
            raise SheetTooLarge(f"more than {EXCEL_MAX_ROWS - 1:,} data rows for one Excel sheet; "
                                "choose a coarser grouping or a shorter period, or the CSV format")
        if len(row) != len(columns):
            raise ValueError(f"row {r} has {len(row)} values for {len(columns)} columns")
        rs = str(r)
        parts = ['<row r="', rs, '">']
        for (cell, number, text), value in zip(columns, row, strict=True):
            kind = type(value)
            if kind is int:
                parts += (cell, rs, number, str(value), "</v></c>")
            elif kind is str:
                parts += (cell, rs, text, _text_cell(value))
            elif kind is float:
                if (value_text := _number(value)) is not None:
                    parts += (cell, rs, number, value_text, "</v></c>")
            elif value is None:
                continue
            elif kind is bool:
                parts += (cell, rs, text, ' t="b"><v>', "1" if value else "0", "</v></c>")
            elif isinstance(value, date | time | timedelta):
                parts += (cell, rs, number, _serial(value), "</v></c>")
            elif isinstance(value, str):  # a str subclass (an enum member)
                parts += (cell, rs, text, _text_cell(str.__str__(value)))
            elif isinstance(value, int | float | Decimal):  # e.g. a NUMERIC sum
                if (value_text := _number(float(value))) is not None:
                    parts += (cell, rs, number, value_text, "</v></c>")
            else:
                raise TypeError(f"cannot write {kind.__name__} to a sheet (row {r})")
        parts.append("</row>")
        self._write("".join(parts))
        self.next_row = r + 1


def splice(package: Path, target: Path, rows_by_part: Mapping[str, Path]) -> None:
    """Copies the zip ``package`` to ``target``, inserting the contents of each file in
    ``rows_by_part`` (``<row>`` XML) before ``</sheetData>`` of that worksheet part
    (e.g. ``xl/worksheets/sheet2.xml``). Every other entry is copied as it is."""
    pending = dict(rows_by_part)
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(
            target, "w", zipfile.ZIP_DEFLATED, compresslevel=ROWS_COMPRESSLEVEL) as out:
        for info in source.infolist():
            data = source.read(info)
            rows = pending.pop(info.filename, None)
            if rows is None:
                out.writestr(info, data)
                continue
            head, end, tail = data.partition(SHEET_DATA_END)
            if not end or data.count(SHEET_DATA_END) != 1:
                raise ValueError(f"{info.filename}: expected one {SHEET_DATA_END!r} (a header row)")
            # No ZIP64: a sheet's XML stays far below 2 GiB within Excel's 1,048,576 rows.
            with out.open(info.filename, "w") as entry, rows.open("rb") as body:
                entry.write(head)
                shutil.copyfileobj(body, entry, _COPY_CHUNK)
                entry.write(end + tail)
    if pending:
        raise ValueError(f"no such worksheet parts in the package: {sorted(pending)}")
