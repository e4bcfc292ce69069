"""Sheet rows written as XML beside openpyxl: read back with openpyxl's own loader, values,
types and number formats survive; text is never a formula; a bad package is refused; sections
of one shared statement are written from a single read of it."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from openpyxl import Workbook, load_workbook
from openpyxl.cell import WriteOnlyCell

from pipeline.exports.data import Column, ExportData, Section, SharedRows
from pipeline.exports.formats.sheet_xml import EXCEL_MAX_ROWS, RowWriter, SheetTooLarge, splice
from pipeline.exports.formats.xlsx import write_xlsx

ROWS = [
    (datetime(2025, 3, 30, 1, 0), "Clinic & <Sons>", 5, 5_000_000_000, 0.25, Decimal("12.5")),
    (datetime(2025, 3, 30, 3, 0), "=1+2", None, -3, float("nan"), True),
    (date(2025, 3, 31), "  padded\x01 ", 0, 7, float("inf"), None),
]
FORMATS = ["yyyy-mm-dd hh:mm", None, "#,##0", "#,##0", "0.0%", "#,##0.0"]


def _workbook(tmp_path, rows=ROWS):  # noqa: ANN001, ANN202
    wb = Workbook(write_only=True)
    ws = wb.create_sheet("Data")
    ws.append([f"h{i}" for i in range(len(FORMATS))])
    styles = []
    for fmt in FORMATS:
        cell = WriteOnlyCell(ws, value=0)
        if fmt:
            cell.number_format = fmt
        styles.append(cell.style_id)
    body = tmp_path / "rows.xml"
    with body.open("w", encoding="utf-8") as out:
        assert RowWriter(out, styles, first_row=2).write(rows) == len(rows)
    package, target = tmp_path / "package.xlsx", tmp_path / "out.xlsx"
    wb.save(package)
    splice(package, target, {ws.path.lstrip("/"): body})
    return target


def test_values_types_and_formats_read_back(tmp_path):
    ws = load_workbook(_workbook(tmp_path))["Data"]
    assert [c.value for c in ws[1]] == [f"h{i}" for i in range(6)]
    first = ws[2]
    assert first[0].value == datetime(2025, 3, 30, 1, 0) and first[0].is_date
    assert first[0].number_format == "yyyy-mm-dd hh:mm"
    assert first[1].value == "Clinic & <Sons>" and first[1].data_type == "s"
    assert first[1].number_format == "General"
    assert first[2].value == 5 and first[2].number_format == "#,##0"
    assert first[3].value == 5_000_000_000
    assert first[4].value == 0.25 and first[4].number_format == "0.0%"
    assert first[5].value == 12.5 and first[5].number_format == "#,##0.0"
    second = ws[3]
    # Text that looks like a formula stays text; None and NaN are empty cells.
    assert second[1].value == "=1+2" and second[1].data_type == "s"
    assert second[2].value is None and second[4].value is None
    assert second[3].value == -3 and second[5].value is True
    third = ws[4]
    assert third[0].value == datetime(2025, 3, 31)
    # Control characters XML forbids are dropped; surrounding spaces are kept.
    assert third[1].value == "  padded "
    assert third[4].value is None and third[5].value is None
    assert ws.max_row == 4


def test_no_formula_element_in_the_package(tmp_path):
    with zipfile.ZipFile(_workbook(tmp_path)) as package:
        sheet = package.read("xl/worksheets/sheet1.xml")
        assert package.testzip() is None
    assert b"<f>" not in sheet and b"<t>=1+2</t>" in sheet


def test_refuses_aware_datetimes_and_unknown_types(tmp_path):
    out = io.StringIO()
    with pytest.raises(TypeError, match="time zones"):
        RowWriter(out, [0], 2).write([(datetime(2025, 1, 1, tzinfo=UTC),)])
    with pytest.raises(TypeError, match="list"):
        RowWriter(out, [0], 2).write([([1],)])
    with pytest.raises(ValueError, match="2 values for 1 columns"):
        RowWriter(out, [0], 2).write([(1, 2)])


def test_refuses_rows_beyond_what_one_excel_sheet_holds():
    out = io.StringIO()
    writer = RowWriter(out, [0], EXCEL_MAX_ROWS - 1)
    assert writer.write([(1,), (2,)]) == 2  # the sheet's last two rows
    assert out.getvalue().endswith(f'<row r="{EXCEL_MAX_ROWS}"><c r="A{EXCEL_MAX_ROWS}"><v>2</v></c></row>')
    with pytest.raises(SheetTooLarge, match="coarser grouping"):
        writer.write_row((3,))


def test_splice_refuses_a_missing_part(tmp_path):
    wb = Workbook(write_only=True)
    wb.create_sheet("Data").append(["h"])
    wb.save(tmp_path / "p.xlsx")
    (tmp_path / "rows.xml").write_text("")
    with pytest.raises(ValueError, match="sheet9"):
        splice(tmp_path / "p.xlsx", tmp_path / "o.xlsx", {"xl/worksheets/sheet9.xml": tmp_path / "rows.xml"})


def test_report_workbook_many_rows_keeps_chart_filter_and_formats(tmp_path):
    start = datetime(2025, 1, 1)
    hours = [(start + timedelta(hours=h), f"Facility {h % 3}", h, h / 7) for h in range(3000)]
    section = Section("Volume", [Column("Hour", "yyyy-mm-dd hh:mm", 18), Column("Facility"),
                                 Column("Uploads", "#,##0"), Column("Rate", "0.0%")],
                      lambda: iter(hours), chart="line", chart_series=(2,))
    report = ExportData("Hours", ["Facility 0"], datetime(2025, 1, 1, tzinfo=UTC),
                        datetime(2025, 5, 1, tzinfo=UTC), "UTC", sections=[section])
    path = tmp_path / "r.xlsx"
    assert write_xlsx(report, path) == {"Volume": 3000}
    ws = load_workbook(path)["Volume"]
    assert ws.freeze_panes == "A2" and ws.auto_filter.ref == "A1:D3001"
    assert ws.column_dimensions["A"].width == 18
    assert [type(c).__name__ for c in ws._charts] == ["LineChart"]
    last = ws[3001]
    assert last[0].value == start + timedelta(hours=2999) and last[0].number_format == "yyyy-mm-dd hh:mm"
    assert last[1].value == "Facility 2" and last[2].value == 2999 and last[2].number_format == "#,##0"
    assert last[3].value == pytest.approx(2999 / 7) and last[3].number_format == "0.0%"
    assert ws["A1"].font.b and ws["A1"].value == "Hour"


def _unused() -> Iterator[tuple]:
    raise AssertionError("a section of a shared statement read its own rows")


def test_sections_of_one_statement_are_written_in_one_pass(tmp_path):
    reads = []

    def combined() -> Iterator[tuple]:
        reads.append(1)
        for day in range(3):
            yield date(2025, 1, 1 + day), "=Clinic", day, day * 1000, 0.5 + day / 10

    shared = SharedRows(combined, keys=2, widths=(2, 1))
    assert shared.split((1, "a", 2, 3, 4)) == [(1, "a", 2, 3), (1, "a", 4)]
    keys = [Column("Day", "yyyy-mm-dd"), Column("Facility")]
    volume = Section("Volume", [*keys, Column("Uploads", "#,##0"), Column("Bytes", "#,##0")], _unused,
                     chart="line", chart_series=(2,), shared=(shared, 0))
    delivery = Section("Delivery", [*keys, Column("Success", "0.0%")], _unused, chart="line",
                       chart_series=(2,), shared=(shared, 1))
    alone = Section("Alone", [Column("Reason"), Column("Uploads", "#,##0")],
                    lambda: iter([("x", 1)]))
    report = ExportData("R", ["Clinic"], datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 4, tzinfo=UTC),
                        "UTC", sections=[volume, delivery, alone])
    path = tmp_path / "r.xlsx"
    assert write_xlsx(report, path) == {"Volume": 3, "Delivery": 3, "Alone": 1}
    assert reads == [1]
    wb = load_workbook(path)
    assert wb.sheetnames == ["Summary", "Volume", "Delivery", "Alone"]
    assert [tuple(r) for r in wb["Volume"].iter_rows(min_row=2, values_only=True)] == [
        (datetime(2025, 1, 1 + d), "=Clinic", d, d * 1000) for d in range(3)]
    assert [r[2] for r in wb["Delivery"].iter_rows(min_row=2, values_only=True)] == [0.5, 0.6, 0.7]
    assert wb["Delivery"]["C2"].number_format == "0.0%" and wb["Delivery"]["B2"].data_type == "s"
    assert wb["Delivery"].auto_filter.ref == "A1:C4" and len(wb["Delivery"]._charts) == 1
    assert wb["Alone"]["A2"].value == "x"


def test_a_section_without_the_rest_of_its_statement_reads_its_own_rows(tmp_path):
    shared = SharedRows(_unused, keys=1, widths=(1, 1))
    section = Section("Delivery", [Column("Day"), Column("Success")], lambda: iter([("d", 1.0)]),
                      shared=(shared, 1))
    report = ExportData("R", [], datetime(2025, 1, 1, tzinfo=UTC), datetime(2025, 1, 2, tzinfo=UTC), "UTC",
                        sections=[section])
    assert write_xlsx(report, tmp_path / "r.xlsx") == {"Delivery": 1}
