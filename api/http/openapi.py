"""The OpenAPI 3 description, generated from the app itself.

Paths and path parameters come from Flask's URL map, so no route can be missing; request
bodies and query strings come from the pydantic models that validate them (``@operation``);
error bodies share one schema. A route without ``@operation`` metadata is still listed,
with its docstring's first line and the standard error responses.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

from flask import Flask, g, request
from pydantic import BaseModel, ValidationError

from api.http.errors import ApiError
from pipeline.models import MAX_ROW_ID

ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["status", "message"], "properties": {
        "status": {"type": "integer"}, "message": {"type": "string"}}}},
}
STANDARD_ERRORS = (400, 401, 403, 404, 429)
# Every authenticated request is checked against the request bounds (api/http/observability.py).
BOUND_ERRORS = (413, 414, 431)
_CONVERTERS = {"id": {"type": "integer", "minimum": 1, "maximum": MAX_ROW_ID}, "path": {"type": "string"},
               "default": {"type": "string"}, "string": {"type": "string"}}
_ARG = re.compile(r"<(?:(?P<conv>[a-z]+):)?(?P<name>\w+)>")


@dataclass(frozen=True)
class Operation:
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    headers: tuple[tuple[str, bool, str], ...] = ()  # (name, required, description)
    responses: dict[int, str] = field(default_factory=dict)
    errors: tuple[int, ...] = STANDARD_ERRORS
    public: bool = False
    body_content_type: str = "application/json"


def json_object_body() -> dict:
    """A JSON object body (empty when there is none), for views that validate by hand."""
    if not request.content_length:
        return {}
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def operation(summary: str, **spec: Any) -> Callable:
    """Describe a view and validate its JSON body / query string with pydantic models.

    The parsed models are left in ``g.body`` and ``g.query``."""
    op = Operation(summary=summary, **spec)

    def decorate(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                if op.query is not None:
                    g.query = op.query.model_validate(request.args.to_dict())
                if op.body is not None:
                    payload = request.get_json(silent=True) if request.content_length else {}
                    if payload is None:
                        raise ApiError(400, "request body must be JSON")
                    g.body = op.body.model_validate(payload)
            except ValidationError as exc:
                raise ApiError(400, _validation_message(exc)) from exc
            return view(*args, **kwargs)

        wrapper.__openapi__ = op  # type: ignore[attr-defined]
        return wrapper

    return decorate


def _path_and_params(rule: str) -> tuple[str, list[dict]]:
    params = [
        {"name": m["name"], "in": "path", "required": True,
         "schema": _CONVERTERS.get(m["conv"] or "default", {"type": "string"})}
        for m in _ARG.finditer(rule)
    ]
    return _ARG.sub(lambda m: "{" + m["name"] + "}", rule), params


def _error(code: int) -> dict:
    return {"description": "error", "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _operation_doc(view: Callable, method: str, path_params: list[dict]) -> dict:
    op: Operation | None = getattr(view, "__openapi__", None)
    summary = op.summary if op else (view.__doc__ or view.__name__).strip().splitlines()[0]
    success = {"POST": 201 if op is None else 200, "DELETE": 204}.get(method, 200)
    responses: dict[str, dict] = {}
    for code, text in ((op.responses if op and op.responses else {success: "success"}).items()):
        responses[str(code)] = {"description": text}
    codes = (*(op.errors if op else STANDARD_ERRORS), *(() if op and op.public else BOUND_ERRORS))
    for code in codes:
        responses.setdefault(str(code), _error(code))
    doc: dict[str, Any] = {"summary": summary, "operationId": f"{view.__name__}_{method.lower()}",
                           "parameters": list(path_params), "responses": responses}
    if op and op.public:
        doc["security"] = []
    if op and op.query is not None:
        schema = op.query.model_json_schema()
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            doc["parameters"].append({"name": name, "in": "query", "required": name in required,
                                      "schema": _inline(prop)})
    for name, required, description in op.headers if op else ():
        doc["parameters"].append({"name": name, "in": "header", "required": required,
                                  "description": description, "schema": {"type": "string"}})
    if op and op.body is not None:
        doc["requestBody"] = {"required": False, "content": {
            op.body_content_type: {"schema": {"$ref": f"#/components/schemas/{op.body.__name__}"}}}}
    return doc


def _inline(prop: dict) -> dict:
    # Query parameters are flat: keep type, bounds and enum, drop pydantic's titles.
    return {k: v for k, v in prop.items() if k != "title"}


def openapi_document(app: Flask, prefix: str = "/api/v1") -> dict:
    paths: dict[str, dict] = {}
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(prefix):
            continue
        view = app.view_functions[rule.endpoint]
        path, params = _path_and_params(rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}
                             | ({"HEAD"} if rule.endpoint == "files.head" else set())
                             | ({"OPTIONS"} if rule.endpoint == "files.options" else set())):
            paths.setdefault(path, {})[method.lower()] = _operation_doc(view, method, params)
            op: Operation | None = getattr(view, "__openapi__", None)
            if op and op.body is not None:
                body_schema = op.body.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(body_schema.pop("$defs", {}))
                schemas[op.body.__name__] = body_schema
    return {
        "openapi": "3.0.3",
        "info": {"title": "RelayPACS Gateway", "version": "0.1.0",
                 "description": "Clinic DICOM intake (tus 1.0.0) and PACS forwarding."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": schemas},
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
    }
