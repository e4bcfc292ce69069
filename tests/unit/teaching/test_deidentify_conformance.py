"""PS3.15 Table E.1-1, checked attribute by attribute on what the teaching file's
de-identification writes, against an independent copy of the table (data/ps3_15_table_e1_1.csv,
provenance in its header): every pydicom sample file, and synthetic files that fill every
attribute of the table at the top level and inside a nested sequence item."""

from __future__ import annotations

import csv
import io
import re
import warnings
from datetime import date
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from pipeline.teaching.deidentify import DeidContext, NotAnInstance, deidentify
from pipeline.teaching.profile import DeidOptions

TABLE = Path(__file__).parent / "data" / "ps3_15_table_e1_1.csv"
SAMPLES = Path(pydicom.__file__).parent / "data" / "test_files"
SECRET = b"conformance-test-secret-0123456789"
OPTION_COLUMNS = {
    "retain_modified_dates": "retain_modified_dates",
    "retain_patient_characteristics": "retain_patient_characteristics",
    "clean_descriptors": "clean_descriptors",
    "retain_safe_private": "retain_safe_private",
}
ALL_OPTIONS = DeidOptions(
    retain_modified_dates=True, retain_patient_characteristics=True, clean_descriptors=True
)
NO_OPTIONS = DeidOptions(
    retain_modified_dates=False, retain_patient_characteristics=False, clean_descriptors=False
)
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
IDENTIFYING = ("doe", "john", "12345678", "acc778899")


def _table() -> tuple[dict[int, dict[str, str]], list[tuple[str, dict[str, str]]]]:
    lines = [line for line in TABLE.read_text().splitlines() if not line.startswith("#")]
    exact: dict[int, dict[str, str]] = {}
    masked: list[tuple[str, dict[str, str]]] = []
    for row in csv.DictReader(lines):
        if row["tag"] == "PRIVATE":
            masked.append(("PRIVATE", row))
        elif "X" in row["tag"]:
            masked.append((row["tag"], row))
        else:
            exact[int(row["tag"], 16)] = row
    return exact, masked


EXACT, MASKED = _table()


def expected_action(row: dict[str, str], options: DeidOptions) -> str:
    for field, column in OPTION_COLUMNS.items():
        if getattr(options, field) and row[column]:
            return row[column]
    return row["basic_profile"]


def _empty(elem) -> bool:
    return elem.value in (None, "", b"") or (elem.VR == "SQ" and len(elem.value) == 0)


def _uis(ds: Dataset) -> list[str]:
    found = []
    for elem in ds.iterall():
        if elem.VR == "UI" and elem.value:
            found.extend(elem.value if elem.VM > 1 else [elem.value])
    return found


