"""The OpenAPI 3 description of /api/v1 (routes, auth, error bodies)."""

from __future__ import annotations

ERROR = {
    "type": "object",
    "properties": {"error": {"type": "object", "properties": {
        "status": {"type": "integer"}, "message": {"type": "string"}}}},
}


def _responses(*codes: int) -> dict:
    out: dict = {}
    for code in codes:
        desc = {200: "OK", 201: "Created", 204: "No Content"}.get(code, "Error")
        body = {"description": desc}
        if code >= 400:
            body["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        out[str(code)] = body
    return out


def openapi_document() -> dict:
    batch_id = {"name": "batch_id", "in": "path", "required": True, "schema": {"type": "integer"}}
    upload_id = {"name": "upload_id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "RelayPACS Gateway", "version": "0.1.0"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": ERROR},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/batches": {
                "post": {"summary": "Open a batch", "responses": _responses(201, 400, 401, 403)},
                "get": {"summary": "List batches", "responses": _responses(200, 401)},
            },
            "/api/v1/batches/{batch_id}": {
                "get": {"summary": "Batch status: files, studies, deliveries",
                        "parameters": [batch_id], "responses": _responses(200, 401, 403, 404)},
            },
            "/api/v1/batches/{batch_id}/complete": {
                "post": {"summary": "Mark a batch complete; forwarding follows",
                         "parameters": [batch_id], "responses": _responses(200, 401, 403, 404)},
            },
            "/api/v1/files": {
                "post": {"summary": "tus creation (and creation-with-upload)",
                         "responses": _responses(201, 400, 401, 403, 404, 409, 412, 413, 460)},
                "options": {"summary": "tus discovery", "security": [],
                            "responses": _responses(204)},
            },
            "/api/v1/files/{upload_id}": {
                "head": {"summary": "tus offset", "parameters": [upload_id],
                         "responses": _responses(200, 401, 403, 404, 410)},
                "patch": {"summary": "tus append a chunk", "parameters": [upload_id],
                          "responses": _responses(204, 400, 401, 403, 404, 409, 413, 415,
                                                  423, 460)},
                "delete": {"summary": "tus termination", "parameters": [upload_id],
                           "responses": _responses(204, 401, 403, 404)},
            },
        },
    }
