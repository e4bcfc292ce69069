"""A person's notifications at /api/v1/notifications, and their mail preference.

``GET  /[?unread=1]``                  newest first (the caller's own only)
``POST /read``                         mark read: body ``{"ids": [...]}`` or ``{"all": true}``
``GET|PUT /preferences``               mail: ``each``, ``daily`` (digest) or ``none``
``GET /unsubscribe?token=KEY``         the mails' link: a page whose button confirms
``POST /unsubscribe?token=KEY``        mail off (no sign-in: the key is the proof; RFC 8058 one-click)
"""

from __future__ import annotations

from typing import Annotated

from flask import Blueprint, Response, g, jsonify, request
from pydantic import BaseModel, ConfigDict, Field

from api.http.auth import actor, current_user, require
from api.http.context import db
from api.http.errors import ApiError
from api.http.openapi import operation
from pipeline.accounts import audit
from pipeline.models import MAX_ROW_ID, Notification, Role
from pipeline.reports import notifications
from pipeline.reports.notices import MailMode

blueprint = Blueprint("notifications", __name__)


class ListQuery(BaseModel):
    unread: bool = False
    limit: int = Field(100, ge=1, le=500)


class ReadBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    ids: list[Annotated[int, Field(strict=True, ge=1, le=MAX_ROW_ID)]] = Field(default_factory=list,
                                                                           max_length=1000)
    everything: bool = Field(False, alias="all")


class PreferenceBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: MailMode


def notification_json(row: Notification) -> dict:
    return {"id": row.id, "kind": row.kind, "report_id": row.report_id,
            "comment_id": row.comment_id, "consult_id": row.consult_id,
            "created_at": row.created_at.isoformat(),
            "read_at": row.read_at.isoformat() if row.read_at else None}


@blueprint.route("", methods=["GET"])
@require(*Role)
@operation("My notifications, newest first (unread=1: only unread)", query=ListQuery)
def list_notifications():  # noqa: ANN201
    rows = notifications.listing(db(), current_user().id, only_unread=g.query.unread,
                                 limit=g.query.limit)
    return jsonify({"notifications": [notification_json(r) for r in rows]})


@blueprint.route("/read", methods=["POST"])
@require(*Role)
@operation("Mark my notifications read (ids, or all)", body=ReadBody)
def mark_read():  # noqa: ANN201
    body: ReadBody = g.body
    if not body.ids and not body.everything:
        raise ApiError(400, "name the notifications (ids) or send all: true")
    session = db()
    changed = notifications.mark_read(session, current_user().id, None if body.everything else body.ids)
    session.commit()
    return jsonify({"marked": changed})


@blueprint.route("/preferences", methods=["GET"])
@require(*Role)
@operation("My mail preference for notifications")
def get_preference():  # noqa: ANN201
    session = db()
    row = notifications.preference(session, current_user().id)
    session.commit()
    return jsonify({"mode": row.mode})


@blueprint.route("/preferences", methods=["PUT"])
@require(*Role)
@operation("Set my mail preference: each, daily or none", body=PreferenceBody)
def put_preference():  # noqa: ANN201
    session = db()
    row = notifications.set_mode(session, current_user().id, g.body.mode.value)
    audit.record(session, actor(), "notifications.mail_preference", target=f"user:{row.user_id}",
                 detail={"mode": row.mode})
    session.commit()
    return jsonify({"mode": row.mode})


@blueprint.route("/unsubscribe", methods=["GET"])
@operation("The unsubscribe link's page: a button that confirms (link scanners only GET)",
           public=True)
def unsubscribe_page():  # noqa: ANN201
    if not request.args.get("token"):
        raise ApiError(400, "missing token: use the link from the mail")
    page = ("<!doctype html><title>RelayPACS notification mail</title>"
            "<form method=post action=''><p>Stop RelayPACS notification mails?</p>"
            "<button>Stop the mails</button></form>")
    return Response(page, mimetype="text/html")


@blueprint.route("/unsubscribe", methods=["POST"])
@operation("Stop notification mails (RFC 8058 one-click, or the page's button)", public=True)
def unsubscribe():  # noqa: ANN201
    key = (request.args.get("token") or "")[:100]
    session = db()
    row = notifications.unsubscribe(session, key) if key else None
    if row is None:
        raise ApiError(404, "unknown unsubscribe link")
    audit.record(session, audit.Actor(user_id=row.user_id, facility_id=None,
                                      remote_addr=(request.remote_addr or "")[:64] or None),
                 "notifications.unsubscribed", target=f"user:{row.user_id}")
    session.commit()
    return jsonify({"mode": row.mode, "message": "notification mails are off"})