class Checker:
    """Compares an original dataset with its de-identified copy, rule by rule."""

    def __init__(self, options: DeidOptions, ctx: DeidContext):
        self.options = options
        self.ctx = ctx
        self.deltas: set[int] = set()
        self.failures: list[str] = []
        self.checked: set[int] = set()

    def fail(self, where: str, message: str) -> None:
        self.failures.append(f"{where}: {message}")

    def check(self, before: Dataset, after: Dataset, where: str = "") -> None:
        for elem in before:
            tag = int(elem.tag)
            at = f"{where}{elem.tag}"
            if elem.tag.is_private:
                self._private(elem, after, at)
                continue
            row = EXACT.get(tag)
            if row is None:
                if 0x5000 <= elem.tag.group <= 0x50FF:
                    if elem.tag in after:
                        self.fail(at, "curve data left (50xx,xxxx is X)")
                elif 0x6000 <= elem.tag.group <= 0x60FF and elem.tag.element in (0x3000, 0x4000):
                    if elem.tag in after:
                        self.fail(at, "overlay data/comments left (X)")
                elif elem.VR == "SQ" and elem.tag in after:
                    for i, (b, a) in enumerate(zip(elem.value, after[elem.tag].value, strict=False)):
                        self.check(b, a, f"{at}[{i}].")
                continue
            self.checked.add(tag)
            self._one(elem, after, row, at)

    def _private(self, elem, after: Dataset, at: str) -> None:
        if not self.options.retain_safe_private and elem.tag in after:
            self.fail(at, "private attribute left (X without Retain Safe Private)")

    def _one(self, elem, after: Dataset, row: dict[str, str], at: str) -> None:
        action = expected_action(row, self.options)
        present = elem.tag in after
        out = after[elem.tag] if present else None
        original_empty = _empty(elem)
        name = row["keyword"]
        if action == "X":
            if present:
                self.fail(at, f"{name} present, table says X")
        elif action == "Z":
            if not present or not _empty(out):
                self.fail(at, f"{name} must be present and empty (Z)")
        elif action in ("D", "X/D", "Z/D", "X/Z/D", "X/Z"):
            allowed_absent = action.startswith("X")
            allowed_empty = "Z" in action
            if not present:
                if not allowed_absent:
                    self.fail(at, f"{name} removed, table says {action}")
            elif _empty(out):
                if not allowed_empty and not original_empty:
                    self.fail(at, f"{name} emptied, table says {action}")
            elif "D" not in action:
                self.fail(at, f"{name} kept a value, table says {action}")
            elif not original_empty and out.value == elem.value:
                self.fail(at, f"{name} unchanged ({action})")
        elif action in ("U", "X/Z/U*"):
            if action == "U" and not present and not original_empty:
                self.fail(at, f"{name} removed, table says U")
            elif present and elem.VR == "UI" and not original_empty:
                old = list(elem.value) if elem.VM > 1 else [elem.value]
                new = list(out.value) if out.VM > 1 else [out.value]
                for o, n in zip(old, new, strict=False):
                    if o == n or not UID_RE.match(n) or len(n) > 64:
                        self.fail(at, f"{name} UID not replaced: {o} -> {n}")
                    elif self.ctx.uid_map.get(o) != n:
                        self.fail(at, f"{name} replaced inconsistently")
            elif present and elem.VR == "SQ":
                leftovers = set(_uis(Dataset({elem.tag: elem}))) & set(_uis(Dataset({out.tag: out})))
                leftovers = {u for u in leftovers if u not in pydicom.uid.UID_dictionary}
                if leftovers:
                    self.fail(at, f"{name}: UIDs left inside the sequence: {sorted(leftovers)[:3]}")
        elif action == "K" and elem.VR == "SQ":
            # A kept sequence stays, and what is inside it answers to the table in turn.
            if not present or len(out.value) != len(elem.value):
                self.fail(at, f"{name} must be kept (K)")
            else:
                for i, (b, a) in enumerate(zip(elem.value, out.value, strict=True)):
                    self.check(b, a, f"{at}[{i}].")
        elif action == "K":
            if not present or out.value != elem.value:
                self.fail(at, f"{name} must be kept (K)")
        elif action == "C":
            self._clean(elem, out, row, at)
        else:
            self.fail(at, f"unknown action {action}")

    def _clean(self, elem, out, row: dict[str, str], at: str) -> None:
        name = row["keyword"]
        if out is None or _empty(out):
            return
        by_dates = self.options.retain_modified_dates and row["retain_modified_dates"] == "C"
        if by_dates and elem.VR in ("DA", "DT") and not _empty(elem):
            before, after = str(elem.value), str(out.value)
            try:
                d0 = date(int(before[:4]), int(before[4:6]), int(before[6:8]))
                d1 = date(int(after[:4]), int(after[4:6]), int(after[6:8]))
            except ValueError:
                self.fail(at, f"{name}: not a date after shifting: {after!r}")
                return
            self.deltas.add((d1 - d0).days)
            if before[8:] != after[8:]:
                self.fail(at, f"{name}: time part of a DT changed")
            return
        if by_dates and elem.VR == "TM":
            if out.value != elem.value:
                self.fail(at, f"{name}: time changed; only whole days move")
            return
        text = str(out.value).lower()
        for word in IDENTIFYING:
            if word in text:
                self.fail(at, f"{name} still holds {word!r} after cleaning (C)")
        if re.search(r"\b\d{4}-\d{2}-\d{2}\b", text):
            self.fail(at, f"{name} still holds a date after cleaning (C)")


