"""A small HTTP client for integration tests: batches, raw tus requests, polling."""

from __future__ import annotations

import base64
import time

import requests

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Gateway:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def open_batch(self, **body: object) -> int:
        response = self.http.post(f"{self.url}/api/v1/batches", json=body, timeout=10)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def complete(self, batch_id: int) -> None:
        response = self.http.post(f"{self.url}/api/v1/batches/{batch_id}/complete", timeout=10)
        assert response.status_code == 200, response.text

    def report(self, batch_id: int) -> dict:
        response = self.http.get(f"{self.url}/api/v1/batches/{batch_id}", timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def wait_state(self, batch_id: int, state: str = "done", timeout: float = 90.0) -> dict:
        deadline = time.monotonic() + timeout
        report: dict = {}
        while time.monotonic() < deadline:
            report = self.report(batch_id)
            if report["state"] == state:
                return report
            time.sleep(0.3)
        raise AssertionError(
            f"batch {batch_id} not {state} after {timeout}s: {report.get('state')} {report.get('totals')}"
        )

    def create(self, batch_id: int, length: int, name: str = "f.dcm", **headers: str):
        return self.http.post(
            f"{self.url}/api/v1/files",
            headers={
                **TUS,
                "Upload-Length": str(length),
                "Upload-Metadata": f"filename {b64(name)},batch_id {b64(str(batch_id))}",
                **headers,
            },
            timeout=10,
        )

    def patch(self, location: str, offset: int, data: bytes, **headers: str):
        return self.http.patch(
            location,
            data=data,
            headers={**TUS, "Upload-Offset": str(offset), "Content-Type": OCTET, **headers},
            timeout=30,
        )

    def head(self, location: str):
        return self.http.head(location, headers=TUS, timeout=10)

    def upload(self, batch_id: int, data: bytes, name: str = "f.dcm", chunk: int = 64 * 1024) -> str:
        response = self.create(batch_id, len(data), name)
        assert response.status_code == 201, response.text
        location = response.headers["Location"]
        for offset in range(0, len(data), chunk):
            answer = self.patch(location, offset, data[offset : offset + chunk])
            assert answer.status_code == 204, answer.text
        return location
