"""A case as a zip of DICOM files with a DICOMDIR rebuilt from the de-identified instances
(pydicom's FileSet writes it), never a copy of a source DICOMDIR, which would carry the
original names and UIDs.

The DICOMDIR's records need some Type 1 keys (StudyDate, StudyID, SeriesNumber ...) that
de-identification empties; the records get neutral stand-ins, and the files in the zip are
the de-identified bytes exactly as stored.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.fileset import FileSet

from pipeline.storage import ObjectStore

# Stand-ins for the DICOMDIR records only.
_RECORD_DEFAULTS = {
    "PatientID": "TEACHING",
    "StudyDate": "19000101",
    "StudyTime": "000000",
    "StudyID": "1",
    "Modality": "OT",
    "SeriesNumber": "1",
    "InstanceNumber": "1",
}


def write_case_zip(store: ObjectStore, object_keys: Iterable[str], out: BinaryIO) -> int:
    """Write the zip to ``out``; return how many instances it holds."""
    with tempfile.TemporaryDirectory(prefix="teaching-zip-") as tmp:
        root = Path(tmp)
        fileset = FileSet()
        originals: dict[str, bytes] = {}
        for key in object_keys:
            with store.open(key) as handle:
                data = handle.read()
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            for keyword, value in _RECORD_DEFAULTS.items():
                if not str(ds.get(keyword, "") or "").strip():
                    setattr(ds, keyword, value)
            fileset.add(ds)
            originals[str(ds.SOPInstanceUID)] = data
        target = root / "case"
        fileset.write(target)
        # The files FileSet wrote carry the record stand-ins: put the stored bytes back.
        for instance in fileset:
            path = Path(instance.path)
            path.write_bytes(originals[instance.SOPInstanceUID])
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(target.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(target).as_posix())
        return len(originals)

