"""A report's comment thread at /api/v1/reports/ID/comments.

``GET  /ID/comments[?history=1]``            the thread (newest version of each comment; all versions)
``POST /ID/comments``                         add one (body: text, optional recipients: user ids)
``POST /ID/comments/KEY/versions``            correct one: a new version (its author only)

Readable by the report's facility and the readers assigned to it; another facility's
report answers 404, as if it did not exist. After the commit: ``comment.created`` and one
``notification.created`` per recipient on the event stream, and the mails on the exports
queue.
"""

from __future__ import annotations

from typing import Annotated

from flask import Blueprint, g, jsonify
from pydantic import BaseModel, ConfigDict, Field

from api.events import publish
from api.http.auth import actor, current_user, require
from api.http.context import db
from api.http.errors import ApiError
from api.http.openapi import operation
from api.reports.access import load_report
from pipeline.accounts import audit
from pipeline.models import MAX_ROW_ID, ReportComment, Role
from pipeline.reports import threads
from workers import chains


class CommentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=4000)
    recipients: list[Annotated[int, Field(strict=True, ge=1, le=MAX_ROW_ID)]] | None = Field(
        None, max_length=threads.MAX_RECIPIENTS)


class CorrectionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=4000)


class ThreadQuery(BaseModel):
    history: bool = False


blueprint = Blueprint("report_comments", __name__)
# Who may open a thread at all; who may write is pipeline.reports.threads.WRITERS.
PARTIES = (Role.CLINICIAN, Role.RADIOLOGIST, Role.CONSULTANT, Role.ADMIN)


def comment_json(comment: ReportComment) -> dict:
    return {"id": comment.id, "key": comment.thread_key, "version": comment.version,
            "report_id": comment.report_id, "author_id": comment.author_id, "text": comment.text,
            "recipients": comment.recipients or [], "created_at": comment.created_at.isoformat()}


def _errors(exc: Exception) -> ApiError:
    if isinstance(exc, threads.ThreadForbidden | PermissionError):
        return ApiError(403, str(exc))
    if isinstance(exc, LookupError):
        return ApiError(404, str(exc))
    return ApiError(400, str(exc))


@blueprint.route("/<id:report_id>/comments", methods=["GET"])
@require(*PARTIES)
@operation("A report's comment thread", query=ThreadQuery)
def list_comments(report_id: int):  # noqa: ANN201
    report = load_report(report_id)
    rows = threads.thread(db(), report.id, history=g.query.history)
    return jsonify({"report_id": report.id, "comments": [comment_json(c) for c in rows]})


@blueprint.route("/<id:report_id>/comments", methods=["POST"])
@require(*PARTIES)
@operation("Add a comment to a report's thread", body=CommentBody, responses={201: "the comment"})
def add_comment(report_id: int):  # noqa: ANN201
    report = load_report(report_id)
    body: CommentBody = g.body
    session = db()
    try:
        posted = threads.add_comment(session, report_id=report.id, facility_id=report.facility_id,
                                     study_id=report.study_id, author=current_user(),
                                     text=body.text, recipients=body.recipients)
    except (threads.ThreadError, PermissionError) as exc:
        session.rollback()
        raise _errors(exc) from exc
    audit.record(session, actor(), "comment.created", target=f"comment:{posted.comment.id}",
                 detail={"report_id": report.id, "recipients": len(posted.notices)})
    publish.comment_created(session, posted.comment, posted.notices)  # committed with the comment
    session.commit()
    chains.enqueue_notice_mail([n.id for n in posted.notices])
    return jsonify(comment_json(posted.comment)), 201


@blueprint.route("/<id:report_id>/comments/<key>/versions", methods=["POST"])
@require(*PARTIES)
@operation("Correct a comment: a new version, the old one kept", body=CorrectionBody,
           responses={201: "the new version"})
def correct_comment(report_id: int, key: str):  # noqa: ANN201
    report = load_report(report_id)
    if not (key.isascii() and key.isalnum() and len(key) <= 32):
        raise ApiError(404, "no such comment on this report")
    session = db()
    try:
        version = threads.correct_comment(session, report_id=report.id, thread_key=key,
                                          author=current_user(), text=g.body.text)
    except (threads.ThreadError, PermissionError, LookupError) as exc:
        session.rollback()
        raise _errors(exc) from exc
    audit.record(session, actor(), "comment.corrected", target=f"comment:{version.id}",
                 detail={"report_id": report.id, "key": version.thread_key,
                         "version": version.version})
    publish.comment_created(session, version, [])  # committed with the correction
    session.commit()
    return jsonify(comment_json(version)), 201
