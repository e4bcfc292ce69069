"""Phone photos as DICOM: a JPEG or HEIC from a phone's camera becomes a VL Photographic
Image (SOP class 1.2.840.10008.5.1.4.1.1.77.1.4) in the JPEG Baseline transfer syntax.

What this module owns: the typed patient fields a photo may carry and their checks, the
rule that decides whether the camera's JPEG bytes are kept or re-encoded, the removal of
EXIF/GPS, and the Part-10 file itself. No database, no storage: bytes in, bytes out.

The rule for the bytes:
- A baseline JPEG (SOF0, 8 bits, 1 or 3 components) whose EXIF orientation is "upright"
  (1, or none) is kept AS IT IS apart from its metadata segments: every APPn segment but
  APP0 (JFIF) and APP14 (Adobe colour transform), and every COM segment, is cut out of the
  byte stream. EXIF and GPS live in APP1, XMP in APP1, IPTC in APP13, the ICC profile in
  APP2; removing segments touches no entropy-coded data, so the decoded pixels are the
  camera's exactly. The ICC profile goes to the dataset's ICC Profile attribute instead,
  where DICOM viewers look for it.
- Anything else is decoded with Pillow and re-encoded once as baseline JPEG at quality 95,
  4:2:2 chroma (what YBR_FULL_422 names): a progressive JPEG (most phone and web photos,
  SOF2), an extended or 12-bit JPEG, a HEIC (through pillow-heif), and a photo whose EXIF
  orientation says it is rotated or mirrored (rotating the pixels is the only way a PACS
  viewer shows it upright: DICOM has no orientation flag for a photo). The instance then
  says so: ImageType DERIVED, DerivationDescription, LossyImageCompressionRatio.
  Why not keep a progressive stream under another transfer syntax: the progressive JPEG
  transfer syntaxes (1.2.840.10008.1.2.4.55/.57 family) are retired, and PACSes and viewers
  are only required to read baseline; a second lossy generation at quality 95 is visually
  lossless, and the photo's original compression is lossy already (LossyImageCompression
  01 either way).
"""

from __future__ import annotations

import datetime as dt
import io
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, VLPhotographicImageStorage, generate_uid

from pipeline.dicom.attributes import MetadataError, normalise_attributes

VL_PHOTOGRAPHIC = VLPhotographicImageStorage  # 1.2.840.10008.5.1.4.1.1.77.1.4
FILETYPES = frozenset({"image/jpeg", "image/heic", "image/heif"})
REENCODE_QUALITY = 95
# Pillow's subsampling index 1 is 4:2:2.
REENCODE_SUBSAMPLING = 1
# A phone photo is a few MB; a decoded image above this many pixels is refused (Pillow's own
# decompression-bomb guard is a warning up to twice its limit).
MAX_PIXELS = 100_000_000

# Typed fields of Upload-Metadata -> the DICOM keyword each fills.
PATIENT_FIELDS: Mapping[str, str] = {
    "patient_id": "PatientID",
    "patient_name": "PatientName",
    "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex",
    "study_description": "StudyDescription",
    "accession_number": "AccessionNumber",
}
SEXES = frozenset({"M", "F", "O"})

_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD,
                          0xCE, 0xCF})
_KEPT_APP = frozenset({0xE0, 0xEE})  # JFIF and Adobe: they say how to decode the colours
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


class PhotoError(ValueError):
    """The bytes are not a photo we can take; ``reason`` is a stable quarantine code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class PhotoRequest:
    """What a photo's Upload-Metadata asked for, checked: a study to join, or typed fields."""

    filetype: str
    target_study: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"filetype": self.filetype, "target_study": self.target_study,
                "attributes": dict(self.attributes)}

    @classmethod
    def from_json(cls, data: Mapping) -> PhotoRequest:
        return cls(filetype=data["filetype"], target_study=data.get("target_study"),
                   attributes=dict(data.get("attributes") or {}))


