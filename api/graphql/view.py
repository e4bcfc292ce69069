"""``POST /api/v1/graphql``: the read-only GraphQL endpoint.

Authentication and roles are the REST API's (``require``: a bearer token, or the sign-in
session with its CSRF token); the caller's facility becomes the ``Scope`` every loader
filters on. Bounds before any parsing: the body (64 KiB) and the query text; then the
schema's depth, alias and token limits. A query refused by them, a circular fragment or a
syntax error answers GraphQL ``errors`` with null data; an unexpected failure inside a resolver
is logged and shown as "internal error", never a stack trace or a 500.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request
from graphql import GraphQLError
from pydantic import BaseModel, ConfigDict, Field

from api.graphql import data
from api.graphql.schema import Context, Loaders, NotFound, make_schema
from api.http.auth import current_user, require
from api.http.context import db, resources
from api.http.errors import ApiError
from api.http.openapi import STANDARD_ERRORS, operation
from pipeline.accounts.scoping import readable_facility_ids

log = logging.getLogger(__name__)
blueprint = Blueprint("graphql", __name__)

MAX_BODY_BYTES = 64 * 1024
MAX_QUERY_CHARS = 16 * 1024


class GraphQLRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(..., min_length=1, max_length=MAX_QUERY_CHARS,
                       description="a GraphQL query (read-only: no mutations exist)")
    variables: dict[str, Any] | None = None
    operationName: str | None = Field(None, max_length=200)  # noqa: N815 - the GraphQL-over-HTTP name


def _schema():  # noqa: ANN202
    schema = current_app.extensions.get("relaypacs.graphql")
    if schema is None:
        schema = current_app.extensions["relaypacs.graphql"] = make_schema(
            introspection=resources().settings.graphql_introspection)
    return schema


def _bound_body() -> None:
    # Before the JSON is parsed (operation() parses it): a GraphQL query has no reason to be big.
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise ApiError(413, f"GraphQL request body over {MAX_BODY_BYTES} bytes")


def _error(error: GraphQLError) -> dict:
    original = error.original_error
    if original is not None and not isinstance(original, NotFound | GraphQLError):
        log.warning("graphql resolver failed: %s", type(original).__name__)
        return {"message": "internal error", "path": error.path, "extensions": {"code": "INTERNAL"}}
    formatted = error.formatted
    if isinstance(original, NotFound):
        formatted["extensions"] = original.extensions
    return formatted


@blueprint.route("", methods=["POST"])
@require()
@operation("GraphQL, read-only: batches, uploads, studies, deliveries and the dashboard in one request",
           body=GraphQLRequest, responses={200: "GraphQL result (data, errors)"},
           errors=(*STANDARD_ERRORS, 413))
def graphql():  # noqa: ANN201
    _bound_body()
    body: GraphQLRequest = g.body
    user = current_user()
    session = db()
    scope = data.Scope(user_id=user.id, facility_ids=readable_facility_ids(session, user))
    # New loaders for every request: a DataLoader's cache must never serve another caller.
    context = Context(session=session, scope=scope, user=user, loaders=Loaders(session, scope))
    result = asyncio.run(_schema().execute(body.query, variable_values=body.variables,
                                           context_value=context, operation_name=body.operationName))
    payload: dict[str, Any] = {"data": result.data}
    if result.errors:
        payload["errors"] = [_error(e) for e in result.errors]
    # 200 with ``errors`` (and null data when the query was refused: syntax, limits,
    # validation), as GraphQL over HTTP answers application/json; 4xx are the HTTP layer's.
    return jsonify(payload)
