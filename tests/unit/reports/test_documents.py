"""Reading report documents: an SR's content tree as text with its status from the completion
and verification flags (and amended when it names a predecessor); an Encapsulated PDF's text;
anything else refused with a reason."""

from __future__ import annotations

import pytest

from pipeline.reports.documents import UnreadableDocument, read_document, status_from_flags
from tests.report_samples import basic_text_sr, encapsulated_pdf


@pytest.mark.parametrize(("completion", "verification", "amends", "expected"), [
    ("PARTIAL", "UNVERIFIED", False, "preliminary"),
    ("PARTIAL", "VERIFIED", False, "preliminary"),
    ("COMPLETE", "UNVERIFIED", False, "preliminary"),
    ("COMPLETE", "VERIFIED", False, "final"),
    (None, None, False, "preliminary"),
    ("COMPLETE", "VERIFIED", True, "amended"),
])
def test_status_mapping(completion, verification, amends, expected):
    assert status_from_flags(completion, verification, amends) == expected


def test_sr_text_status_author_and_predecessor():
    uid, data = basic_text_sr("1.2.3.4", "No acute abnormality.")
    doc = read_document(data)
    assert doc.sop_instance_uid == uid and doc.study_instance_uid == "1.2.3.4"
    assert doc.status == "final" and doc.author == "Reader^Rita"
    assert doc.text.splitlines() == ["Diagnostic Imaging Report", "  Finding: No acute abnormality.",
                                     "  Conclusions", "    Conclusion: See findings."]
    assert doc.written_at is not None and doc.written_at.isoformat().startswith("2026-01-02T10:15:00")
    _, amending = basic_text_sr("1.2.3.4", "Small effusion.", amends=("1.2.3.4", "1.2.3.5", uid))
    second = read_document(amending)
    assert second.status == "amended" and second.predecessor_uids == [uid]


def test_pdf_text_is_read():
    _, data = encapsulated_pdf("1.2.3.4", "Impression: fracture of the left radius.")
    doc = read_document(data)
    assert doc.status == "final" and doc.content_type == "application/pdf"
    assert "fracture of the left radius" in doc.text


def test_other_objects_are_refused():
    with pytest.raises(UnreadableDocument):
        read_document(b"not dicom at all")
    from pathlib import Path

    import pydicom

    ct = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
    with pytest.raises(UnreadableDocument, match="neither"):
        read_document(ct.read_bytes())
