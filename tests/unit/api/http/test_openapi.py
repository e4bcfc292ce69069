"""The OpenAPI description covers every /api/v1 route and method the app serves."""

from api.http.openapi import openapi_document


def test_every_api_route_is_described(app):
    spec = openapi_document(app)
    missing = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1"):
            continue
        path = rule.rule
        for arg in rule.arguments:
            path = path.replace(f"<int:{arg}>", f"{{{arg}}}").replace(f"<path:{arg}>", f"{{{arg}}}")
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
