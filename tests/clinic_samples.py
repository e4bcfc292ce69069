"""Synthetic clinic material for tests and benchmarks: studies of named patients with
accession numbers, and large multi-frame instances, all made from pydicom's CT_small.dcm."""

from __future__ import annotations

import io

import pydicom
from pydicom.uid import generate_uid

from pipeline.dicom.samples import synthetic_study


def _save(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def patient_study(n: int, *, patient_id: str, name: str, accession: str = "ACC-1",
                  study_uid: str | None = None, series_uid: str | None = None) -> list[bytes]:
    """``n`` CT instances (~39 KB each) of one series, for one named patient."""
    out = []
    for data in synthetic_study(n, study_uid=study_uid or generate_uid(),
                                series_uid=series_uid or generate_uid(), patient_id=patient_id):
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.PatientName = name
        ds.AccessionNumber = accession
        out.append(_save(ds))
    return out


def large_instance(frames: int, study_uid: str | None = None) -> bytes:
    """A multi-frame CT of ``frames`` x 32 KB of pixel data (CT_small's frame repeated)."""
    ds = pydicom.dcmread(io.BytesIO(synthetic_study(1, study_uid=study_uid)[0]))
    ds.NumberOfFrames = frames
    ds.PixelData = ds.PixelData * frames
    ds["PixelData"].VR = "OW"
    return _save(ds)


def uids_of(data: bytes) -> tuple[str, str, str]:
    """(StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID) of a Part-10 file."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID


def refiled(data: bytes, *, patient_id: str, name: str) -> bytes:
    """The same SOPInstanceUID filed under another patient, study and series: what a clinic
    sends to correct a misfiled image."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PatientID = patient_id
    ds.PatientName = name
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    return _save(ds)


def transcoded(data: bytes, transfer_syntax_uid: str) -> bytes:
    """The same instance (UIDs, patient, pixels) in another uncompressed transfer syntax."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = transfer_syntax_uid
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=transfer_syntax_uid == "1.2.840.10008.1.2",
               little_endian=True)
    return buffer.getvalue()
