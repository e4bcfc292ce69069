"""What a clinic folder holds: DICOM recognised by content, grouped by patient and study.

DICOM is recognised by the Part-10 marker (128-byte preamble + ``DICM``), not by extension;
DICOMDIR media indexes and everything else are listed as skipped with the reason.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


@dataclass(frozen=True)
class ScannedFile:
    path: Path
    size: int
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


@dataclass
class FolderScan:
    files: list[ScannedFile] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def studies(self) -> dict[str, list[ScannedFile]]:
        grouped: dict[str, list[ScannedFile]] = defaultdict(list)
        for f in self.files:
            grouped[f.study_instance_uid].append(f)
        return dict(grouped)

    def mixed_patient_studies(self) -> dict[str, set[str]]:
        """Studies whose files name more than one PatientID: a mix-up to catch before PACS."""
        return {
            uid: patients
            for uid, files in self.studies().items()
            if len(patients := {f.patient_id for f in files}) > 1
        }

    def summary(self) -> dict[str, int]:
        return {
            "patients": len({f.patient_id for f in self.files}),
            "studies": len(self.studies()),
            "series": len({f.series_instance_uid for f in self.files}),
            "files": len(self.files),
            "bytes": self.total_bytes,
            "skipped": len(self.skipped),
        }


def classify(path: Path) -> ScannedFile | Skipped:
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(132)
            if len(head) < 132 or head[128:132] != b"DICM":
                return Skipped(path, "not a DICOM Part-10 file")
            fh.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(fh, stop_before_pixels=True)
    except OSError as exc:
        return Skipped(path, f"unreadable ({exc.strerror or type(exc).__name__})")
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not usable"
        return Skipped(path, f"DICOM header cannot be read ({type(exc).__name__})")
    sop_class = str(ds.file_meta.get("MediaStorageSOPClassUID", ""))
    if sop_class == DICOMDIR_CLASS:
        return Skipped(path, "DICOMDIR (a media index, not an image)")
    return ScannedFile(
        path=path,
        size=size,
        patient_id=str(ds.get("PatientID", "") or ""),
        study_instance_uid=str(ds.get("StudyInstanceUID", "") or "(no StudyInstanceUID)"),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "") or "(no SeriesInstanceUID)"),
    )


def scan_folder(root: Path) -> FolderScan:
    """Walk ``root`` recursively (symlinks not followed), in a stable order."""
    scan = FolderScan()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            result = classify(path)
            (scan.files if isinstance(result, ScannedFile) else scan.skipped).append(result)
    return scan
