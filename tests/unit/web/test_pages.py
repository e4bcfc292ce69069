"""The upload and capture pages: signed in as an uploader or admin, never cached, the CSRF
token in the page (no token for the browser's storage), assets by content-hashed URL (or a
CDN's), the manifest and a service worker that caches the shell only."""

from __future__ import annotations

import json
import re

import pytest

from api.web import assets
from config import load_settings


@pytest.fixture
def uploader_client(client, make_token, sign_in):
    assert sign_in(client, make_token("Clinic A", "uploader")).status_code == 302
    return client


@pytest.mark.parametrize("path", ["/upload", "/capture"])
def test_pages_need_sign_in_and_the_uploader_role(client, make_token, sign_in, path):
    answer = client.get(path)
    assert answer.status_code == 302 and "/login?next=" in answer.headers["Location"]
    assert sign_in(client, make_token("Clinic A", "qa_manager")).status_code == 302
    assert client.get(path).status_code == 403


@pytest.mark.parametrize("path", ["/upload", "/capture"])
def test_page_has_its_csrf_token_hashed_assets_and_is_never_cached(uploader_client, path):
    answer = uploader_client.get(path)
    assert answer.status_code == 200
    assert answer.headers["Cache-Control"] == "no-store"
    html = answer.get_data(as_text=True)
    assert re.search(r'<meta name="csrf-token" content="[^"]{20,}">', html)
    names = assets.manifest()
    assert f'src="/assets/{names["upload.js"]}"' in html
    assert f'href="/assets/{names["upload.css"]}"' in html
    assert "localStorage" not in html and "Bearer" not in html


def test_asset_base_url_puts_assets_behind_a_cdn(tmp_path, make_token):
    from api import create_app
    from pipeline.db.migrate import upgrade_database

    settings = load_settings({"RELAYPACS_VAR_DIR": str(tmp_path / "cdn"), "RELAYPACS_BROKER_URL": "memory://",
                              "RELAYPACS_ASSET_BASE_URL": "https://cdn.example/relaypacs/"})
    upgrade_database(settings.database_url)
    app = create_app(settings)
    client = app.test_client()
    from pipeline.accounts import passwords
    from pipeline.accounts.users import create_user
    session = app.extensions["relaypacs"].session_factory()
    user, _ = create_user(session, "u@cdn.test", "Clinic A", "uploader")
    user.password_hash = passwords.hash_password("correct horse battery")
    session.commit()
    session.close()
    form = {"email": "u@cdn.test", "password": "correct horse battery"}
    assert client.post("/login", data=form).status_code == 302
    html = client.get("/upload").get_data(as_text=True)
    assert f'src="https://cdn.example/relaypacs/{assets.manifest()["upload.js"]}"' in html


def test_manifest_and_service_worker_cache_the_shell_only(client):
    manifest = client.get("/manifest.webmanifest")
    assert manifest.status_code == 200 and manifest.mimetype == "application/manifest+json"
    body = json.loads(manifest.get_data(as_text=True))
    assert body["display"] == "standalone" and body["start_url"] == "/capture"
    worker = client.get("/sw.js")
    assert worker.status_code == 200 and worker.headers["Cache-Control"] == "no-cache"
    script = worker.get_data(as_text=True)
    shell = json.loads(re.search(r"const SHELL = (\[.*?\]);", script).group(1))
    assert shell and all(url.startswith("/assets/") for url in shell)
    assert all(assets.is_hashed(url) for url in shell)
    # It answers from its cache only for those URLs: pages and /api always go to the network.
    assert 'SHELL.some((url) => request.url.endsWith(url))' in script