def _check_common(after: Dataset, options: DeidOptions, ctx: DeidContext) -> list[str]:
    problems = []
    if after.get("PatientIdentityRemoved") != "YES":
        problems.append("PatientIdentityRemoved is not YES")
    codes = {item.CodeValue for item in after.get("DeidentificationMethodCodeSequence", [])}
    wanted = {"113100"}
    if options.retain_modified_dates:
        wanted.add("113107")
    if options.retain_patient_characteristics:
        wanted.add("113108")
    if options.clean_descriptors:
        wanted.add("113105")
    if codes != wanted:
        problems.append(f"CID 7050 codes {sorted(codes)} != {sorted(wanted)}")
    expected_ltm = "MODIFIED" if options.retain_modified_dates else "REMOVED"
    if after.get("LongitudinalTemporalInformationModified") != expected_ltm:
        problems.append("LongitudinalTemporalInformationModified wrong")
    meta = getattr(after, "file_meta", None)
    if (
        meta is not None
        and "MediaStorageSOPInstanceUID" in meta
        and meta.MediaStorageSOPInstanceUID != after.SOPInstanceUID
    ):
        problems.append("MediaStorageSOPInstanceUID does not follow the new SOP Instance UID")
    for elem in after.iterall():
        if elem.tag.is_private and not options.retain_safe_private:
            problems.append(f"private {elem.tag} left")
            break
    return problems


def _roundtrip(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    buffer.seek(0)
    return pydicom.dcmread(buffer, force=True)


def _sample_params():
    params = []
    for path in sorted(p for p in SAMPLES.rglob("*") if p.is_file()):
        name = str(path.relative_to(SAMPLES))
        reason = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, force=True)
                ds.remove_private_tags  # noqa: B018 - the read must have produced a Dataset
                list(ds.iterall())
        except Exception as exc:  # noqa: BLE001 - any unreadable sample is skipped, with why
            reason = f"pydicom cannot read it: {type(exc).__name__}: {str(exc)[:80]}"
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(path, id=name, marks=marks))
    return params


