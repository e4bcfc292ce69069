import base64

import pytest

from pipeline.intake.tus import TusError, clean_filename, parse_checksum, parse_metadata


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def test_metadata_round_trip():
    header = f"filename {b64('CT 1.dcm')},batch_id {b64('7')},flag"
    assert parse_metadata(header) == {"filename": "CT 1.dcm", "batch_id": "7", "flag": ""}


def test_metadata_rejects_bad_base64():
    with pytest.raises(TusError) as err:
        parse_metadata("filename !!!")
    assert err.value.status == 400


@pytest.mark.parametrize("header", ["md5 AAAA", "sha1 notbase64!", "sha256 " + b64("short")])
def test_checksum_rejects_unknown_or_malformed(header):
    with pytest.raises(TusError) as err:
        parse_checksum(header)
    assert err.value.status == 400


def test_checksum_sha1_and_sha256():
    import hashlib

    for name in ("sha1", "sha256"):
        digest = getattr(hashlib, name)(b"x").digest()
        parsed = parse_checksum(f"{name} {base64.b64encode(digest).decode()}")
        assert parsed.algorithm == name and parsed.digest == digest


@pytest.mark.parametrize("raw,expected", [
    ("../../etc/passwd", "passwd"), ("C:\\x\\y.dcm", "y.dcm"), ("", "unnamed"), ("a\x00b", "ab"),
])
def test_filename_is_display_only(raw, expected):
    assert clean_filename(raw) == expected
