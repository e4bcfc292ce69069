"""The OpenAPI description covers every /api/v1 route and method the app serves."""

from werkzeug.routing.converters import NumberConverter

from api.http.openapi import openapi_document
from pipeline.models import MAX_ROW_ID


def test_every_api_route_is_described(app):
    spec = openapi_document(app)
    missing = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1"):
            continue
        path = rule.rule
        for arg in rule.arguments:
            for converter in ("id", "path"):
                path = path.replace(f"<{converter}:{arg}>", f"{{{arg}}}")
            path = path.replace(f"<{arg}>", f"{{{arg}}}")
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            if method.lower() not in spec["paths"].get(path, {}):
                missing.append(f"{method} {path}")
    assert missing == []


def test_bodies_are_described_by_the_models_that_validate_them(app):
    spec = openapi_document(app)
    create = spec["paths"]["/api/v1/batches"]["post"]
    ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert set(schema["properties"]) == {"label", "template", "overrides", "hold"}
    assert schema["additionalProperties"] is False
    assert "401" in create["responses"] and "Error" in spec["components"]["schemas"]


def test_tus_headers_are_described(app):
    patch = openapi_document(app)["paths"]["/api/v1/files/{upload_id}"]["patch"]
    names = {p["name"] for p in patch["parameters"]}
    assert {"Tus-Resumable", "Upload-Offset", "Upload-Checksum", "upload_id"} <= names
    assert {"409", "460", "413"} <= set(patch["responses"])


def test_row_ids_in_paths_are_bounded_by_the_routing_and_described_so(app, make_token):
    """A path id is a row id (1 to PostgreSQL's integer maximum) in the URL map itself: no
    view sees one outside it, and the description says the bounds."""
    unbounded = []
    for rule in app.url_map.iter_rules():
        for arg, converter in rule._converters.items():
            if isinstance(converter, NumberConverter) and (converter.min, converter.max) != (1, MAX_ROW_ID):
                unbounded.append(f"{rule.rule} {arg}")
    assert unbounded == []
    spec = openapi_document(app)
    schemas = [p["schema"] for ops in spec["paths"].values() for op in ops.values()
               for p in op.get("parameters", []) if p["in"] == "path" and p["schema"]["type"] == "integer"]
    assert len(schemas) > 40
    assert all(s == {"type": "integer", "minimum": 1, "maximum": MAX_ROW_ID} for s in schemas)
    auth = {"Authorization": f"Bearer {make_token('Clinic A')}"}
    client = app.test_client()
    for path in ("/api/v1/batches/{}", "/api/v1/reports/{}", "/api/v1/exports/{}",
                 "/api/v1/teaching/cases/{}"):
        for bad in (0, MAX_ROW_ID + 1):
            response = client.get(path.format(bad), headers=auth)
            assert response.status_code == 404 and response.get_json()["error"]["status"] == 404, path
    # A method whose rule shares the path with another method's still says 404, not 405.
    response = client.patch(f"/api/v1/batches/{MAX_ROW_ID + 1}/patients/P1", headers=auth, json={})
    assert response.status_code == 404