def photo_request(metadata: Mapping[str, str], uid_pattern) -> PhotoRequest:  # noqa: ANN001
    """Check a ``kind=photo`` upload's metadata; MetadataError says what is wrong."""
    filetype = (metadata.get("filetype") or "").strip().lower()
    if filetype not in FILETYPES:
        raise MetadataError("a photo's filetype must be image/jpeg or image/heic")
    target = (metadata.get("target_study") or "").strip()
    typed = {name: metadata[name] for name in PATIENT_FIELDS if metadata.get(name, "") != ""}
    if target and typed:
        raise MetadataError("send either target_study or the patient fields, not both")
    if target:
        if len(target) > 64 or not uid_pattern.match(target):
            raise MetadataError("target_study must be a StudyInstanceUID")
        return PhotoRequest(filetype=filetype, target_study=target)
    if not typed.get("patient_id"):
        raise MetadataError("a photo needs target_study, or patient_id with the other patient fields")
    sex = typed.get("patient_sex")
    if sex is not None and sex not in SEXES:
        raise MetadataError("PatientSex: one of M, F, O")
    values = normalise_attributes({PATIENT_FIELDS[k]: v for k, v in typed.items()})
    return PhotoRequest(filetype=filetype, attributes={k: str(v) for k, v in values.items()})


@dataclass(frozen=True)
class JpegFrame:
    """Facts of a JPEG stream read from its frame header (SOF)."""

    sof: int
    precision: int
    rows: int
    columns: int
    components: int
    sampling: tuple[tuple[int, int], ...]
    adobe_transform: int | None


def _segments(data: bytes):  # noqa: ANN202 - yields (marker, start, end) up to SOS
    if data[:2] != b"\xff\xd8":
        raise PhotoError("not_a_jpeg", "the file does not start with a JPEG SOI marker")
    pos = 2
    while pos < len(data):
        if data[pos] != 0xFF:
            raise PhotoError("broken_jpeg", f"no marker at byte {pos}")
        while pos < len(data) and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= len(data):
            break
        marker = data[pos]
        start = pos - 1
        pos += 1
        if marker in _STANDALONE:
            yield marker, start, pos
            continue
        if pos + 2 > len(data):
            break
        (length,) = struct.unpack(">H", data[pos:pos + 2])
        if length < 2 or pos + length > len(data):
            raise PhotoError("broken_jpeg", f"segment FF{marker:02X} runs past the end")
        end = pos + length
        yield marker, start, end
        if marker == 0xDA:  # start of scan: entropy-coded data follows, no more headers
            return
        pos = end
    raise PhotoError("broken_jpeg", "the JPEG ends before its image data")


def read_frame(data: bytes) -> JpegFrame:
    """The frame header of a JPEG; PhotoError if there is none or it is damaged."""
    frame = None
    adobe = None
    for marker, start, end in _segments(data):
        body = data[start + 4:end]
        if marker in _SOF_MARKERS and frame is None:
            if len(body) < 6:
                raise PhotoError("broken_jpeg", "frame header too short")
            precision, rows, columns, count = struct.unpack(">BHHB", body[:6])
            if len(body) < 6 + 3 * count:
                raise PhotoError("broken_jpeg", "frame header too short for its components")
            sampling = tuple((body[7 + 3 * i] >> 4, body[7 + 3 * i] & 0x0F) for i in range(count))
            frame = (marker, precision, rows, columns, count, sampling)
        elif marker == 0xEE and body[:5] == b"Adobe" and len(body) >= 12:
            adobe = body[11]
    if frame is None:
        raise PhotoError("broken_jpeg", "no frame header before the image data")
    marker, precision, rows, columns, count, sampling = frame
    if rows == 0 or columns == 0:
        raise PhotoError("broken_jpeg", "the frame header gives no image size")
    return JpegFrame(marker, precision, rows, columns, count, sampling, adobe)


