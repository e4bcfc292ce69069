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


def _metadata_paths(batch_id: dict) -> dict:
    """Templates, per-patient overrides, study organisation (issue 3)."""
    template_id = {"name": "template_id", "in": "path", "required": True, "schema": {"type": "integer"}}
    patient_id = {"name": "patient_id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "/api/v1/templates": {
            "post": {"summary": "Create an upload template",
                     "responses": _responses(201, 400, 401, 403, 409)},
            "get": {"summary": "List templates", "responses": _responses(200, 401)},
        },
        "/api/v1/templates/{template_id}": {
            "get": {"summary": "Read a template", "parameters": [template_id],
                    "responses": _responses(200, 401, 403, 404)},
            "patch": {"summary": "Update a template", "parameters": [template_id],
                      "responses": _responses(200, 400, 401, 403, 404, 409)},
            "delete": {"summary": "Delete a template", "parameters": [template_id],
                       "responses": _responses(204, 401, 403, 404)},
        },
        "/api/v1/batches/{batch_id}/studies": {
            "get": {"summary": "The batch's studies with detected problems", "parameters": [batch_id],
                    "responses": _responses(200, 401, 403, 404)},
        },
        "/api/v1/batches/{batch_id}/moves": {
            "post": {"summary": "Move instances or series into another study or a new one",
                     "parameters": [batch_id], "responses": _responses(200, 400, 401, 403, 404, 409)},
        },
        "/api/v1/batches/{batch_id}/patients": {
            "get": {"summary": "The batch's patients and their overrides", "parameters": [batch_id],
                    "responses": _responses(200, 401, 403, 404)},
        },
        "/api/v1/batches/{batch_id}/patients/{patient_id}": {
            "get": {"summary": "A patient's override", "parameters": [batch_id, patient_id],
                    "responses": _responses(200, 401, 403, 404)},
            "patch": {"summary": "Merge values into a patient's override (null removes one)",
                      "parameters": [batch_id, patient_id],
                      "responses": _responses(200, 400, 401, 403, 404, 409)},
        },
        "/api/v1/batches/{batch_id}/changes": {
            "get": {"summary": "Who changed what in the batch, and when", "parameters": [batch_id],
                    "responses": _responses(200, 401, 403, 404)},
        },
    }


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
            **_metadata_paths(batch_id),
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
