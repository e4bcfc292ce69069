"""The audit trail: who did what, when, from where. Rows are only ever added.

Details name ids and counts, never patient data, so the trail can be shown to any admin.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.models import AuditEvent, utcnow

# Token use is recorded once per user per window, not on every chunk of every upload.
TOKEN_USE_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class Actor:
    user_id: int | None
    facility_id: int | None
    remote_addr: str | None = None
    request_id: str | None = None


def record(session: Session, actor: Actor, action: str, target: str | None = None,
           detail: dict | None = None, now: datetime | None = None) -> AuditEvent:
    event = AuditEvent(
        at=now or utcnow(), user_id=actor.user_id, facility_id=actor.facility_id,
        action=action, target=target, detail=detail, remote_addr=actor.remote_addr,
        request_id=actor.request_id,
    )
    session.add(event)
    session.flush()
    return event


def token_use_due_after(session: Session, actor: Actor,
                        now: datetime | None = None) -> tuple[bool, datetime]:
    """Record ``token.used`` unless this user already has one in the current window;
    returns (recorded, when the next one is due), so a caller can skip the check until then."""
    now = now or utcnow()
    latest = session.scalar(
        select(AuditEvent.at).where(
            AuditEvent.user_id == actor.user_id,
            AuditEvent.action == "token.used",
            AuditEvent.at > now - TOKEN_USE_WINDOW,
        ).order_by(AuditEvent.at.desc()).limit(1)
    )
    if latest is not None:
        latest = latest if latest.tzinfo else latest.replace(tzinfo=now.tzinfo)
        return False, latest + TOKEN_USE_WINDOW
    record(session, actor, "token.used", now=now)
    return True, now + TOKEN_USE_WINDOW
