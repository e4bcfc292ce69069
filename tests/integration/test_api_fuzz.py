"""Fuzzing the running API with schemathesis, from the OpenAPI description the app itself
generates: with a token, without one, and with another facility's token. No 5xx, no
response that breaks its own schema, nothing of one facility visible to another.

A bounded number of examples per operation runs here; `make bench` runs a larger sweep.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api import create_app
from api.http.openapi import openapi_document
from config import load_settings
from tests.integration.gateway_client import Gateway
from tests.sample_data import synthetic_study

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("RELAYPACS_FUZZ_EXAMPLES", "10"))

# The description is generated in-process from the same code the server runs.
_scratch = tempfile.mkdtemp(prefix="relaypacs-fuzz-")
SCHEMA = schemathesis.openapi.from_dict(openapi_document(create_app(load_settings({
    "RELAYPACS_VAR_DIR": _scratch, "RELAYPACS_BROKER_URL": "memory://"}))))


class Target:
    def __init__(self, url: str, tokens: dict[str, str], batch_id: int, upload_url: str,
                 facility_id: int) -> None:
        self.url = url
        self.facility_id = facility_id
        self.tokens = tokens
        self.batch_id = batch_id
        self.upload_url = upload_url


@pytest.fixture(scope="module")
def target(api_server, make_user, worker_fleet) -> Target:
    worker_fleet.default()
    tokens = {
        "owner": make_user("Fuzz Clinic A", "uploader"),
        "admin_like_qa": make_user("Fuzz Clinic A", "qa_manager"),
        "other": make_user("Fuzz Clinic B", "uploader"),
    }
    gateway = Gateway(api_server.url, tokens["owner"])
    batch_id = gateway.open_batch(label="fuzz target")
    upload_url = gateway.upload(batch_id, synthetic_study(1)[0], "fuzz.dcm")
    facility_id = gateway.report(batch_id)["facility_id"]
    return Target(api_server.url, tokens, batch_id, upload_url, facility_id)


FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
# Unknown query parameters are ignored, as most APIs do, so "negative data" checks that
# expect them rejected are not part of the contract.
CHECKS = (not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance)


def _call(case, target: Target, token: str | None):  # noqa: ANN001, ANN202
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return case.call(base_url=target.url, headers=headers, timeout=30)


def _ours(target: Target) -> dict[str, str]:
    """Facility A's ids, by the path parameter names the routes use."""
    return {"batch_id": str(target.batch_id), "upload_id": target.upload_url.rsplit("/", 1)[1]}


def aim_at_ours(case, target: Target) -> list[str]:  # noqa: ANN001
    """Point the case's batch and upload path parameters at facility A's; the names aimed."""
    ours = _ours(target)
    aimed = [name for name in case.path_parameters or {} if name in ours]
    for name in aimed:
        case.path_parameters[name] = ours[name]
    return aimed


def _markers(target: Target) -> tuple[str, ...]:
    return ("Fuzz Clinic A", "fuzz target", _ours(target)["upload_id"])


# Runs before the owner's own sweep (pytest keeps file order), so what it finds unchanged
# afterwards is what facility B's requests left.
@SCHEMA.parametrize()
@FUZZ
def test_fuzz_with_other_facility_token(case, target):  # noqa: ANN001
    """Every route and method with facility B's token, aimed at facility A's batch and upload
    wherever the path names one: never a 5xx, never a success on A's ids, never A's data."""
    aimed = aim_at_ours(case, target)
    response = _call(case, target, target.tokens["other"])
    assert response.status_code < 500, (case.method, case.path, response.status_code)
    if aimed and case.method.upper() != "OPTIONS":
        assert not 200 <= response.status_code < 300, (case.method, case.path, response.status_code)
    leaked = [marker for marker in _markers(target) if marker in response.text]
    assert leaked == [], (case.method, case.path, leaked)
    assert not _names_facility(response.json, target.facility_id), (case.method, case.path)


def test_other_facility_changed_nothing_of_ours(target):
    owner = Gateway(target.url, target.tokens["owner"])
    batch = owner.http.get(f"{target.url}/api/v1/batches/{target.batch_id}", timeout=10)
    assert batch.status_code == 200
    assert batch.json()["label"] == "fuzz target" and batch.json()["state"] == "open"
    head = owner.http.head(target.upload_url, headers={"Tus-Resumable": "1.0.0"}, timeout=10)
    assert head.status_code == 200 and head.headers["Upload-Offset"] == head.headers["Upload-Length"]


@SCHEMA.parametrize()
@FUZZ
def test_fuzz_with_token(case, target):  # noqa: ANN001
    response = _call(case, target, target.tokens["owner"])
    case.validate_response(response, checks=CHECKS)


@SCHEMA.parametrize()
@FUZZ
def test_fuzz_without_token_is_401(case, target):  # noqa: ANN001
    response = _call(case, target, None)
    assert response.status_code < 500
    # Operations documented as public (``security: []``: the password-reset request, which a
    # person who cannot sign in must reach) answer without a token; every other one refuses.
    public = case.operation.definition.raw.get("security") == []
    if case.method.upper() != "OPTIONS" and not public:
        assert response.status_code in (401, 404, 405), (case.method, case.path, response.status_code)


def _fill(path: str, target: Target) -> str:
    values = _ours(target)
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m[1], "1"), path)


def test_other_facility_sees_nothing_of_ours(target):
    """Every route, filled with facility A's ids, called with facility B's token."""
    other = {"Authorization": f"Bearer {target.tokens['other']}", "Tus-Resumable": "1.0.0"}
    leaked = []
    for path, methods in SCHEMA.raw_schema["paths"].items():
        for method in methods:
            if method in ("options", "delete", "patch", "post", "put"):
                continue  # reads only: writes are covered with 403 in the unit tests
            url = target.url + _fill(path, target)
            response = requests.request(method.upper(), url, headers=other, timeout=30)
            assert response.status_code < 500, (method, path)
            if response.ok and (_names_facility(response.json, target.facility_id) or any(
                    marker in response.text for marker in _markers(target))):
                leaked.append((method, path))
    assert leaked == []


def test_graphql_with_other_facility_token_sees_nothing_of_ours(target, make_user):
    """The GraphQL endpoint (one POST operation, fuzzed above with random bodies) asked for
    facility A's batch and upload by facility B: not found, as for a missing id, and no trace
    of A in the answer or in B's own lists. Another user of facility B: the fuzz sweep above
    used up the first one's per-user read limit for the minute (429)."""
    other = {"Authorization": f"Bearer {make_user('Fuzz Clinic B', 'uploader')}"}
    query = ("query($b: Int!, $u: String!) { batch(id: $b) { id label } upload(id: $u) { id } "
             "batches(limit: 50) { id facility_id } dashboard { uploads { id } batches { id } } }")
    answer = requests.post(f"{target.url}/api/v1/graphql", headers=other, timeout=30, json={
        "query": query, "variables": {"b": target.batch_id, "u": _ours(target)["upload_id"]}})
    assert answer.status_code == 200
    body = answer.json()
    assert {e["extensions"]["code"] for e in body["errors"]} == {"NOT_FOUND"}
    found = json.dumps(body["data"])  # the errors echo the ids asked for, nothing else
    assert not any(marker in found for marker in _markers(target))
    assert not _names_facility(lambda: body["data"], target.facility_id)


def _names_facility(body: Callable[[], Any], facility_id: int) -> bool:
    """Whether any object in a JSON answer belongs to the given facility."""
    try:
        stack = [body()]
    except ValueError:
        return False
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("facility_id") == facility_id:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
