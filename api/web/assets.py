"""The built assets: content-hashed files in static/dist (made by ``npm run build`` in web/,
committed), named in its manifest.json, served under /assets/ by WhiteNoise with their brotli
and gzip copies and ``Cache-Control: public, max-age=31536000, immutable``, or from a CDN
when RELAYPACS_ASSET_BASE_URL is set. A hashed name changes whenever the content does, so a
year-long cache is safe; the HTML that names them is never cached long.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

from flask import Flask
from whitenoise import WhiteNoise

DIST = Path(__file__).resolve().parent / "static" / "dist"
PREFIX = "/assets/"
ONE_YEAR = 31_536_000
# esbuild's [hash]: 8 characters of base32 before the extension (upload-4XQ2B7LM.js).
_HASHED = re.compile(r"-[A-Z0-9]{8}\.(js|css|png|svg|webmanifest)$")


@cache
def manifest() -> dict[str, str]:
    """Entry name (upload.js) -> hashed file name (upload-4XQ2B7LM.js)."""
    return json.loads((DIST / "manifest.json").read_text())


@cache
def first_load() -> list[str]:
    """The shared chunks the upload page imports at once: preloaded with the page (one round
    trip less on a slow link) and counted by the size budget."""
    return json.loads((DIST / "first-load.json").read_text())


def asset_url(base_url: str, name: str) -> str:
    hashed = manifest()[name]
    if base_url:
        return base_url.rstrip("/") + "/" + hashed
    return PREFIX + hashed


def is_hashed(url: str) -> bool:
    return bool(_HASHED.search(url))


class AssetServer(WhiteNoise):
    """WhiteNoise with a year (the longest cache lifetime HTTP caches are asked to honour)
    instead of its ten for immutable files."""

    FOREVER = ONE_YEAR


def serve(app: Flask) -> None:
    """/assets/ answered by WhiteNoise before Flask: precompressed copies chosen by
    Accept-Encoding, hashed names cached for a year and marked immutable."""
    app.wsgi_app = AssetServer(  # type: ignore[method-assign]
        app.wsgi_app, root=str(DIST), prefix=PREFIX, max_age=ONE_YEAR,
        immutable_file_test=lambda _path, url: is_hashed(url), allow_all_origins=True,
    )