def strip_metadata(data: bytes) -> bytes:
    """The JPEG without its APPn (but JFIF and Adobe) and COM segments; the entropy-coded
    data and every table are copied byte for byte."""
    out = bytearray(b"\xff\xd8")
    last = 2
    for marker, start, end in _segments(data):
        last = end
        if (0xE0 <= marker <= 0xEF and marker not in _KEPT_APP) or marker == 0xFE:
            continue
        out += data[start:end]
    out += data[last:]
    return bytes(out)


def is_baseline(frame: JpegFrame) -> bool:
    """Encapsulable as JPEG Baseline (Process 1) as it is."""
    return (frame.sof == 0xC0 and frame.precision == 8 and frame.components in (1, 3)
            # Adobe transform 0 on three components means RGB samples, not YCbCr.
            and not (frame.components == 3 and frame.adobe_transform == 0))


@dataclass(frozen=True)
class PreparedPhoto:
    jpeg: bytes
    frame: JpegFrame
    icc_profile: bytes | None
    derivation: str | None  # None: the camera's own JPEG stream, only metadata removed
    taken_at: dt.datetime | None


def _open(data: bytes, filetype: str) -> Image.Image:
    if filetype in ("image/heic", "image/heif"):
        from pillow_heif import register_heif_opener

        register_heif_opener()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise PhotoError("photo_too_large", f"{image.width}x{image.height} pixels")
            image.load()
    except PhotoError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as exc:
        raise PhotoError("not_an_image", f"not a readable {filetype} ({type(exc).__name__})") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
        raise PhotoError("broken_image", f"{filetype} cannot be decoded ({type(exc).__name__})") from exc
    return image


_EXIF_DATETIME_ORIGINAL = 0x9003
_EXIF_IFD = 0x8769


def _taken_at(image: Image.Image) -> dt.datetime | None:
    try:
        value = image.getexif().get_ifd(_EXIF_IFD).get(_EXIF_DATETIME_ORIGINAL)
        return dt.datetime.strptime(str(value).strip("\0 "), "%Y:%m:%d %H:%M:%S") if value else None
    except (ValueError, TypeError, KeyError):
        return None


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1) or 1)
    except (ValueError, TypeError):
        return 1


def prepare(data: bytes, filetype: str) -> PreparedPhoto:
    """Baseline JPEG bytes for the photo, free of EXIF/GPS, upright (the module's rule)."""
    image = _open(data, filetype)
    icc = image.info.get("icc_profile") or None
    orientation = _orientation(image)
    taken_at = _taken_at(image)
    reasons = []
    if image.format == "JPEG":
        frame = read_frame(data)
        if is_baseline(frame) and orientation == 1:
            jpeg = strip_metadata(data)
            return PreparedPhoto(jpeg, read_frame(jpeg), icc, None, taken_at)
        if not is_baseline(frame):
            kind = {0xC2: "progressive", 0xC1: "extended sequential"}.get(frame.sof, "non-baseline")
            reasons.append(f"re-encoded from a {kind} JPEG")
    elif image.format in ("HEIF", "HEIC"):
        reasons.append("converted from HEIC")
    else:
        raise PhotoError("not_an_image", f"a {image.format} image, not JPEG or HEIC")
    if orientation != 1:
        reasons.append(f"EXIF orientation {orientation} applied to the pixels")
    upright = ImageOps.exif_transpose(image)
    mode = "L" if upright.mode in ("L", "I;16", "I", "1") else "RGB"
    out = io.BytesIO()
    # No exif= and no icc_profile= given: Pillow writes neither; progressive off is baseline.
    upright.convert(mode).save(out, "JPEG", quality=REENCODE_QUALITY,
                               subsampling=REENCODE_SUBSAMPLING, progressive=False, optimize=False)
    jpeg = out.getvalue()
    derivation = (f"{'; '.join(reasons)}; baseline JPEG quality {REENCODE_QUALITY}, "
                  "4:2:2 chroma; EXIF removed")
    return PreparedPhoto(jpeg, read_frame(jpeg), icc, derivation[:1024], taken_at)


