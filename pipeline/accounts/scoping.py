"""Which facilities' data a user may read: the one rule every data access scopes by.

A user reads their own facility. A radiologist or consultant also reads the facilities an
admin assigned to them (``reader_assignments``). An admin reads every facility (``None``:
no filter). Callers filter with ``column.in_(ids)`` when the answer is a set, so the scoping
stays in the query and one facility never sees another's rows.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.models import READER_ROLES, ReaderAssignment, User


def readable_facility_ids(session: Session, user: User) -> frozenset[int] | None:
    """The facility ids ``user`` may read, or None for every facility (admins)."""
    if user.is_admin:
        return None
    if not user.has_role(*READER_ROLES):
        return frozenset({user.facility_id})
    assigned = session.scalars(select(ReaderAssignment.facility_id)
                               .where(ReaderAssignment.user_id == user.id))
    return frozenset({user.facility_id, *assigned})


def may_read(session: Session, user: User, facility_id: int) -> bool:
    ids = readable_facility_ids(session, user)
    return ids is None or facility_id in ids
