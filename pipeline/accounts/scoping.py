"""Which facilities' data a user may read: the one rule every data access scopes by.

A user reads their own facility. A radiologist or consultant also reads the facilities an
admin assigned to them (``reader_assignments``). An admin reads every facility (``None``:
no filter). Callers filter with ``column.in_(ids)`` when the answer is a set, so the scoping
stays in the query and one facility never sees another's rows.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.models import READER_ROLES, ReaderAssignment


class Reader(Protocol):
    """What the rule reads of a user: a ``User`` or an authenticated request's ``Caller``."""

    id: int
    facility_id: int

    def has_role(self, *roles: str) -> bool: ...

    @property
    def is_admin(self) -> bool: ...


def needs_assignments(user: Reader) -> bool:
    """Whether ``user``'s readable facilities depend on reader_assignments rows (a query):
    for everyone else the answer needs no session."""
    return not user.is_admin and user.has_role(*READER_ROLES)


def readable_facility_ids(session: Session | None, user: Reader) -> frozenset[int] | None:
    """The facility ids ``user`` may read, or None for every facility (admins). ``session``
    may be None when ``needs_assignments(user)`` is false."""
    if user.is_admin:
        return None
    if not user.has_role(*READER_ROLES):
        return frozenset({user.facility_id})
    assert session is not None, "a reader's facilities take a query"  # noqa: S101
    assigned = session.scalars(select(ReaderAssignment.facility_id)
                               .where(ReaderAssignment.user_id == user.id))
    return frozenset({user.facility_id, *assigned})


def may_read(session: Session | None, user: Reader, facility_id: int) -> bool:
    ids = readable_facility_ids(session, user)
    return ids is None or facility_id in ids
