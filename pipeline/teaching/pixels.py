"""Pixel data of teaching instances: which ones may carry burned-in text (held until a person
confirms them clean or masks regions), masking rectangles (the Clean Pixel Data option), and
the key image rendered as a PNG with the instance's own window.

Header de-identification cannot see text drawn into the pixels: ultrasound, secondary and
screen captures, and other images of the modalities where it is common, wait for a person.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian

# Ultrasound, secondary capture, external-camera photography, "other": text in the pixels
# is common in all of them.
BURNED_IN_MODALITIES = frozenset({"US", "SC", "XC", "OT"})
_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


def burned_in_reason(ds: Dataset) -> str | None:
    """Why this instance must wait for a person, or None when it need not."""
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        return "BurnedInAnnotation is YES"
    modality = str(ds.get("Modality", "")).upper()
    if modality in BURNED_IN_MODALITIES:
        return f"modality {modality}: text burned into the pixels is common"
    if str(ds.get("SOPClassUID", "")).startswith(_SECONDARY_CAPTURE_PREFIX):
        return "a secondary or screen capture"
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "SCREEN" in " ".join(image_type) or str(ds.get("ConversionType", "")).upper() == "WSD":
        return "a screen capture"
    return None


@dataclass(frozen=True)
class Rect:
    """A rectangle in pixel coordinates: left, top, width, height."""

    x: int
    y: int
    width: int
    height: int

    def valid_for(self, rows: int, columns: int) -> bool:
        return (
            self.width > 0
            and self.height > 0
            and 0 <= self.x < columns
            and 0 <= self.y < rows
        )


def mask_regions(ds: Dataset, regions: list[Rect]) -> None:
    """Black out ``regions`` in every frame (decompressing first), in place."""
    rows, columns = int(ds.Rows), int(ds.Columns)
    for rect in regions:
        if not rect.valid_for(rows, columns):
            raise ValueError(f"region {rect} is outside the {columns}x{rows} image")
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    pixels = ds.pixel_array.copy()
    frames = int(ds.get("NumberOfFrames") or 1)
    samples = int(ds.get("SamplesPerPixel") or 1)
    for rect in regions:
        ys = slice(rect.y, min(rows, rect.y + rect.height))
        xs = slice(rect.x, min(columns, rect.x + rect.width))
        if frames > 1:
            pixels[:, ys, xs, ...] = pixels.min()
        else:
            pixels[ys, xs, ...] = pixels.min()
    if samples > 1 and ds.get("PlanarConfiguration", 0) == 1:
        ds.PlanarConfiguration = 0
    ds.PixelData = pixels.tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.BurnedInAnnotation = "NO"


def render_png(ds: Dataset, *, frame: int = 0, max_size: int = 1024) -> bytes:
    """The key image: one frame as PNG, through the modality LUT and the instance's own
    window (VOI LUT or Window Center/Width; the full range when there is none)."""
    pixels = ds.pixel_array
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        pixels = pixels[min(frame, frames - 1)]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric.startswith("MONOCHROME"):
        values = apply_modality_lut(pixels, ds)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            values = apply_voi_lut(values, ds, index=0)
        values = values.astype(np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
        image8 = scaled.astype(np.uint8)
        if photometric == "MONOCHROME1":
            image8 = 255 - image8
        image = Image.fromarray(image8, mode="L")
    else:
        if photometric.startswith("YBR"):
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, photometric, "RGB")
        if pixels.dtype != np.uint8:
            top = float(pixels.max()) or 1.0
            pixels = (pixels.astype(np.float64) / top * 255.0).astype(np.uint8)
        if pixels.ndim == 2:
            image = Image.fromarray(pixels, mode="L")
        else:
            image = Image.fromarray(pixels[..., :3], mode="RGB")
    image.thumbnail((max_size, max_size))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
