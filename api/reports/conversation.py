"""The conversation below a report on its page (/reports/ID): the comment thread and the
consults, rendered with the report, and the few lines of script that post comments, move
consults through the API (the page's session and CSRF token) and refresh the sections when
the event stream says something changed on this report."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.http.context import resources
from pipeline.models import User
from pipeline.reports import consult_requests, consults, threads


def page_context(session: Session, report_id: int) -> dict:
    comments = threads.thread(session, report_id)
    asked = consult_requests.for_report(session, report_id)
    people = {c.author_id for c in comments} | {c.requester_id for c in asked} \
        | {c.consultant_id for c in asked if c.consultant_id}
    emails = dict(session.execute(select(User.id, User.email).where(User.id.in_(people))).all()) \
        if people else {}
    return {
        "comments": [{"author": emails.get(c.author_id, "?"), "at": c.created_at, "text": c.text,
                      "version": c.version} for c in comments],
        "consults": [{"id": c.id, "state": c.state, "question": c.question,
                      "requester": emails.get(c.requester_id, "?"),
                      "consultant": emails.get(c.consultant_id) if c.consultant_id else None,
                      "pool": c.subspecialty, "due_at": c.due_at,
                      "actions": consults.legal_actions(c.state)} for c in asked],
        "events_url": resources().settings.dashboard_events_url,
    }