@pytest.mark.parametrize("options", [ALL_OPTIONS, NO_OPTIONS], ids=["options", "basic"])
@pytest.mark.parametrize("path", _sample_params())
def test_every_pydicom_sample_meets_table_e1_1(path, options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original = pydicom.dcmread(path, force=True)
        work = pydicom.dcmread(path, force=True)
        if original.get("SOPInstanceUID") is None or (
            getattr(original, "file_meta", None) is not None
            and original.file_meta.get("MediaStorageSOPClassUID") == "1.2.840.10008.1.3.10"
        ):
            with pytest.raises(NotAnInstance):
                deidentify(work, DeidContext(secret=SECRET, facility_id=1, options=options))
            return
        ctx = DeidContext(secret=SECRET, facility_id=1, options=options)
        deidentify(work, ctx)
        try:
            after = _roundtrip(work)
        except Exception:  # noqa: BLE001
            # The de-identified copy must still be writable whenever the original was.
            try:
                _roundtrip(original)
            except Exception:  # noqa: BLE001
                # pydicom cannot write this sample at all (SC_rgb_jpeg.dcm): check the
                # de-identified dataset in memory instead of skipping it.
                after = work
            else:
                raise
    checker = Checker(options, ctx)
    checker.check(original, after)
    problems = checker.failures + _check_common(after, options, ctx)
    if options.retain_modified_dates and len(checker.deltas) > 1:
        problems.append(f"dates moved by different offsets: {checker.deltas}")
    assert not problems, "\n".join(problems[:40])


# --- synthetic files that fill every attribute of the table -------------------------------

_VALUE_BY_VR = {
    "PN": "Doe^John",
    "LO": "John Doe 12345678 2020-01-02 chest",
    "SH": "Doe 12345678",
    "LT": "John Doe 12345678 2020-01-02 chest",
    "ST": "John Doe 12345678 2020-01-02 chest",
    "UT": "John Doe 12345678 2020-01-02 chest",
    "UC": "John Doe 12345678 chest",
    "CS": "JOHNDOE",
    "AE": "DOESTATION",
    "DA": "20200102",
    "TM": "101112",
    "DT": "20200102101112",
    "AS": "045Y",
    "IS": "7",
    "DS": "7.5",
    "US": 7,
    "SS": 7,
    "UL": 7,
    "SL": 7,
    "UV": 7,
    "SV": 7,
    "FL": 7.0,
    "FD": 7.0,
    "AT": 0x00100010,
    "UR": "http://doe.example/12345678",
    "OB": b"DOE1",
    "OW": b"DOE1",
    "OD": b"\x01" * 8,
    "OF": b"\x01" * 4,
    "OL": b"\x01" * 4,
    "OV": b"\x01" * 8,
    "UN": b"DOE1",
}


def _fill(ds: Dataset, counter: list[int], depth: int) -> None:
    for tag in EXACT:
        if tag >> 16 in (0x0000, 0x0002):
            continue
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        vr = vr.split(" or ")[0]
        if vr == "SQ":
            item = Dataset()
            counter[0] += 1
            item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
            item.ReferencedSOPInstanceUID = f"1.2.3.999.{counter[0]}"
            item.PatientName = "Doe^John"
            value = Sequence([item])
        elif vr == "UI":
            counter[0] += 1
            value = f"1.2.3.4.{counter[0]}"
        else:
            value = _VALUE_BY_VR.get(vr)
            if value is None:
                continue
        ds.add_new(tag, vr, value)
    ds.PatientName = "Doe^John"
    ds.PatientID = "12345678"
    ds.AccessionNumber = "ACC778899"
    # Identifying fields hold only identifying words, so what Clean Descriptors keeps of the
    # descriptors ("chest") shows, and the table decides whether it may stay.
    ds.InstitutionName = "Doe Hospital"
    ds.StudyID = "12345678"
    ds.add_new(0x50000010, "US", 1)  # a curve attribute
    ds.add_new(0x60003000, "OW", b"\x00\x01")  # overlay data
    ds.add_new(0x60004000, "LT", "Doe overlay")  # overlay comments
    ds.add_new(0x00090010, "LO", "DOE PRIVATE")
    ds.add_new(0x00091001, "LO", "John Doe 12345678")
    if depth == 0:
        nested = Dataset()
        _fill(nested, counter, depth + 1)
        # An attribute outside the table (K) whose item holds every attribute of the table.
        ds.SharedFunctionalGroupsSequence = Sequence([nested])


def synthetic_instance() -> Dataset:
    ds = Dataset()
    _fill(ds, [0], 0)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.1000"
    ds.StudyInstanceUID = "1.2.3.4.2000"
    ds.SeriesInstanceUID = "1.2.3.4.3000"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@pytest.mark.parametrize("options", [ALL_OPTIONS, NO_OPTIONS], ids=["options", "basic"])
def test_synthetic_instance_with_every_table_attribute_meets_table_e1_1(options):
    original = synthetic_instance()
    work = synthetic_instance()
    ctx = DeidContext(secret=SECRET, facility_id=1, options=options)
    deidentify(work, ctx)
    after = _roundtrip(work)
    checker = Checker(options, ctx)
    checker.check(original, after)
    problems = checker.failures + _check_common(after, options, ctx)
    if options.retain_modified_dates:
        if len(checker.deltas) != 1:
            problems.append(f"dates moved by {checker.deltas}, expected one offset")
        elif not -4015 <= next(iter(checker.deltas)) <= -365:
            problems.append("date offset outside one to eleven years back")
    # Every attribute of the table that pydicom's dictionary knows was filled and checked,
    # at the top level and inside the nested item.
    fillable = {t for t in EXACT if t >> 16 not in (0, 2) and _known(t)}
    assert fillable - checker.checked == set()
    assert len(checker.checked) > 550
    if options.clean_descriptors:
        # The other side: cleaned descriptors keep their clinical words.
        cleaned = [row for tag, row in EXACT.items()
                   if row["clean_descriptors"] == "C" and tag in after
                   and isinstance(after[tag].value, str) and after[tag].value == "chest"]
        assert len(cleaned) >= 20, len(cleaned)
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:60])


def _known(tag: int) -> bool:
    try:
        vr = dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return False
    return vr in _VALUE_BY_VR or vr in ("SQ", "UI")
