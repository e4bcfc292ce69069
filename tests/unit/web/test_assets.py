"""The built assets: served precompressed with a year-long immutable cache, within the upload
page's budget (JavaScript of the first load <= 100 KB gzipped), and the committed build is
what ``npm ci && npm run build`` makes from web/ (so a change to web/src cannot ship
unbuilt, and a Python install never needs Node)."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

import brotli
import pytest

from api.web import assets

ROOT = Path(__file__).resolve().parents[3]
DIST = ROOT / "api" / "web" / "static" / "dist"
BUDGET_GZIP_BYTES = 100 * 1024


def first_load_js() -> list[str]:
    return [assets.manifest()["upload.js"], *json.loads((DIST / "first-load.json").read_text())]


def test_upload_page_javascript_is_within_its_budget():
    sizes = {name: len((DIST / f"{name}.gz").read_bytes()) for name in first_load_js()}
    total = sum(sizes.values())
    assert total <= BUDGET_GZIP_BYTES, f"first-load JS {total} B gzipped > {BUDGET_GZIP_BYTES}: {sizes}"
    # The board and the phone code are not in it: they load on demand.
    assert assets.manifest()["board.js"] not in first_load_js()
    assert assets.manifest()["phone.js"] not in first_load_js()


def test_hashed_assets_are_served_precompressed_and_immutable(client):
    name = assets.manifest()["upload.js"]
    plain = (DIST / name).read_bytes()
    for encoding, decode in (("br", brotli.decompress), ("gzip", gzip.decompress)):
        answer = client.get(f"/assets/{name}", headers={"Accept-Encoding": encoding})
        assert answer.status_code == 200
        assert answer.headers["Content-Encoding"] == encoding
        directives = {d.strip() for d in answer.headers["Cache-Control"].split(",")}
        assert directives == {"public", "max-age=31536000", "immutable"}
        assert "javascript" in answer.headers["Content-Type"]
        assert decode(answer.get_data()) == plain
    identity = client.get(f"/assets/{name}")
    assert identity.get_data() == plain and "Content-Encoding" not in identity.headers
    assert client.get("/assets/upload-NOTBUILT.js").status_code == 404


def test_every_compressed_copy_matches_its_file():
    for path in DIST.iterdir():
        if path.suffix in (".gz", ".br", ".json"):
            continue
        body = path.read_bytes()
        assert gzip.decompress((DIST / f"{path.name}.gz").read_bytes()) == body
        assert brotli.decompress((DIST / f"{path.name}.br").read_bytes()) == body


def test_committed_build_is_what_npm_builds(tmp_path):
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is missing: .ci/setup.sh installs nodejs and npm")
    work = tmp_path / "repo"
    shutil.copytree(ROOT / "web", work / "web", ignore=shutil.ignore_patterns("node_modules"))
    (work / "api" / "web" / "static").mkdir(parents=True)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=work / "web", check=True,
                   capture_output=True, timeout=300)
    subprocess.run([npm, "run", "build"], cwd=work / "web", check=True, capture_output=True, timeout=300)
    built = work / "api" / "web" / "static" / "dist"
    ours = {p.name for p in DIST.iterdir() if p.suffix not in (".gz", ".br")}
    theirs = {p.name for p in built.iterdir() if p.suffix not in (".gz", ".br")}
    assert ours == theirs, "api/web/static/dist is stale: run `cd web && npm ci && npm run build`"
    for name in ours:
        assert (DIST / name).read_bytes() == (built / name).read_bytes(), name
