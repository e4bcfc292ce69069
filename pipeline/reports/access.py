"""Who may take part in a report's conversation, as comments, consults and notices need it:
the user's roles, whether a facility's reports are theirs to read, and the consult pools.

The one scoping rule lives in pipeline.accounts.scoping (``readable_facility_ids``: a
clinician's own facility, a reader's assigned facilities, every facility for an admin); this
module only asks it, so threads, consults and notices never disagree with the report listing.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.accounts.scoping import may_read
from pipeline.models import READER_ROLES, ReaderAssignment, User


def roles_of(user: User) -> frozenset[str]:
    return user.role_set()


def can_read_facility(session: Session, user: User, facility_id: int) -> bool:
    return may_read(session, user, facility_id)


def subspecialties_of(session: Session, user: User, facility_id: int) -> frozenset[str]:
    """The subspecialties ``user`` serves for ``facility_id`` (their reader assignments)."""
    found: set[str] = set()
    for subs in session.scalars(select(ReaderAssignment.subspecialties).where(
            ReaderAssignment.user_id == user.id, ReaderAssignment.facility_id == facility_id)):
        found.update(subs or [])
    return frozenset(found)


def pool_members(session: Session, facility_id: int, subspecialty: str | None) -> list[int]:
    """Active radiologists and consultants assigned to the facility in that subspecialty
    (None: every reader assigned to it), in id order."""
    rows = session.execute(
        select(User, ReaderAssignment.subspecialties)
        .join(ReaderAssignment, ReaderAssignment.user_id == User.id)
        .where(ReaderAssignment.facility_id == facility_id, User.disabled_at.is_(None))
        .order_by(User.id)).all()
    out: list[int] = []
    for user, subs in rows:
        if not user.has_role(*READER_ROLES) or user.id in out:
            continue
        if subspecialty is None or subspecialty in (subs or []):
            out.append(user.id)
    return out