def _srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def build_dataset(photo: PreparedPhoto, identity: Mapping[str, DataElement | str],
                  *, study_instance_uid: str | None, now: dt.datetime) -> Dataset:
    """The VL Photographic Image dataset. ``identity``: patient- and study-level keywords
    (typed values, or the target study's first instance's elements) copied as they are."""
    frame = photo.frame
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # phones type names in any script: UTF-8
    for keyword, value in identity.items():
        if isinstance(value, DataElement):
            ds.add(DataElement(value.tag, value.VR, value.value))
        elif value is not None:
            setattr(ds, keyword, value)
    sop_uid = generate_uid()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SOPClassUID = VL_PHOTOGRAPHIC
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_instance_uid or generate_uid()
    if study_instance_uid is None:
        ds.StudyDate, ds.StudyTime = date, time
        ds.StudyID = ""
        ds.ReferringPhysicianName = ""
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                    "StudyDate", "StudyTime", "StudyID", "ReferringPhysicianName"):
        if keyword not in ds:
            setattr(ds, keyword, "")  # Type 2: present, may be empty
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "XC"  # External-camera photography
    ds.SeriesNumber = 9001
    ds.SeriesDescription = "Photo"
    ds.InstanceNumber = 1
    ds.SeriesDate, ds.SeriesTime = date, time
    taken = photo.taken_at or now
    ds.ContentDate, ds.ContentTime = taken.strftime("%Y%m%d"), taken.strftime("%H%M%S")
    ds.AcquisitionDateTime = taken.strftime("%Y%m%d%H%M%S")
    ds.Manufacturer = ""
    ds.PatientOrientation = ""
    ds.ImageType = ["DERIVED" if photo.derivation else "ORIGINAL", "PRIMARY"]
    if photo.derivation:
        ds.DerivationDescription = photo.derivation
    ds.BurnedInAnnotation = "NO"
    ds.AcquisitionContextSequence = []
    ds.AnatomicRegionSequence = []
    ds.Rows, ds.Columns = frame.rows, frame.columns
    ds.SamplesPerPixel = frame.components
    # A lossy JPEG of YCbCr colour is YBR_FULL_422 in DICOM (the only YCbCr value the VL
    # Photographic IOD admits for JPEG Baseline); grey is MONOCHROME2.
    ds.PhotometricInterpretation = "YBR_FULL_422" if frame.components == 3 else "MONOCHROME2"
    if frame.components == 3:
        ds.PlanarConfiguration = 0
        # The camera's profile when it gave one; otherwise sRGB, what phones shoot in.
        ds.ICCProfile = photo.icc_profile or _srgb_profile()
        if not photo.icc_profile:
            ds.ColorSpace = "SRGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    raw = frame.rows * frame.columns * frame.components
    ds.LossyImageCompressionRatio = f"{raw / len(photo.jpeg):.4g}"[:16]
    ds.PixelData = encapsulate([photo.jpeg])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = VL_PHOTOGRAPHIC
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.file_meta = meta
    return ds


def to_part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def photo_to_dicom(data: bytes, request: PhotoRequest,
                   identity: Mapping[str, DataElement | str] | None = None,
                   *, now: dt.datetime | None = None) -> bytes:
    """A photo's bytes as a Part-10 VL Photographic Image; PhotoError when they are not a
    JPEG/HEIC photo. ``identity``: the target study's patient and study elements (with
    ``request.target_study``), else the request's typed attributes are used."""
    prepared = prepare(data, request.filetype)
    now = now or dt.datetime.now()
    values: Mapping[str, DataElement | str] = identity if identity is not None else request.attributes
    ds = build_dataset(prepared, values, study_instance_uid=request.target_study, now=now)
    return to_part10(ds)
