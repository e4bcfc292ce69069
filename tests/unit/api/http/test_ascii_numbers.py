"""Numbers in headers, metadata and paths are ASCII digits only: Python's int() also takes
'²', '٣' or full-width digits, which used to reach int() and answer 500."""

from __future__ import annotations

import base64

import pytest

NON_ASCII_DIGITS = ["²", "١٢", "１２", "1²", "٣"]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def auth(client, make_token):
    return {"Authorization": f"Bearer {make_token('Clinic A')}"}


@pytest.fixture
def batch_id(client, auth):
    return client.post("/api/v1/batches", json={}, headers=auth).get_json()["id"]


def _tus(auth, **headers):
    return {**auth, "Tus-Resumable": "1.0.0", **headers}


@pytest.mark.parametrize("value", NON_ASCII_DIGITS)
def test_upload_length_with_non_ascii_digits_is_400(client, auth, batch_id, value):
    response = client.post("/api/v1/files", headers=_tus(
        auth, **{"Upload-Length": value, "Upload-Metadata": f"batch_id {b64(str(batch_id))}"}))
    assert response.status_code == 400, response.data
    assert "Upload-Length" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("value", NON_ASCII_DIGITS)
def test_batch_id_metadata_with_non_ascii_digits_is_400(client, auth, value):
    response = client.post("/api/v1/files", headers=_tus(
        auth, **{"Upload-Length": "10", "Upload-Metadata": f"batch_id {b64(value)}"}))
    assert response.status_code == 400, response.data


@pytest.mark.parametrize("value", NON_ASCII_DIGITS)
def test_upload_offset_with_non_ascii_digits_is_400(client, auth, batch_id, enqueued, value):
    created = client.post("/api/v1/files", headers=_tus(
        auth, **{"Upload-Length": "10", "Upload-Metadata": f"batch_id {b64(str(batch_id))}"}))
    location = created.headers["Location"]
    response = client.patch(location, data=b"x", headers=_tus(
        auth, **{"Upload-Offset": value, "Content-Type": "application/offset+octet-stream"}))
    assert response.status_code == 400, response.data
    assert "Upload-Offset" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("path", ["/api/v1/batches/{}", "/api/v1/batches/{}/changes",
                                  "/api/v1/templates/{}", "/api/v1/exports/{}"])
@pytest.mark.parametrize("value", NON_ASCII_DIGITS)
def test_path_ids_with_non_ascii_digits_are_404_json(client, auth, path, value):
    response = client.get(path.format(value), headers=auth)
    assert response.status_code in (400, 403, 404), response.data
    assert response.get_json()["error"]["status"] == response.status_code


@pytest.mark.parametrize("value", ["²", "١٢"])
def test_forecast_facility_with_non_ascii_digits_is_400(client, make_token, value):
    admin = {"Authorization": f"Bearer {make_token('Clinic A', 'admin')}"}
    response = client.get("/api/v1/forecasts", query_string={"facility": value}, headers=admin)
    assert response.status_code == 400, response.data
