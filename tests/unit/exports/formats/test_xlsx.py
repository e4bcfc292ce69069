"""Report files: workbook structure read back with openpyxl, formula injection in xlsx and csv."""

from __future__ import annotations

import csv
import zipfile
from datetime import UTC, date, datetime, timedelta

from openpyxl import load_workbook

from pipeline.exports.data import Column, ExportData, Section
from pipeline.exports.formats.xlsx import write_csv, write_xlsx

HOSTILE = ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1)", "plain"]


def _report() -> ExportData:
    days = [(date(2026, 3, 1) + timedelta(days=i), HOSTILE[i % len(HOSTILE)], i * 10, 0.5)
            for i in range(30)]
    volume = Section("Volume", [Column("Day", "yyyy-mm-dd"), Column("Modality"),
                                Column("Uploads", "#,##0"), Column("Success", "0.0%")],
                     lambda: iter(days), chart="line", chart_series=(2, 3))
    reasons = Section("Quarantine reasons", [Column("Reason"), Column("Uploads", "#,##0")],
                      lambda: iter([("=cmd|' /C calc'!A0", 3), ("not_dicom", 5)]), chart="bar",
                      chart_series=(1,))
    return ExportData("=Weekly QA", ["@Clinic"], datetime(2026, 3, 1, tzinfo=UTC),
                      datetime(2026, 3, 31, tzinfo=UTC), "Europe/Berlin",
                      summary=[("Uploads", 4350, "#,##0"), ("Delivery success rate", 0.987, "0.0%")],
                      sections=[volume, reasons])


def test_workbook_structure(tmp_path):
    path = tmp_path / "r.xlsx"
    assert write_xlsx(_report(), path) == {"Volume": 30, "Quarantine reasons": 2}
    wb = load_workbook(path)
    assert wb.sheetnames == ["Summary", "Volume", "Quarantine reasons"]
    summary = wb["Summary"]
    assert summary["B7"].value == 4350 and summary["B7"].number_format == "#,##0"
    assert summary["B8"].number_format == "0.0%"
    volume = wb["Volume"]
    assert volume.freeze_panes == "A2"
    assert volume.auto_filter.ref == "A1:D31"
    assert volume["A2"].is_date and volume["A2"].number_format == "yyyy-mm-dd"
    assert volume["C31"].value == 290 and volume["C31"].number_format == "#,##0"
    assert volume.column_dimensions["A"].width == 14
    assert wb["Quarantine reasons"].freeze_panes == "A2"
    # Native, editable charts: a line over time, bars by reason.
    assert [type(c).__name__ for c in volume._charts] == ["LineChart"]
    assert len(volume._charts[0].series) == 2
    assert [type(c).__name__ for c in wb["Quarantine reasons"]._charts] == ["BarChart"]


def test_text_from_uploads_never_becomes_a_formula_in_xlsx(tmp_path):
    path = tmp_path / "r.xlsx"
    write_xlsx(_report(), path)
    wb = load_workbook(path)
    cells = [c for ws in wb for row in ws.iter_rows() for c in row if isinstance(c.value, str)]
    assert not [c.coordinate for c in cells if c.data_type == "f"]
    assert wb["Volume"]["B2"].value == HOSTILE[0] and wb["Volume"]["B2"].data_type == "s"
    assert wb["Summary"]["B1"].value == "=Weekly QA"
    with zipfile.ZipFile(path) as package:
        assert not [n for n in package.namelist() if n.startswith("xl/worksheets/")
                    and b"<f>" in package.read(n)]


def test_text_from_uploads_never_becomes_a_formula_in_csv(tmp_path):
    report = _report()
    path = tmp_path / "volume.csv"
    assert write_csv(report.sections[0], path) == 30
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["Day", "Modality", "Uploads", "Success"]
    modalities = [r[1] for r in rows[1:6]]
    assert modalities == ["'" + v for v in HOSTILE[:4]] + ["plain"]
    assert rows[1][0] == "2026-03-01" and rows[1][2] == "0"
    write_csv(report.sections[1], tmp_path / "reasons.csv")
    assert (tmp_path / "reasons.csv").read_text(encoding="utf-8-sig").splitlines()[1].startswith("'=cmd")
